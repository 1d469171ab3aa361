"""Real processes: multi-host training on localhost, kill -9, SIGTERM (one process and two),
half-written checkpoints, and restoring on another device count. Each test starts ``python -m
experiments.run`` and compares with one uninterrupted run on one CPU device.

Runs on one device are compared bitwise: the same programs on the same batches from the same state give
the same bits. Runs on several devices are compared to 1e-4: XLA:CPU's cross-device reductions (the
gradient and BatchNorm all-reduces) need not add in the same order from run to run, or as one device
does, so the last bits differ."""

import os
import re
import shutil
import signal
import time

import pytest
from conftest import Runner, tensorboard_scalars

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

# Two variants (one with depthwise convs), long enough to interrupt part-way through a variant.
OVERRIDES = ("--config.variants=('dense', 'separable')", "--config.model.width=16",
             "--config.batch_size=64", "--config.eval_batch_size=64", "--config.num_steps=48",
             "--config.checkpoint_every_steps=8", "--config.log_every_steps=4",
             "--config.eval_every_steps=24", "--config.synthetic.sizes=(512, 128)")


@pytest.fixture(scope="session")  # once per test process, however xdist interleaves modules
def reference(tmp_path_factory):
  runner = Runner()
  workdir = tmp_path_factory.mktemp("reference") / "run"
  try:
    rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  finally:
    runner.cleanup()
  assert rc == 0, log
  return workdir


def _metrics(runner, workdir):
  """metrics.jsonl less the measured step times, which no two runs share."""
  return [{k: v for k, v in row.items() if k != "step_time_s"} for row in runner.metrics(workdir)]


def _final(runner, workdir):
  return {name: (row["test_accuracy"], row["test_loss"], row["steps"], row["status"])
          for name, row in runner.savings(workdir).items()}


def _wait_for_step(runner, proc, workdir, variant, step, timeout=300):
  """Blocks until ``variant`` has logged a train step >= ``step`` (so a checkpoint exists)."""
  deadline = time.time() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be interrupted"
    if os.path.exists(path):
      with open(path) as f:
        if any(f'"variant": "{variant}"' in line and '"split": "train"' in line
               and int(re.search(r'"step": (\d+)', line).group(1)) >= step for line in f):
          return
    time.sleep(0.02)
  pytest.fail(f"{variant} did not reach step {step} in {timeout} s")


def test_kill_9_then_rerun_resumes_and_matches(runner, reference, tmp_path):
  workdir = tmp_path / "killed"
  proc = runner.start(workdir, *OVERRIDES, devices=1, log=str(workdir) + ".first.log")
  _wait_for_step(runner, proc, workdir, "separable", 12)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not (workdir / "savings.json").exists()
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints" / "separable") if s.isdigit())
  assert steps and steps[-1] < 48  # killed part-way through the variant
  rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  assert rc == 0, log
  assert f"[separable] resuming from the checkpoint at step {steps[-1]}" in log
  # Bitwise on CPU: the same programs on the same batches from the same state.
  assert _final(runner, workdir) == _final(runner, reference)
  assert _metrics(runner, workdir) == _metrics(runner, reference)
  # TensorBoard shows every row of metrics.jsonl, the final test scalars of dense (finished before
  # the kill) included, whatever the kill cut from its event files.
  for name in ("dense", "separable"):
    logged = {(f"{r['split']}/{k}", r["step"]): v for r in runner.metrics(workdir)
              if r["variant"] == name
              for k, v in r.items() if k not in ("variant", "step", "split")}
    shown = tensorboard_scalars(workdir / "tensorboard" / name)
    assert ("test/accuracy", 48) in shown and shown.keys() == logged.keys()


def test_sigterm_saves_exits_0_and_rerun_resumes(runner, reference, tmp_path):
  workdir = tmp_path / "terminated"
  proc = runner.start(workdir, *OVERRIDES, devices=1, log=str(workdir) + ".first.log")
  _wait_for_step(runner, proc, workdir, "dense", 12)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  first = open(str(workdir) + ".first.log").read()
  saved = re.search(r"\[(\w+)\] SIGTERM: saved a checkpoint at step (\d+)", first)
  assert saved, first
  variant, step = saved.group(1), int(saved.group(2))
  assert (workdir / "checkpoints" / variant / str(step)).is_dir()
  assert "rerun the same command to resume" in first
  rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  assert rc == 0, log
  assert f"[{variant}] resuming from the checkpoint at step {step}" in log
  assert _final(runner, workdir) == _final(runner, reference)
  assert _metrics(runner, workdir) == _metrics(runner, reference)


def test_sigterm_outside_training_exits_0_and_rerun_writes_the_report(runner, reference, tmp_path):
  workdir = tmp_path / "terminated_at_start"
  shutil.copytree(reference, workdir)
  (workdir / "savings.json").unlink()
  log = str(workdir) + ".first.log"
  proc = runner.start(workdir, *OVERRIDES, devices=1, log=log)
  deadline = time.time() + 300
  while "pwconv run:" not in open(log).read():  # logged once the run has started up
    assert proc.poll() is None and time.time() < deadline, open(log).read()
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)  # before it restores the finished variants
  assert proc.wait(timeout=120) == 0
  first = open(log).read()
  assert "SIGTERM after the last variant trained" in first, first
  assert not (workdir / "savings.json").exists()
  rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  assert rc == 0, log
  assert _final(runner, workdir) == _final(runner, reference)
  assert _metrics(runner, workdir) == _metrics(runner, reference)


def test_half_written_checkpoint_is_ignored(runner, reference, tmp_path):
  workdir = tmp_path / "crashed_in_save"
  shutil.copytree(reference, workdir)
  ckpts = workdir / "checkpoints" / "separable"
  # A crash during the final save: the step's directory never got its final name, and is partial.
  shutil.rmtree(ckpts / "48")
  partial = ckpts / "48.orbax-checkpoint-tmp-1764288000000000"
  shutil.copytree(ckpts / "40", partial)
  for f in sorted(partial.rglob("*")):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  (workdir / "savings.json").unlink()
  rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  assert rc == 0, log
  assert "[separable] resuming from the checkpoint at step 40" in log
  assert "[dense] resuming from the checkpoint at step 48" in log
  assert _final(runner, workdir) == _final(runner, reference)


def test_restore_on_a_different_device_count(runner, reference, tmp_path):
  workdir = tmp_path / "fewer_devices"
  rc, log = runner.run(workdir, *OVERRIDES, "--config.stop_after_steps=20", devices=8)
  assert rc == 0, log
  assert "on cpu x 8 " in log
  assert "[dense] stopped after 20 steps in this run" in log and "checkpoint at step 20" in log
  rc, log = runner.run(workdir, *OVERRIDES, devices=1)
  assert rc == 0, log
  assert "on cpu x 1 " in log
  assert "[dense] resuming from the checkpoint at step 20" in log
  ours, theirs = _final(runner, workdir), _final(runner, reference)
  for name in ("dense", "separable"):
    assert ours[name][2:] == theirs[name][2:]
    assert ours[name][1] == pytest.approx(theirs[name][1], rel=1e-4)


def test_two_processes_match_one(runner, reference, tmp_path):
  workdir = tmp_path / "multihost"
  port = runner.free_port()
  procs = [runner.start(workdir, *OVERRIDES, "--config.distributed.initialize=always",
                        f"--config.distributed.coordinator_address=localhost:{port}",
                        "--config.distributed.num_processes=2",
                        f"--config.distributed.process_id={i}", devices=4,
                        log=f"{workdir}.process{i}.log")
           for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=600) == 0, open(f"{workdir}.process{i}.log").read()
  log0 = open(f"{workdir}.process0.log").read()
  assert "process 0 of 2, 4 local / 8 global devices" in log0
  assert "process 1 of 2" in open(f"{workdir}.process1.log").read()
  ours, theirs = _metrics(runner, workdir), _metrics(runner, reference)
  assert [(r["variant"], r["step"], r["split"]) for r in ours] == \
         [(r["variant"], r["step"], r["split"]) for r in theirs]
  for a, b in zip(ours, theirs):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), (a, b)
  final = _final(runner, workdir)
  for name, (_, loss, steps, status) in _final(runner, reference).items():
    assert final[name][2:] == (steps, status)
    assert final[name][1] == pytest.approx(loss, rel=1e-4)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_checkpoint(runner, tmp_path):
  """jax.distributed.initialize installs its own SIGTERM handler, which used to swallow the signal:
  training went on to the end. Now the signalled process stops, and the other with it, at the same
  step, both saving (orbax saves collectively) and exiting 0."""
  workdir = tmp_path / "multihost_sigterm"
  port = runner.free_port()
  logs = [f"{workdir}.process{i}.log" for i in range(2)]
  procs = [runner.start(workdir, *OVERRIDES, "--config.num_steps=100000",
                        "--config.distributed.initialize=always",
                        f"--config.distributed.coordinator_address=localhost:{port}",
                        "--config.distributed.num_processes=2",
                        f"--config.distributed.process_id={i}", devices=4, log=logs[i])
           for i in range(2)]
  _wait_for_step(runner, procs[0], workdir, "dense", 12)
  procs[1].send_signal(signal.SIGTERM)
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=120) == 0, open(logs[i]).read()
  saved = [re.search(r"\[dense\] SIGTERM: saved a checkpoint at step (\d+)", open(log).read())
           for log in logs]
  assert all(saved), [open(log).read() for log in logs]
  step = int(saved[0].group(1))
  assert int(saved[1].group(1)) == step and step < 100000 and step % 4 == 0  # a log boundary
  assert (workdir / "checkpoints" / "dense" / str(step)).is_dir()
