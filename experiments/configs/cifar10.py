"""The GPU recipe: CIFAR-10, read from ``--config.data_dir`` (nothing is downloaded), trained the
way the CIFAR papers and their reference repositories train (He et al. 2016; kuangliu/pytorch-cifar):
SGD with Nesterov momentum 0.9, lr 0.1 for batch 128 with a one-epoch warmup and cosine decay,
weight decay 5e-4, random crops of the 4-pixel padded image and horizontal flips, 200 epochs.

``data_dir`` holds the python or binary batches, or the folder the archive extracts to
(``cifar-10-batches-py/`` or ``cifar-10-batches-bin/``):

    python -m experiments.run --config=experiments/configs/cifar10.py \\
        --config.data_dir=/path/to/cifar-10-batches-py --workdir=runs/cifar10

A 3-stage SmallNet (32 -> 16 -> 8; 64, 128, 256 channels; 3 blocks a stage) with the plain VGG-style
``dense`` design as the baseline, the ResNet-style ``repvgg`` (identity and 1x1 branches beside each
3x3) and the MobileNet-style ``separable`` and ``inverted_residual`` (MobileNetV2's t = 6). BUILD.md
gives the accuracy to expect and the time per GPU.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "cifar10"
  config.data_dir = ""          # required: set it on the command line
  config.augment = True
  config.crop_padding = 4
  config.flip = True
  config.randaugment.num_ops = 0
  config.variants = ("dense", "repvgg", "separable", "inverted_residual")
  config.seeds = 1
  config.model.width = 64
  config.model.stages = 3
  config.model.depth = 3
  config.model.expansion = 6
  config.dtype = "bfloat16"
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_steps = 78000      # 200 epochs of 390 steps
  config.optimizer.learning_rate = 0.1
  config.optimizer.warmup_steps = 390
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 390
  config.eval_every_steps = 3900
  config.checkpoint_every_steps = 3900
  config.timing_repeats = 20
  return config
