"""ResNet v1.5 of bottleneck blocks, and how torchvision's and timm's state dicts name them."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks import Bottleneck, DenseConv
from pwconv.models import registry
from pwconv.models.network import Network, kw_only


class ResNet(Network):
  """ResNet v1.5 (He et al. 2016; the stride on the 3x3 conv, as torchvision) of bottleneck blocks.

  conv 7x7/2 + norm + act -> max pool 3x3/2 (both padded by the ``padding`` convention) -> stages of
  :class:`~pwconv.Bottleneck` (``expand=True``; the first block of each stage has a projection
  shortcut, and stride 2 after the first stage) -> global average pool -> FC.

  Attributes:
    num_classes: outputs of the FC layer.
    stage_sizes: blocks per stage (ResNet-50: 3, 4, 6, 3).
    num_filters: filters of the stem conv and reduced width of the first stage; doubles each stage.
    expansion: a block's output channels over its reduced width (4).
    stem_width: filters of the stem conv instead of ``num_filters``.
    widths: the reduced width of each stage's blocks (timm's ``channels``) instead of
      num_filters·2^i; one per stage.
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = kw_only()
  num_filters: int = kw_only(default=64)
  expansion: int = kw_only(default=4)
  stem_width: int | None = kw_only(default=None)
  widths: Sequence[int] | None = kw_only(default=None)

  def __post_init__(self):
    owner = type(self).__name__
    validate.positive_int(owner, "num_filters", self.num_filters)
    validate.positive_int(owner, "expansion", self.expansion)
    validate.positive_ints(owner, "stage_sizes", self.stage_sizes)
    if self.stem_width is not None:
      validate.positive_int(owner, "stem_width", self.stem_width)
    if self.widths is not None:
      validate.positive_ints(owner, "widths", self.widths)
      if len(self.widths) != len(self.stage_sizes):
        raise ValueError(f"{owner}: widths must give one width per stage "
                         f"({len(self.stage_sizes)}), got {self.widths!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    stem = self.num_filters if self.stem_width is None else self.stem_width
    widths = self.widths or [self.num_filters * 2**i for i in range(len(self.stage_sizes))]
    x = DenseConv(stem, (7, 7), strides=(2, 2), **self.knobs(), name="stem")(x, train=train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.pad((3, 3)))
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, widths)):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(width * self.expansion, width, strides=(stride, stride), expand=True,
                       **self.knobs(), name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
resnet50.__doc__ = ("ResNet-50 v1.5 (torchvision's resnet50, timm's resnet50 with "
                    "padding='symmetric'). BatchNorm momentum 0.9 (PyTorch's 0.1), epsilon 1e-5, "
                    "as torchvision and timm; weights trained in TensorFlow need epsilon 1e-3 and "
                    "padding='SAME'.")

# A bottleneck's layers -> torchvision's (and timm's: the same names) Bottleneck modules.
_BOTTLENECK = {"reduce": "conv1", "reduce_norm": "bn1", "conv": "conv2", "conv_norm": "bn2",
               "expand": "conv3", "expand_norm": "bn3", "shortcut": "downsample.0",
               "shortcut_norm": "downsample.1"}


def _reference_names(module: ResNet, layers: Sequence[str]) -> dict[str, str]:
  """pwconv layer -> torchvision's / timm's module: conv1, bn1, layerI.J.*, fc."""
  del module
  names = {"stem/conv": "conv1", "stem/conv_norm": "bn1", "classifier": "fc"}
  for layer in layers:
    if layer.startswith("stage"):
      block, part = layer.split("/")
      stage, index = block[len("stage"):].split("_block")
      names[layer] = f"layer{stage}.{int(index) - 1}.{_BOTTLENECK[part]}"
  return names


registry.register(
    "resnet50", resnet50, family="resnet",
    source="He et al. 2016, Deep residual learning, Table 1 (3.8 GFLOPs, stride on the 1x1); v1.5 "
           "(stride on the 3x3) as torchvision: 4.09 GMACs, 25,557,032 params",
    figures={"macs": 4_100_000_000, "params": 25_557_032},
    references=[registry.Reference(library=library, name="resnet50", classifier="fc.weight",
                                   names=_reference_names, kwargs={"padding": "symmetric"})
                for library in ("torchvision", "timm")])
