"""The default experiment: every 1x1 design side by side on scikit-learn's digits (8x8), on CPU.

Takes about 2.5 minutes on 2 CPU cores, compilation included. Every key is checked before anything
compiles (experiments/config_check.py). Override any key on the command line:
``python -m experiments.run --config.num_steps=600 --config.model.width=48``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data (experiments/data.py). digits and synthetic need no files; mnist, fashion_mnist and cifar10
  # read data_dir. max_train/max_test > 0 truncate the splits.
  config.dataset = "digits"
  config.data_dir = ""
  config.max_train = 0
  config.max_test = 0
  config.augment = False
  config.synthetic = ml_collections.ConfigDict(
      dict(shape=(8, 8, 1), sizes=(2048, 512), num_classes=10))

  # The variants trained side by side, and the one their savings are measured against. Each is a
  # pwconv.models.SmallNet with that block; everything else is shared.
  config.variants = ("dense", "bottleneck", "separable", "inverted_residual", "fire", "inception",
                     "shuffle", "mlpconv")
  config.baseline = "dense"
  config.model = ml_collections.ConfigDict(dict(
      width=32,             # channels of the stem and first stage; doubled at each later stage
      stages=2,
      depth=2,              # blocks per stage
      kernel_size=3,        # kxk of the dense/bottleneck/separable/inverted-residual/mlpconv convs
      reduction=0.25,       # bottleneck / fire squeeze / shuffle bottleneck width over F
      expansion=4,          # inverted residual t
      groups=2,             # shuffle unit g
      pointwise_layers=1,   # mlpconv: extra 1x1 + activation layers
      norm="batch",         # batch | layer | none
      act="relu",           # relu | relu6 | swish | gelu
      impl="auto",          # depthwise implementation (pwconv.kernels.names())
  ))

  # Optimisation: the schedule is linear warmup then cosine decay to final_lr_fraction. For adamw,
  # momentum is Adam's b1 and nesterov=True gives NAdamW; weight decay applies to kernels only.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      warmup_steps=20, final_lr_fraction=0.0))
  config.batch_size = 128       # global, split over every device
  config.eval_batch_size = 512
  config.num_steps = 200         # 18 epochs of digits' 1437 training images
  config.seed = 0
  config.dtype = "float32"      # compute dtype; parameters stay float32

  # Logging, evaluation, checkpoints, timing.
  config.log_every_steps = 50
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.checkpoints_to_keep = 2
  config.timing_repeats = 20    # medians of this many compiled calls for the measured-time columns
  config.stop_after_steps = 0   # > 0: end each invocation after training this many steps (all
                                # variants together), checkpointed; rerun to go on (time slices)
  config.num_devices = 0        # 0: every device; n: the first n (single process only)

  # Multi-host: "auto" starts jax.distributed on a detected cluster (TPU pod slice, SLURM).
  config.distributed = ml_collections.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0, process_id=0,
      cpu_collectives=""))
  return config
