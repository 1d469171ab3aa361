"""pwconv: 1x1 ("pointwise") convolution designs in JAX/Flax, with exact cost accounting.

The public API (re-exports only); see DESIGN.md for the contract.
"""

from pwconv import kernels
from pwconv import models
from pwconv import ops
from pwconv import timing
from pwconv.blocks import (Block, Bottleneck, DenseConv, DepthwiseSeparable, FireModule, Identity,
                           InceptionModule, InvertedResidual, MLPConv, ShuffleUnit, SqueezeExcite,
                           batch_norm)
from pwconv.costs import LayerCost, Profile, Savings, profile, savings
from pwconv.layers import DepthwiseConv, PointwiseConv

__version__ = "0.1.0"

__all__ = [
    "Block", "Bottleneck", "DenseConv", "DepthwiseConv", "DepthwiseSeparable", "FireModule", "Identity",
    "InceptionModule", "InvertedResidual", "LayerCost", "MLPConv", "PointwiseConv", "Profile",
    "Savings", "ShuffleUnit", "SqueezeExcite", "batch_norm", "kernels", "models", "ops", "profile",
    "savings", "timing",
]
