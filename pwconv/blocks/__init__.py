"""Blocks built around the 1x1 convolution (Flax linen), one family a module.

- :mod:`pwconv.blocks.base`: the shared knobs (:class:`Knobs`), :class:`Block`, :class:`DenseConv`.
- :mod:`pwconv.blocks.classic`: Bottleneck, DepthwiseSeparable, InvertedResidual, InceptionModule,
  FireModule, ShuffleUnit, SqueezeExcite, MLPConv.
"""

from pwconv.blocks.base import (CONV_PAIRS, PADDINGS, Block, DenseConv, Identity, Knobs, batch_norm,
                                conv_padding, pair)
from pwconv.blocks.convnext import ConvNeXtBlock, gelu, layer_norm
from pwconv.blocks.mbconv import (ExpandedBlock, FusedMBConv, MBConv, hard_sigmoid,
                                  hard_swish)
from pwconv.blocks.ghost import GhostBottleneck, GhostModule
from pwconv.blocks.classic import (Bottleneck, DepthwiseSeparable, FireModule, InceptionModule,
                                   InvertedResidual, MLPConv, ShuffleUnit, SqueezeExcite)
from pwconv.blocks.uib import UniversalInvertedBottleneck
from pwconv.blocks.rep import MobileOneBlock, RepBranches, RepVGGBlock

__all__ = [
    "CONV_PAIRS", "PADDINGS", "Block", "Bottleneck", "DenseConv", "DepthwiseSeparable", "FireModule",
    "GhostBottleneck", "GhostModule",
    "Identity", "InceptionModule", "InvertedResidual", "Knobs", "MLPConv", "ShuffleUnit",
    "SqueezeExcite", "batch_norm", "conv_padding", "pair",
    "UniversalInvertedBottleneck",
    "ConvNeXtBlock", "gelu", "layer_norm",
    "ExpandedBlock", "FusedMBConv", "MBConv", "hard_sigmoid", "hard_swish",
    "MobileOneBlock", "RepBranches", "RepVGGBlock",
]
