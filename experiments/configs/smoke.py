"""A tiny run of every variant on synthetic data, for tests and for checking a set-up: each variant
trains in seconds, the whole run takes about 1-2 minutes on 2 CPU cores (mostly compilation)."""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "synthetic"
  config.synthetic = ml_collections.ConfigDict(dict(shape=(8, 8, 1), sizes=(256, 64),
                                                    num_classes=4))
  config.augment = False
  config.randaugment.num_ops = 0
  config.seeds = 1
  config.model.width = 8
  config.model.depth = 1
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_steps = 8
  config.optimizer.learning_rate = 0.1
  config.optimizer.warmup_steps = 2
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.timing_repeats = 2
  config.calibrate_roofline = False  # the pure roofline: saves ~15 s of every smoke run
  return config
