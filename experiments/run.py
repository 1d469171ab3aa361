"""Trains the 1x1 variants side by side: ``python -m experiments.run --workdir=... --config=...``.

All the work is in :func:`experiments.train.train_and_evaluate`, which notebooks call directly.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where metrics, checkpoints and the report go.")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.",
                                          lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result["preempted"]:
    logging.warning("Stopped early; rerun the same command to resume.")


if __name__ == "__main__":
  app.run(main)
