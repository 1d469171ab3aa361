"""Test set-up: CPU only, 8 fake CPU devices for the data-parallel tests, a shared compilation cache,
a fixture that runs the experiment runner as real processes, and a reader of TensorBoard events.

The environment must be set before JAX initialises its backends, so it is set here, before any test
imports jax.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

# A persistent compilation cache for each test process and the runs it starts (the multi-process
# tests): most tests compile the same few programs, and recompiling them is most of the suite's time on
# 2 cores. Entries are keyed by the program and the jax version, so reuse never changes a result. One
# folder per pytest-xdist worker: two processes writing one entry at once can leave it truncated.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(
    pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"
    / os.environ.get("PYTEST_XDIST_WORKER", "main"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8") if f)

REPO = pathlib.Path(__file__).resolve().parent.parent


class Runner:
  """Starts ``python -m experiments.run`` as real OS processes and always cleans them up."""

  def __init__(self):
    self.procs: list[subprocess.Popen] = []

  def start(self, workdir, *overrides, devices=8, config="smoke", log=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "experiments.run", f"--workdir={workdir}",
           f"--config={REPO / 'experiments' / 'configs' / f'{config}.py'}", *overrides]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    self.procs.append(proc)
    return proc

  def run(self, workdir, *overrides, timeout=600, **kwargs):
    log = pathlib.Path(str(workdir) + ".log")
    proc = self.start(workdir, *overrides, log=log, **kwargs)
    proc.wait(timeout=timeout)
    return proc.returncode, log.read_text()

  @staticmethod
  def free_port() -> int:
    with socket.socket() as s:
      s.bind(("localhost", 0))
      return s.getsockname()[1]

  @staticmethod
  def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return [json.loads(line) for line in f]

  @staticmethod
  def savings(workdir):
    with open(os.path.join(workdir, "savings.json")) as f:
      return {r["variant"]: r for r in json.load(f)["rows"]}

  def cleanup(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def tensorboard_scalars(rundir) -> dict[tuple[str, int], float]:
  """{(tag, step): value} as TensorBoard shows a run: event files in name order, and a SessionLog
  START at step T (tensorboardX's purge_step) hides the events at steps >= T written before it."""
  import struct

  from tensorboardX.proto import event_pb2

  shown: list[tuple[str, int, float]] = []
  for name in sorted(os.listdir(rundir)):
    with open(os.path.join(rundir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        shown = [s for s in shown if s[1] < event.step]
      shown += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  scalars = {(tag, step): value for tag, step, value in shown}
  assert len(scalars) == len(shown), "a scalar is shown twice"
  return scalars


@pytest.fixture
def runner():
  r = Runner()
  yield r
  r.cleanup()
