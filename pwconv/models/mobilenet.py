"""MobileNetV1 (depthwise-separable layers) and MobileNetV2 (inverted residuals)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv.blocks import DenseConv, DepthwiseSeparable, InvertedResidual
from pwconv.models import registry
from pwconv.models.network import Network, check_multiplier, kw_only, make_divisible

# (filters, stride) of each depthwise-separable layer after the conv 3x3/2 32 stem. Table 1 prints
# the 13th as s2, a known typo: its input and output are both 7x7 (every implementation uses s1).
MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(Network):
  """MobileNet (Howard et al. 2017): conv 3x3/2, depthwise-separable layers, average pool, FC.

  Attributes:
    num_classes: outputs of the FC layer.
    width_multiplier: alpha; every layer has ``make_divisible(alpha·filters)`` channels (= alpha·filters
      for the paper's alpha in {1, 0.75, 0.5, 0.25}). Cost scales roughly as alpha².
    stem: filters of the first (dense) conv 3x3/2.
    layers: (filters, stride) of each :class:`~pwconv.DepthwiseSeparable` layer.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  stem: int = kw_only()
  layers: Sequence[tuple[int, int]] = kw_only()

  def __post_init__(self):
    check_multiplier(type(self).__name__, self.width_multiplier)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    alpha = self.width_multiplier
    x = DenseConv(make_divisible(self.stem * alpha), (3, 3), strides=(2, 2), **self.knobs(),
                  name="stem")(x, train=train)
    for i, (filters, stride) in enumerate(self.layers):
      x = DepthwiseSeparable(make_divisible(filters * alpha), strides=(stride, stride),
                             **self.knobs(), name=f"block{i + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


# Table 2: (t, c, n, s) = expansion, output channels, repeats, stride of the first repeat.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(Network):
  """MobileNetV2 (Sandler et al. 2018): conv 3x3/2, inverted residuals, conv 1x1, average pool, FC.

  Attributes:
    num_classes: outputs of the FC layer.
    width_multiplier: alpha; channels are ``make_divisible(alpha·c)``, except that the last conv is
      never made narrower than ``last_features`` (paper, Sec. 6.1).
    stem: channels of the first (dense) conv 3x3/2.
    blocks: (t, c, n, s) rows of :class:`~pwconv.InvertedResidual` repeats; residual where s = 1 and
      the channels match.
    last_features: channels of the 1x1 conv before the pool.
    dropout_rate: dropout before the FC layer (0.2 in the reference implementation).
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  stem: int = kw_only()
  blocks: Sequence[tuple[int, int, int, int]] = kw_only()
  last_features: int = kw_only()
  dropout_rate: float = kw_only(default=0.0)

  def __post_init__(self):
    check_multiplier(type(self).__name__, self.width_multiplier)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    alpha = self.width_multiplier
    x = DenseConv(make_divisible(self.stem * alpha), (3, 3), strides=(2, 2), **self.knobs(),
                  name="stem")(x, train=train)
    k = 0
    for t, c, n, s in self.blocks:
      for i in range(n):
        k += 1
        stride = s if i == 0 else 1
        x = InvertedResidual(make_divisible(c * alpha), expansion=t, strides=(stride, stride),
                             **self.knobs(), name=f"block{k}")(x, train=train)
    x = DenseConv(make_divisible(self.last_features * max(1.0, alpha)), (1, 1), **self.knobs(),
                  name="last")(x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


mobilenet_v1 = functools.partial(MobileNetV1, stem=32, layers=MOBILENET_V1)
mobilenet_v2 = functools.partial(MobileNetV2, stem=32, blocks=MOBILENET_V2, last_features=1280,
                                 dropout_rate=0.2, act=jax.nn.relu6)

registry.register(
    "mobilenet_v1", mobilenet_v1, family="mobilenet",
    source="Howard et al. 2017, MobileNets, Table 1 and Table 8 (1.0 MobileNet-224)",
    figures={"macs": 569_000_000, "params": 4_200_000})
registry.register(
    "mobilenet_v2", mobilenet_v2, family="mobilenet",
    source="Sandler et al. 2018, MobileNetV2, Table 4. The TF-slim release lists 300M MACs and 3.47M "
           "params (conv and FC weights alone: 3,470,760); torchvision's exact count, BatchNorm scale "
           "and bias included, is 3,504,872",
    figures={"macs": 300_000_000, "params": 3_400_000})
