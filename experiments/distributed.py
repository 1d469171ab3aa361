"""Where a run's devices come from: JAX's multi-controller runtime on a cluster, and the data mesh."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from experiments import preemption


def initialize(config: ml_collections.ConfigDict, stop: threading.Event | None = None) -> None:
  """Starts JAX's multi-controller runtime when the config asks for it or a cluster is detected.

  ``config.distributed.initialize``: "never"; "always" (with ``coordinator_address``,
  ``num_processes`` and ``process_id`` from the config, or found by ``jax.distributed`` itself on TPU
  pod slices and under SLURM); "auto" (the default): when ``coordinator_address`` is set, or when
  :func:`in_cluster`. Cloud TPU VM pod slices need "always".

  Every process waits until all have connected, saying so, for at most
  ``config.distributed.initialization_timeout`` seconds. Past that, or when ``stop`` is set
  (SIGTERM, Ctrl-C) while it waits, the process ends there with one line saying why (exit 1, or
  0 / 130 for the signals): the half-started runtime cannot be stopped from Python, and nothing
  was written yet.
  Once connected, the run's signal handlers are installed again (jax installs its own SIGTERM
  handler, which would ignore preemption).
  """
  if jax.distributed.is_initialized():
    return
  d = config.distributed
  if d.initialize == "never" or (d.initialize == "auto" and not d.coordinator_address
                                 and not in_cluster()):
    return
  kwargs = {}
  where = "the coordinator jax.distributed finds for this cluster"
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
    where = (f"the coordinator {d.coordinator_address} as process {d.process_id} of "
             f"{d.num_processes}")
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  timeout = d.initialization_timeout
  logging.info("jax.distributed: connecting to %s; waiting up to %d s for every process to join "
               "(config.distributed.initialization_timeout)", where, timeout)
  # jax's own limit is longer, so that this one, which ends the process cleanly, comes first.
  _wait(lambda: jax.distributed.initialize(initialization_timeout=timeout + 60, **kwargs),
        timeout, stop, where)
  preemption.reclaim_signals()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _wait(connect: Callable[[], None], timeout: float, stop: threading.Event | None,
          where: str) -> None:
  """Runs ``connect`` in a thread, logging every 30 s while it waits; ends the process (see
  :func:`initialize`) past ``timeout`` seconds or on ``stop``."""
  failure: list[BaseException] = []

  def target():
    try:
      connect()
    except BaseException as e:  # re-raised in the calling thread
      failure.append(e)

  thread = threading.Thread(target=target, name="jax.distributed.initialize", daemon=True)
  start = time.monotonic()
  note = start + 30
  thread.start()
  while thread.is_alive():
    thread.join(0.1)
    now = time.monotonic()
    waited = now - start
    if stop is not None and stop.is_set():
      name = getattr(stop, "signal_name", "") or "SIGTERM"
      _exit(130 if name == "Ctrl-C" else 0,
            f"jax.distributed: {name} while waiting for every process to connect to {where}: "
            "nothing was started or written; rerun the same command")
    if waited > timeout:
      _exit(1, f"jax.distributed: not every process connected to {where} within {timeout} s "
               "(config.distributed.initialization_timeout): start the same command on every "
               "host (each with its own process_id), check the address and port, or raise the "
               "timeout")
    if now >= note:
      note += 30
      logging.info("jax.distributed: still waiting for every process to join (%d s of %d s)",
                   waited, timeout)
  if failure:
    raise failure[0]


def _exit(code: int, message: str) -> None:
  logging.error("%s", message)
  logging.flush()
  os._exit(code)


def in_cluster() -> bool:
  """Whether the environment says this is one process of several: a SLURM job with several tasks,
  or ``TPU_WORKER_HOSTNAMES`` listing several workers (as GKE sets it)."""
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in tpu_hosts.split(",") if h]) > 1:
    return True
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A 1-D ``data`` mesh over every device (or the first ``config.num_devices`` on one process).

  Raises:
    ValueError: ``config.num_devices`` in a multi-process run or above the device count, or a
      batch size the mesh does not divide.
  """
  devices = jax.devices()
  if config.num_devices:
    if jax.process_count() > 1:
      raise ValueError("config.num_devices must be 0 (all devices) in a multi-process run")
    if config.num_devices > len(devices):
      raise ValueError(f"config.num_devices is {config.num_devices} but only {len(devices)} devices "
                       "exist")
    devices = devices[:config.num_devices]
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % len(devices):
      raise ValueError(f"config.{key} ({config[key]}) must be divisible by the {len(devices)} devices "
                       "of the data mesh")
  return Mesh(np.asarray(devices), ("data",))
