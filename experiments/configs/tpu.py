"""For accelerators (a Colab TPU, a GPU): bf16 compute, large global batches, 32x32x3 inputs.

By default the data are synthetic (CIFAR-10's shape and size, no files needed); for real CIFAR-10 add
``--config.dataset=cifar10 --config.data_dir=...``. The global batch is split over every device, so it
must be divisible by the device count (8 on a v2-8/v3-8 Colab TPU).
"""

import ml_collections

from experiments.configs import cifar10
from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.variants = default.get_config().variants  # every classic design
  config.model.depth = 2
  config.model.expansion = 4
  config.dataset = "synthetic"
  config.synthetic = ml_collections.ConfigDict(dict(shape=(32, 32, 3), sizes=(50000, 10000),
                                                    num_classes=10))
  config.augment = False
  config.dtype = "bfloat16"
  config.batch_size = 1024
  config.eval_batch_size = 2048
  config.num_steps = 1500
  config.optimizer.learning_rate = 0.4
  config.optimizer.warmup_steps = 150
  config.log_every_steps = 100
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
