"""``python -m experiments.run`` as a user meets it, in real processes: --help and --show_config,
one line and exit code 2 for a bad flag, key or value, signals at any moment (start-up, training, the
second Ctrl-C, under jax.distributed, a process that never comes), a workdir in use, a full disk,
and what the log says."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.multiprocess

SMOKE = str(REPO / "experiments" / "configs" / "smoke.py")
ONE = ("--config.variants=('dense',)", "--config.num_devices=1")
LONG = ONE + ("--config.num_steps=100000", "--config.checkpoint_every_steps=100000",
              "--config.eval_every_steps=100000", "--config.timing_repeats=1")


def _start(runner, args, log, *, env=None, stdin=None):
  """``python <args>`` in the repository, stdout and stderr to ``log``; killed at the test's end."""
  environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                 XLA_FLAGS="--xla_force_host_platform_device_count=1")
  for key, value in (env or {}).items():
    if value is None:
      environ.pop(key, None)
    else:
      environ[key] = value
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=environ, stdout=open(log, "w"),
                          stderr=subprocess.STDOUT, stdin=stdin)
  runner.procs.append(proc)
  return proc


def _run(runner, args, tmp_path, *, timeout=300, env=None):
  log = tmp_path / "log"
  proc = _start(runner, args, log, env=env)
  proc.wait(timeout=timeout)
  return proc.returncode, log.read_text()


def _wait_for(proc, log, pattern, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    text = open(log).read()
    if re.search(pattern, text):
      return text
    assert proc.poll() is None, text
    time.sleep(0.05)
  pytest.fail(f"{pattern!r} not in the log after {timeout} s:\n{open(log).read()}")


def test_help_exits_0_without_importing_jax(runner, tmp_path):
  code, out = _run(runner, ["-X", "importtime", "-m", "experiments.run", "--help"], tmp_path)
  assert code == 0, out
  for text in ("--config.KEY=VALUE", "--show_config", "--workdir=DIR",
               "experiments/configs/smoke.py", "experiments/configs/cifar10.py",
               "experiments/configs/tpu.py", "experiments/configs/default.py"):
    assert text in out
  imported = {line.split("|")[-1].strip() for line in out.splitlines() if "import time:" in line}
  assert "absl.flags" in imported and "jax" not in imported and "experiments.train" not in imported
  code, out = _run(runner, ["-m", "experiments.run", "--helpfull"], tmp_path)
  assert code == 0 and "--show_config" in out and "--verbosity" in out, out


def test_show_config_prints_every_key_with_its_default_and_meaning(runner, tmp_path):
  code, out = _run(runner, ["-m", "experiments.run", f"--config={SMOKE}", "--config.num_steps=7",
                            "--show_config"], tmp_path)
  assert code == 0, out
  assert re.search(r"^num_steps = 7 .*# 7 epochs of .*\(default: 160\)$", out, re.M)
  assert re.search(r"^model\.width = 8 +# channels of the stem .*\(default: 32\)$", out, re.M)
  assert "synthetic.shape = (8, 8, 1)" in out and "!!python" not in out
  assert "# Multi-host: \"auto\" starts jax.distributed" in out
  from experiments import config_help
  for key in config_help.defaults():
    assert re.search(rf"^{re.escape(key)} = ", out, re.M), key


@pytest.mark.parametrize("flag,message", [
    ("--config.num_step=12", "error: config.num_step is not a known key; did you mean "
                             "config.num_steps? (python -m experiments.run --show_config lists "
                             "them all)"),
    ("--config.num_steps=abc", "error: flag --config.num_steps=abc: invalid literal for int() "
                               "with base 10: 'abc'"),
    ("--config.optimizer.learning_rate=inf", "error: config.optimizer.learning_rate must be a "
                                             "finite number, got inf"),
    ("--config.model.width=0", "error: config.model.width must be >= 1, got 0"),
    ("--config=experiments/configs/smok.py", "error: --config=experiments/configs/smok.py: no "
                                             "such file; the presets are experiments/configs/"),
])
def test_a_bad_flag_is_one_line_exit_2_and_nothing_written(runner, tmp_path, flag, message):
  workdir = tmp_path / "run"
  code, out = _run(runner, ["-m", "experiments.run", f"--workdir={workdir}", flag], tmp_path)
  assert code == 2, out
  assert out.strip().splitlines()[-1].startswith(message), out
  assert "Traceback" not in out and not workdir.exists()


def test_the_second_ctrl_c_ends_the_process_at_once(runner, tmp_path):
  code, out = _run(runner, ["-c", """
import os, signal, time
from experiments import preemption
stop = preemption.catch_signals()
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("first:", stop.is_set(), stop.signal_name, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(10)
print("still running", flush=True)
"""], tmp_path)
  assert code == -signal.SIGINT and "first: True Ctrl-C" in out and "still running" not in out, out


def test_sigterm_during_start_up_exits_0(runner, tmp_path):
  log = tmp_path / "log"
  proc = _start(runner, ["-m", "experiments.run", f"--workdir={tmp_path / 'run'}",
                         f"--config={SMOKE}", *ONE], log)
  time.sleep(1.0)  # importing jax and the rest takes longer
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, log.read_text()
  assert "SIGTERM" in log.read_text()


def test_ctrl_c_checkpoints_says_so_and_exits_130(runner, tmp_path):
  log, workdir = tmp_path / "log", tmp_path / "run"
  proc = _start(runner, ["-m", "experiments.run", f"--workdir={workdir}", f"--config={SMOKE}",
                         *LONG], log)
  _wait_for(proc, log, r"\[dense\] step 4/")
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == 130, log.read_text()
  text = log.read_text()
  assert "Ctrl-C: stopping at the next step, with a checkpoint; Ctrl-C again stops at once" in text
  step = int(re.search(r"\[dense\] Ctrl-C: saved a checkpoint at step (\d+)", text).group(1))
  assert os.listdir(workdir / "checkpoints" / "dense") == [str(step)]  # no orbax tmp folder
  assert "Exception ignored" not in text and "KeyboardInterrupt" not in text


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_first(runner, tmp_path):
  log, workdir = tmp_path / "first.log", tmp_path / "run"
  args = ["-m", "experiments.run", f"--workdir={workdir}", f"--config={SMOKE}", *LONG]
  first = _start(runner, args, log)
  _wait_for(first, log, r"\[dense\] step 2/")
  code, out = _run(runner, args, tmp_path)
  assert code == 1, out
  assert re.search(rf"^error: workdir '{workdir}' is in use by another run \(pid {first.pid} on "
                   r".*\); wait for it to end or use another --workdir", out, re.M), out
  assert "Traceback" not in out
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=120) == 0


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(runner, tmp_path):
  workdir = tmp_path / "run"
  code, out = _run(runner, ["-c", f"""
import builtins, errno, runpy, sys
real_open = builtins.open
def full(path, mode="r", *args, **kwargs):
  if str(path).endswith("metrics.jsonl") and "a" in mode:
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
  return real_open(path, mode, *args, **kwargs)
builtins.open = full
sys.argv = ["run", "--workdir={workdir}", "--config={SMOKE}", "--config.variants=('dense',)",
            "--config.num_devices=1"]
runpy.run_module("experiments.run", run_name="__main__", alter_sys=True)
"""], tmp_path)
  assert code == 1, out
  assert out.strip().splitlines()[-1] == (
      f"error: no space left on device under {workdir}: free some space and rerun the same "
      "command; it resumes from the last complete checkpoint (no file was left half-written)")
  assert "Traceback" not in out
  assert not [f for f in os.listdir(workdir) if ".tmp" in f]


def test_the_log_says_where_outputs_go_and_times_compilation_apart(runner, tmp_path):
  workdir = tmp_path / "run"
  code, out = _run(runner, ["-m", "experiments.run", f"--workdir={workdir}", f"--config={SMOKE}",
                            *ONE, "--config.num_steps=10", "--config.optimizer.warmup_steps=20"],
                   tmp_path, env={"JAX_PLATFORMS": None})  # as a user runs it
  assert code == 0, out
  assert "config.optimizer.warmup_steps (20) is not below config.num_steps (10): warming up over " \
         "1 steps instead (a tenth of the run)" in out
  assert f"workdir {workdir}: config.json, metrics.jsonl, tensorboard/ (TensorBoard: tensorboard " \
         f"--logdir {workdir}/tensorboard), checkpoints/" in out
  assert f"wrote the report: {workdir}/savings.json (and .md, .png)" in out
  assert re.search(r"\[dense\] first train step, compilation included: \d+\.\ds", out)
  rates = [float(r) for r in re.findall(r"\[dense\] step \d+/10 .* ([\d.]+) steps/s", out)]
  assert len(rates) == 5 and min(rates) > 20, out  # compiling, the first window was 1.6 steps/s
  assert "Unable to initialize backend" not in out and "orbax" not in out


def _distributed(port, processes=1, process_id=0):
  return ("--config.distributed.initialize=always",
          f"--config.distributed.coordinator_address=localhost:{port}",
          f"--config.distributed.num_processes={processes}",
          f"--config.distributed.process_id={process_id}")


def test_sigterm_under_jax_distributed_checkpoints_and_exits_0(runner, tmp_path):
  log, workdir = tmp_path / "log", tmp_path / "run"
  proc = _start(runner, ["-m", "experiments.run", f"--workdir={workdir}", f"--config={SMOKE}",
                         *ONE[:1], "--config.num_steps=20000", "--config.timing_repeats=1",
                         *_distributed(runner.free_port())], log)
  _wait_for(proc, log, r"\[dense\] step 4/")
  proc.send_signal(signal.SIGTERM)  # jax.distributed's own handler used to swallow it
  assert proc.wait(timeout=120) == 0, log.read_text()
  text = log.read_text()
  step = int(re.search(r"\[dense\] SIGTERM: saved a checkpoint at step (\d+)", text).group(1))
  assert step < 20000 and (workdir / "checkpoints" / "dense" / str(step)).is_dir()


def test_a_process_that_never_comes_ends_the_wait_with_one_line(runner, tmp_path):
  port = runner.free_port()
  start = time.time()
  code, out = _run(runner, ["-m", "experiments.run", f"--workdir={tmp_path / 'run'}",
                            f"--config={SMOKE}", *ONE[:1], *_distributed(port, 2),
                            "--config.distributed.initialization_timeout=3"], tmp_path)
  assert code == 1, out
  assert (f"connecting to the coordinator localhost:{port} as process 0 of 2; waiting up to 3 s "
          "for every process to join (config.distributed.initialization_timeout)") in out
  assert (f"not every process connected to the coordinator localhost:{port} as process 0 of 2 "
          "within 3 s (config.distributed.initialization_timeout)") in out
  assert time.time() - start < 60 and not (tmp_path / "run").exists()


def test_sigterm_while_waiting_for_the_other_processes_exits_0(runner, tmp_path):
  log = tmp_path / "log"
  proc = _start(runner, ["-m", "experiments.run", f"--workdir={tmp_path / 'run'}",
                         f"--config={SMOKE}", *ONE[:1], *_distributed(runner.free_port(), 2)], log)
  _wait_for(proc, log, r"waiting up to 300 s for every process to join")
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0, log.read_text()
  assert "SIGTERM while waiting for every process to connect" in log.read_text()
