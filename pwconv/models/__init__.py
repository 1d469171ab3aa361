"""Paper-size networks built from pwconv's blocks, the small configurable net the runner trains, and
the registry that names them all.

Every network is a linen Module, ``__call__(x, *, train=False)``: x (N, H, W, 3) -> (N, num_classes)
logits, taking the blocks' knobs (``norm``, ``act``, ``use_bias``, ``zero_init_last``, ``padding``,
``depthwise_conv``, ``dtype``, ``param_dtype``) as keyword arguments and handing them to every block. The
paper models are presets, ``functools.partial`` of a network class with the paper's table filled in,
called as ``mobilenet_v1(num_classes=1000, **kwargs)`` or ``create("mobilenet_v1", **kwargs)``; at their
resolution each reproduces the MACs and parameters in :data:`PAPER_FIGURES`.

MACs are per image, conv + dense only, padded taps counted, as :func:`pwconv.profile` and the papers
count them; parameters are the ``params`` collection (BatchNorm statistics excluded).
"""

from pwconv.models import registry
from pwconv.models.convnext import ConvNeXt, NormHead, convnext_tiny
from pwconv.models.efficientnet import (EFFICIENTNET_B0, EFFICIENTNET_V2_BASE, EFFICIENTNET_V2_S,
                                       MOBILENET_V3_LARGE, MOBILENET_V3_SMALL, BlockDef,
                                       EfficientNet, MobileNetV3, efficientnet_b0,
                                       efficientnet_v2_b0, efficientnet_v2_rw_t,
                                       mobilenet_v3_large, mobilenet_v3_small)
from pwconv.models.ghostnet import GHOSTNET, GhostNet, ghostnet
from pwconv.models.googlenet import GOOGLENET, GoogLeNet, googlenet, googlenet_torchvision
from pwconv.models.mobilenet import (MOBILENET_V1, MOBILENET_V2, MobileNetV1, MobileNetV2,
                                     mobilenet_v1, mobilenet_v2)
from pwconv.models.mobilenet_v4 import (MOBILENET_V4_CONV_SMALL, MobileNetV4,
                                        mobilenet_v4_conv_small)
from pwconv.models.network import Network, make_divisible, max_pool_ceil
from pwconv.models.registry import Entry, Reference, create, list_models
from pwconv.models.repvgg import MobileOne, RepNet, RepVGG, mobileone_s0, repvgg_a0
from pwconv.models.resnet import ResNet, resnet50
from pwconv.models.smallnet import SMALLNET_BLOCKS, SmallNet, SmallNetBlock, register_block
from pwconv.models.squeezenet import SQUEEZENET1_0, SqueezeNet, squeezenet1_0

# The published figures of every registered network that has them, with their source.
PAPER_FIGURES = {e.name: {**e.figures, "source": e.source} for e in registry.entries() if e.figures}

__all__ = [
    "GHOSTNET", "GhostNet", "ghostnet",
    "GOOGLENET", "MOBILENET_V1", "MOBILENET_V2", "PAPER_FIGURES", "SMALLNET_BLOCKS", "SQUEEZENET1_0",
    "Entry", "GoogLeNet", "MobileNetV1", "MobileNetV2", "Network", "Reference", "ResNet", "SmallNet",
    "SmallNetBlock", "SqueezeNet", "create", "googlenet", "list_models", "make_divisible",
    "max_pool_ceil", "mobilenet_v1", "mobilenet_v2", "register_block", "registry", "resnet50",
    "squeezenet1_0", "googlenet_torchvision",
    "MOBILENET_V4_CONV_SMALL", "MobileNetV4", "mobilenet_v4_conv_small",
    "ConvNeXt", "NormHead", "convnext_tiny",
    "EFFICIENTNET_B0", "EFFICIENTNET_V2_BASE", "EFFICIENTNET_V2_S", "MOBILENET_V3_LARGE",
    "MOBILENET_V3_SMALL", "BlockDef", "EfficientNet", "MobileNetV3", "efficientnet_b0",
    "efficientnet_v2_b0", "efficientnet_v2_rw_t", "mobilenet_v3_large", "mobilenet_v3_small",
    "MobileOne", "RepNet", "RepVGG", "mobileone_s0", "repvgg_a0",
]
