"""ResNet v1.5 of bottleneck blocks."""

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
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = kw_only()
  num_filters: int = kw_only(default=64)
  expansion: int = kw_only(default=4)

  def __post_init__(self):
    owner = type(self).__name__
    validate.positive_int(owner, "num_filters", self.num_filters)
    validate.positive_int(owner, "expansion", self.expansion)
    if (isinstance(self.stage_sizes, str) or not isinstance(self.stage_sizes, Sequence)
        or not self.stage_sizes):
      raise TypeError(f"{owner}: stage_sizes must be a non-empty sequence of ints (blocks per stage), "
                      f"got {self.stage_sizes!r}")
    for size in self.stage_sizes:
      validate.positive_int(owner, "stage_sizes", size)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = DenseConv(self.num_filters, (7, 7), strides=(2, 2), **self.knobs(), name="stem")(x, train=train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.pad((3, 3)))
    for i, blocks in enumerate(self.stage_sizes):
      width = self.num_filters * 2**i
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(width * self.expansion, width, strides=(stride, stride), expand=True,
                       **self.knobs(), name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))

registry.register(
    "resnet50", resnet50, family="resnet",
    source="He et al. 2016, Deep residual learning, Table 1 (3.8 GFLOPs, stride on the 1x1); v1.5 "
           "(stride on the 3x3) as torchvision: 4.09 GMACs, 25,557,032 params",
    figures={"macs": 4_100_000_000, "params": 25_557_032})
