"""The modern 1x1 designs side by side with the classic ones, on digits, on CPU in a few minutes.

The SmallNet designs of EfficientNet (``mbconv``: MBConv with squeeze-excite; ``fused_mbconv``),
MobileNetV4 (``uib``: the ExtraDW universal inverted bottleneck), GhostNet (``ghost``), ConvNeXt
(``convnext``) and RepVGG (``repvgg``, trained in its multi-branch form) against the classic
dense, bottleneck, separable and inverted-residual designs, two seeds each, with the default's
augmentation:

    python -m experiments.run --config=experiments/configs/modern.py --workdir=runs/modern
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.variants = ("dense", "bottleneck", "separable", "inverted_residual", "mbconv",
                     "fused_mbconv", "uib", "ghost", "convnext", "repvgg")
  config.seeds = 2
  return config
