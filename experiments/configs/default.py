"""The default experiment: every classic 1x1 design side by side on scikit-learn's digits (8x8), on
CPU: three seeds each, with random 1-pixel shifts and one RandAugment-lite op per image, 7 epochs.

Takes under 3 minutes on 2 CPU cores, compilation included (2m54s in a fresh venv here). The augmentation and the short
schedule keep the designs from all reaching the same test accuracy (which, on 360 test images,
moves in steps of 0.28 pp), and the seeds give each mean its std; what such a run can and cannot
show is in README.md. Every key is checked before anything compiles (experiments/config_check.py).
Override any key on the command line:
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
  # Augmentation of the training images: augment = a random crop of the image zero-padded by
  # crop_padding pixels, and a horizontal flip if flip (not for digits: a mirrored digit is another
  # symbol); randaugment: num_ops RandAugment-lite ops per image (0: none), at magnitude in [0, 1]
  # (experiments/input_pipeline.py lists the ops).
  config.augment = True
  config.crop_padding = 1
  config.flip = False
  config.randaugment = ml_collections.ConfigDict(dict(num_ops=1, magnitude=0.4))
  config.synthetic = ml_collections.ConfigDict(
      dict(shape=(8, 8, 1), sizes=(2048, 512), num_classes=10))

  # The variants trained side by side, and the one their savings are measured against. A SmallNet
  # design (pwconv.models.SMALLNET_BLOCKS: dense, ..., mbconv, fused_mbconv, uib, ghost, convnext,
  # repvgg) is a pwconv.models.SmallNet with that block and config.model; any other name of
  # pwconv.models.list_models() (mobilenet_v2, resnet50, efficientnet_b0, ...) is that network at
  # its paper's settings, with the data's classes and config.dtype.
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
      drop_path_rate=0.0,   # stochastic depth of the last block, rising linearly from 0 at the
                            # first; only blocks with a residual branch that take it (mbconv,
                            # fused_mbconv, uib, convnext, repvgg; networks with a drop_path_rate)
  ))

  # Optimisation: the schedule is linear warmup then cosine decay to final_lr_fraction. For adamw,
  # momentum is Adam's b1 and nesterov=True gives NAdamW; weight decay applies to kernels only (not
  # biases, norms, layer scales); clip_grad_norm > 0 clips the gradients' global L2 norm to it.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
      warmup_steps=20, final_lr_fraction=0.0, clip_grad_norm=0.0))
  config.label_smoothing = 0.0  # alpha: targets (1 - alpha)·one_hot + alpha / num_classes
  config.ema_decay = 0.0        # > 0 (e.g. 0.999): keep an EMA of the weights and BatchNorm
                                # statistics, and report its test accuracy beside the raw weights'

  config.batch_size = 64        # global, split over every device
  config.eval_batch_size = 512
  config.num_steps = 160        # 7 epochs of digits' 1437 training images
  config.seed = 0               # the first seed (init, data order, augmentation, dropout)
  config.seeds = 3              # each variant trains once from each of seed, seed + 1, ...; the
                                # table gives test accuracy as mean ± std over them
  config.dtype = "float32"      # compute dtype; "bfloat16" is mixed precision: bf16 activations
                                # and matmuls; float32 params, optimizer state, BatchNorm
                                # statistics and loss

  # Logging, evaluation, checkpoints, timing.
  config.log_every_steps = 40
  config.eval_every_steps = 80
  config.checkpoint_every_steps = 80
  config.checkpoints_to_keep = 2
  config.timing_repeats = 10    # medians of this many compiled calls for the measured-time columns
  config.calibrate_roofline = True  # 'pred x': calibrate each layer kind's roofline efficiency on
                                    # this device first (~15 s on 2 CPU cores); False: pure roofline
  config.stop_after_steps = 0   # > 0: end each invocation after training this many steps (all
                                # variants together), checkpointed; rerun to go on (time slices)
  config.num_devices = 0        # 0: every device; n: the first n (single process only)

  # Multi-host: "auto" starts jax.distributed on a detected cluster (TPU pod slice, SLURM).
  config.distributed = ml_collections.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0, process_id=0,
      cpu_collectives="",
      initialization_timeout=300,  # seconds every process waits for all to connect, then exits
  ))
  return config
