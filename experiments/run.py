"""Trains the 1x1 variants side by side: ``python -m experiments.run --workdir=... --config=...``.

All the work is in :func:`experiments.train.train_and_evaluate`, which notebooks call directly. This
file is the command line around it: ``--help`` and ``--show_config`` answer before jax is imported;
a bad flag, config key or value is one line on stderr and exit code 2, before anything is written;
SIGTERM exits 0 and Ctrl-C 130 once the run has checkpointed (rerun the same command to resume).
"""

from __future__ import annotations

import errno
import functools
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import config_help
from experiments import preemption

_WORKDIR = flags.DEFINE_string("workdir", "runs/default",
                               "Where metrics, checkpoints and the report go.")
_SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print every key of the config with its "
                                 "value, default and meaning, and exit.")

_HELP_FLAGS = ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort")


def usage() -> str:
  """The ``--help`` text: the syntax, the presets, and where to find every key."""
  presets = "\n".join(f"      {path:<34} {doc}" for path, doc in config_help.presets())
  return f"""Trains the 1x1 designs side by side and reports accuracy against savings.

usage: python -m experiments.run [--config=FILE] [--config.KEY=VALUE ...] [--workdir=DIR]
                                 [--show_config]

  --config=FILE       the experiment (default: experiments/configs/default.py). Presets:
{presets}
  --config.KEY=VALUE  overrides one key of it; repeat for more. Unknown keys and bad values are
                      refused before anything runs. For example:
                        --config.num_steps=600 --config.model.width=48
                        --config.variants="('dense', 'separable')"
  --show_config       prints every key of the config (overrides applied) with its default and
                      meaning, and exits: python -m experiments.run --config=FILE --show_config
  --workdir=DIR       where config.json, metrics.jsonl, tensorboard/, checkpoints/ and the report
                      (savings.md, savings.json, savings.png) go (default: runs/default). Rerunning
                      the same command with the same workdir resumes.
  --helpfull          every flag, absl's logging flags included.

SIGTERM checkpoints and exits 0, Ctrl-C checkpoints and exits 130 (a second Ctrl-C stops at once);
either way the same command, run again, resumes."""


def fail(message: str, code: int) -> None:
  """Ends the process with ``message`` as one line on stderr."""
  logging.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with ``--help`` and ``--helpfull`` answered here (exit 0) and every flag
  error as one line (exit 2); an unknown ``--config.<key>`` is named with the closest known key.

  The ``--config`` flag is defined here, once the arguments are checked: ml_collections applies
  the overrides as it defines it.
  """
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    print(usage())
    sys.exit(0)
  if any(arg in ("--helpfull", "-helpfull") for arg in argv[1:]):
    print(usage() + "\n\nEvery flag:\n" + flags.FLAGS.get_help())
    sys.exit(0)
  for arg in argv[1:]:
    if arg.startswith(("--config=", "-config=")):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path):
        fail(f"--config={path}: no such file; the presets are "
             + ", ".join(p for p, _ in config_help.presets()), 2)
    elif arg.startswith(("--config.", "-config.")):
      key = arg.split("config.", 1)[1].split("=", 1)[0]
      if message := config_help.unknown_key(key):
        fail(message, 2)
  try:
    config_flags.DEFINE_config_file("config", config_help.DEFAULT_FILE, "Experiment config file.",
                                    lock_config=True)
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(" ".join(str(e).split()), 2)


def main(argv: list[str], *, stop: preemption.Stop) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}: flags are --config, --config.KEY=VALUE, --workdir, "
         "--show_config (see --help)", 2)
  config, workdir = flags.FLAGS.config, _WORKDIR.value
  if _SHOW_CONFIG.value:
    print(config_help.describe(config))
    return
  from experiments import config_check  # imports jax, as train does: only once the flags are good
  from experiments import train
  if stop.is_set():
    logging.warning("%s before the run started: nothing was written; rerun the same command",
                    stop.signal_name)
    sys.exit(130 if stop.signal_name == "Ctrl-C" else 0)
  try:
    config_check.check_config(config)
  except (TypeError, ValueError) as e:
    fail(str(e), 2)
  try:
    result = train.train_and_evaluate(config, workdir)
  except (OSError, TypeError, ValueError) as e:
    if _disk_full(e):
      fail(f"no space left on device under {os.path.abspath(workdir)}: free some space and rerun "
           "the same command; it resumes from the last complete checkpoint (no file was left "
           "half-written)", 1)
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
      raise
    logging.debug("the error's traceback:", exc_info=True)
    fail(f"{e} (--verbosity=1 shows the traceback)", 1)
  if result["preempted"]:
    logging.warning("Stopped early; rerun the same command to resume (workdir %s).", workdir)
    if stop.signal_name == "Ctrl-C":
      sys.exit(130)


def _disk_full(error: BaseException | None) -> bool:
  """Whether ``error`` or an error it came from is a full disk (orbax wraps the OSError)."""
  while error is not None:
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        "No space left on device" in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


if __name__ == "__main__":
  app.run(functools.partial(main, stop=preemption.catch_signals()), flags_parser=parse_flags)
