"""When the runner starts jax.distributed (multi-process runs themselves: test_multiprocess)."""

import jax

from experiments import distributed
from experiments.configs import smoke


def test_distributed_init_starts_jax_distributed_only_when_asked(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax, "process_index", lambda: 0)  # the log line after initialize
  for var in ("SLURM_NTASKS", "SLURM_PROCID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)

  def init(**settings):
    calls.clear()
    config = smoke.get_config()
    config.distributed.update(settings)
    distributed.initialize(config)
    return list(calls)

  timeout = {"initialization_timeout": 360}  # jax's own: a minute past the config's 300 s
  assert init() == []  # auto, no cluster, no address: one process
  address = {"coordinator_address": "host0:1234", "num_processes": 2, "process_id": 1}
  assert init(**address) == [dict(address, **timeout)]  # auto with an address: the address is used
  assert init(initialize="always") == [timeout]  # jax finds the cluster itself
  monkeypatch.setenv("SLURM_NTASKS", "2")
  monkeypatch.setenv("SLURM_PROCID", "1")
  assert init() == [timeout]
  assert init(initialize="never") == []


def test_in_cluster_reads_slurm_and_tpu_workers(monkeypatch):
  for var in ("SLURM_NTASKS", "SLURM_PROCID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert not distributed.in_cluster()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0")
  assert not distributed.in_cluster()  # one worker is one process
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
  assert distributed.in_cluster()
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert not distributed.in_cluster()  # not one of the tasks
  monkeypatch.setenv("SLURM_PROCID", "3")
  assert distributed.in_cluster()
