"""Every 1x1 design on real CIFAR-10, read from ``--config.data_dir`` (nothing is downloaded).

``data_dir`` holds the python or binary batches, or the folder the archive extracts to
(``cifar-10-batches-py/`` or ``cifar-10-batches-bin/``):

    python -m experiments.run --config=experiments/configs/cifar10.py \\
        --config.data_dir=/path/to/cifar-10-batches-py --workdir=runs/cifar10

A 3-stage SmallNet (32 -> 16 -> 8) with random crops and flips, 30 epochs of SGD with Nesterov momentum.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "cifar10"
  config.data_dir = ""          # required: set it on the command line
  config.augment = True
  config.model.width = 64
  config.model.stages = 3
  config.model.depth = 2
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.num_steps = 5850       # 30 epochs of 195 steps
  config.optimizer.learning_rate = 0.2
  config.optimizer.warmup_steps = 390
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 100
  config.eval_every_steps = 1950
  config.checkpoint_every_steps = 975
  return config
