"""pwconv: 1x1 ("pointwise") convolution designs in JAX/Flax, with exact cost accounting.

The public API (re-exports only); docs/design.md describes the layout and conventions.
"""

from pwconv import blocks
from pwconv import kernels
from pwconv import models
from pwconv import ops
from pwconv import timing
from pwconv import weights
from pwconv import reparam
from pwconv.blocks import (Block, Bottleneck, DenseConv, DepthwiseSeparable, FireModule, Identity,
                           InceptionModule, InvertedResidual, Knobs, MLPConv, ShuffleUnit,
                           SqueezeExcite, batch_norm)
from pwconv.blocks import GhostBottleneck, GhostModule
from pwconv.blocks import UniversalInvertedBottleneck
from pwconv.blocks import ConvNeXtBlock
from pwconv.blocks import FusedMBConv, MBConv
from pwconv.blocks import MobileOneBlock, RepVGGBlock
from pwconv.costs import LayerCost, Profile, Savings, profile, savings
from pwconv.layers import DepthwiseConv, DropPath, LayerScale, PointwiseConv
from pwconv.transforms import remat, scan

__version__ = "0.1.0"

__all__ = [
    "Block", "Bottleneck", "DenseConv", "DepthwiseConv", "DepthwiseSeparable", "DropPath",
    "GhostBottleneck", "GhostModule",
    "FireModule", "Identity", "InceptionModule", "InvertedResidual", "Knobs", "LayerCost",
    "LayerScale", "MLPConv", "PointwiseConv", "Profile", "Savings", "ShuffleUnit", "SqueezeExcite",
    "batch_norm", "blocks", "kernels", "models", "ops", "profile", "savings", "timing", "weights",
    "UniversalInvertedBottleneck",
    "ConvNeXtBlock",
    "FusedMBConv", "MBConv",
    "MobileOneBlock", "RepVGGBlock", "reparam", "remat", "scan",
]
