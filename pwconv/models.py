"""Paper-size networks built from pwconv's blocks, and the small configurable net the runner trains.

Every network is a linen Module, ``__call__(x, *, train=False)``: x (N, H, W, 3) -> (N, num_classes)
logits. They take :class:`~pwconv.blocks.Block`'s knobs (``norm``, ``act``, ``use_bias``,
``zero_init_last``, ``dtype``, ``param_dtype``; ``impl`` where there are depthwise convs) as keyword
arguments and hand them to every block. The paper models are variants, ``functools.partial`` of a
network class with the paper's table filled in, called as ``mobilenet_v1(num_classes=1000, **kwargs)``;
at 224x224 each reproduces the MACs and parameters in :data:`PAPER_FIGURES`.

MACs are per image, conv + dense only, padded taps counted, as :func:`pwconv.profile` and the papers
count them; parameters are the ``params`` collection (BatchNorm statistics excluded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import kernels
from pwconv import validate
from pwconv.blocks import (Block, Bottleneck, DenseConv, DepthwiseSeparable, FireModule,
                           InceptionModule, InvertedResidual, MLPConv, ShuffleUnit)
from pwconv.layers import PointwiseConv

PAPER_FIGURES: dict[str, dict[str, Any]] = {
    "mobilenet_v1": {
        "macs": 569_000_000, "params": 4_200_000,
        "source": "Howard et al. 2017, MobileNets, Table 1 and Table 8 (1.0 MobileNet-224)"},
    "mobilenet_v2": {
        "macs": 300_000_000, "params": 3_400_000,
        "source": "Sandler et al. 2018, MobileNetV2, Table 4. The TF-slim release lists 300M MACs "
                  "and 3.47M params (conv and FC weights alone: 3,470,760); torchvision's exact count, "
                  "BatchNorm scale and bias included, is 3,504,872"},
    "squeezenet1_0": {
        "macs": 820_000_000, "params": 1_248_424,
        "source": "Iandola et al. 2016, SqueezeNet, Table 1 (params, exact); the paper gives no MACs: "
                  "0.82 G is torchvision's figure for squeezenet1_0"},
    "googlenet": {
        "macs": 1_500_000_000, "params": 6_800_000,
        "source": "Szegedy et al. 2014, Going deeper with convolutions, Sec. 5 (about 1.5 billion "
                  "multiply-adds) and Table 1 (params: its column sums to 6.8M). Table 1 misprints two "
                  "ops entries: conv1 is 112·112·7·7·3·64 = 118M, not 34M; inception (5a), from its own "
                  "row, is 51M, not 54M; corrected, the column sums to 1.58G",
        # Table 1's params and ops columns, keyed by this module's layer names.
        "rows": {
            "conv1": {"params": 2_700, "macs": 34_000_000},
            "conv2": {"params": 112_000, "macs": 360_000_000},
            "inception_3a": {"params": 159_000, "macs": 128_000_000},
            "inception_3b": {"params": 380_000, "macs": 304_000_000},
            "inception_4a": {"params": 364_000, "macs": 73_000_000},
            "inception_4b": {"params": 437_000, "macs": 88_000_000},
            "inception_4c": {"params": 463_000, "macs": 100_000_000},
            "inception_4d": {"params": 580_000, "macs": 119_000_000},
            "inception_4e": {"params": 840_000, "macs": 170_000_000},
            "inception_5a": {"params": 1_072_000, "macs": 54_000_000},
            "inception_5b": {"params": 1_388_000, "macs": 71_000_000},
            "classifier": {"params": 1_000_000, "macs": 1_000_000},
        }},
    "resnet50": {
        "macs": 4_100_000_000, "params": 25_557_032,
        "source": "He et al. 2016, Deep residual learning, Table 1 (3.8 GFLOPs, stride on the 1x1); "
                  "v1.5 (stride on the 3x3) as torchvision: 4.09 GMACs, 25,557,032 params"},
}

_KNOBS = ("norm", "act", "use_bias", "zero_init_last", "dtype", "param_dtype")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds a channel count to the nearest multiple of ``divisor``, losing no more than 10%.

  The rounding of the MobileNet reference implementations (TF-slim, torchvision):
  ``make_divisible(32 * 0.35) == 16``, ``make_divisible(1280) == 1280``.
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * v else rounded


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Unpadded max pool rounding the output size up (PyTorch's ``ceil_mode=True``, SqueezeNet's pools).

  x: (N, H, W, C) -> (N, ceil((H - window) / stride) + 1, ..., C) for window >= stride; the last
  window overhangs the bottom/right edge and takes the max of the rows and columns it covers.
  """
  pads = []
  for size in x.shape[1:3]:
    out = max(-(-(size - window) // stride), 0) + 1
    pads.append((0, (out - 1) * stride + window - size))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def _kw(**kwargs: Any) -> Any:
  return dataclasses.field(kw_only=True, **kwargs)


def _check_multiplier(owner: str, value: float) -> None:
  validate.number(owner, "width_multiplier", value, low=0, low_open=True)


class Network(Block):
  """A classifier built from blocks: :class:`Block`'s knobs, handed to every block it builds.

  Every network has a ``num_classes`` field, and some a ``dropout_rate``; both are checked here.
  """

  def __post_init__(self):
    owner = type(self).__name__
    validate.positive_int(owner, "num_classes", self.num_classes)
    if hasattr(self, "dropout_rate"):
      validate.number(owner, "dropout_rate", self.dropout_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  def knobs(self) -> dict[str, Any]:
    """norm, act, use_bias, zero_init_last, dtype, param_dtype: the keyword arguments of each block."""
    return {name: getattr(self, name) for name in _KNOBS}

  def classify(self, x: jax.Array, num_classes: int, *, train: bool,
               dropout_rate: float = 0.0) -> jax.Array:
    """Global average pool -> dropout -> Dense: (N, H, W, C) -> (N, num_classes). Cost: C·num_classes."""
    x = jnp.mean(x, axis=(1, 2))
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return nn.Dense(num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)


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
    layers: (filters, stride) of each :class:`DepthwiseSeparable` layer.
    impl: depthwise implementation.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  stem: int = _kw()
  layers: Sequence[tuple[int, int]] = _kw()
  impl: str = _kw(default="auto")

  def __post_init__(self):
    owner = type(self).__name__
    _check_multiplier(owner, self.width_multiplier)
    validate.one_of(owner, "impl", self.impl, kernels.names())
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    alpha = self.width_multiplier
    x = DenseConv(make_divisible(self.stem * alpha), (3, 3), strides=(2, 2), **self.knobs(),
                  name="stem")(x, train=train)
    for i, (filters, stride) in enumerate(self.layers):
      x = DepthwiseSeparable(make_divisible(filters * alpha), strides=(stride, stride), impl=self.impl,
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
    blocks: (t, c, n, s) rows of :class:`InvertedResidual` repeats; residual where s = 1 and the
      channels match.
    last_features: channels of the 1x1 conv before the pool.
    dropout_rate: dropout before the FC layer (0.2 in the reference implementation).
    impl: depthwise implementation.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  stem: int = _kw()
  blocks: Sequence[tuple[int, int, int, int]] = _kw()
  last_features: int = _kw()
  dropout_rate: float = _kw(default=0.0)
  impl: str = _kw(default="auto")

  def __post_init__(self):
    owner = type(self).__name__
    _check_multiplier(owner, self.width_multiplier)
    validate.one_of(owner, "impl", self.impl, kernels.names())
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
                             impl=self.impl, **self.knobs(), name=f"block{k}")(x, train=train)
    x = DenseConv(make_divisible(self.last_features * max(1.0, alpha)), (1, 1), **self.knobs(),
                  name="last")(x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


# Fire modules fire2..fire9 as (squeeze, expand1x1, expand3x3), in groups separated by max pool 3x3/2.
SQUEEZENET1_0 = (((16, 64, 64), (16, 64, 64), (32, 128, 128)),
                 ((32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256)),
                 ((64, 256, 256),))


class SqueezeNet(Network):
  """SqueezeNet (Iandola et al. 2016): conv 7x7/2 VALID, Fire modules between max pools, conv 1x1.

  conv1 -> max pool -> fires -> max pool -> fires -> max pool -> fires -> dropout -> conv10 1x1 to
  num_classes -> act -> global average pool. The pools are 3x3/2 unpadded, rounding up as in the
  reference implementation. There is no FC layer: conv10 is the classifier.

  Attributes:
    num_classes: channels of conv10.
    stem: filters of conv1 (7x7/2).
    fires: groups of :class:`FireModule` (squeeze, expand1x1, expand3x3), each group after a max pool.
    dropout_rate: dropout before conv10 (paper: 0.5).
  """
  num_classes: int = 1000
  stem: int = _kw()
  fires: Sequence[Sequence[tuple[int, int, int]]] = _kw()
  dropout_rate: float = _kw(default=0.0)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv1 = functools.partial(nn.Conv, self.stem, (7, 7), strides=(2, 2), padding="VALID")
    x = self.conv_norm_act(x, conv1, name="conv1", train=train)
    k = 1
    for group in self.fires:
      x = max_pool_ceil(x)
      for squeeze, expand1x1, expand3x3 in group:
        k += 1
        x = FireModule(squeeze, expand1x1, expand3x3, **self.knobs(), name=f"fire{k}")(x, train=train)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = PointwiseConv(self.num_classes, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"conv{k + 1}")(x)
    return jnp.mean(self.activate(x), axis=(1, 2))


# Table 1: inception modules as (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), grouped by
# max pool 3x3/2; the groups are the paper's 3a-3b, 4a-4e, 5a-5b.
GOOGLENET = (((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
             ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
              (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
             ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)))


class GoogLeNet(Network):
  """GoogLeNet (Szegedy et al. 2014), without the auxiliary classifiers and local response norms.

  conv 7x7/2 64 -> max pool -> conv 1x1 64 -> conv 3x3 192 (a :class:`Bottleneck` with
  ``expand=False``, the table's "depth 2" row) -> max pool -> inception 3a, 3b -> max pool -> 4a-4e ->
  max pool -> 5a, 5b -> global average pool -> dropout -> FC. Max pools are 3x3/2 SAME. Local response
  normalisation has neither parameters nor MACs and is left out, as in later reimplementations.

  Attributes:
    num_classes: outputs of the FC layer.
    stem: (conv 7x7/2, #3x3 reduce, #3x3) filters.
    inceptions: groups of :class:`InceptionModule` rows, the first group after the stem's max pool,
      each next group after another max pool; named inception_3a, 3b, 4a, ...
    dropout_rate: dropout before the FC layer (paper: 0.4).
  """
  num_classes: int = 1000
  stem: tuple[int, int, int] = _kw()
  inceptions: Sequence[Sequence[tuple[int, int, int, int, int, int]]] = _kw()
  dropout_rate: float = _kw(default=0.0)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv1, reduce, conv2 = self.stem
    x = DenseConv(conv1, (7, 7), strides=(2, 2), **self.knobs(), name="conv1")(x, train=train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    x = Bottleneck(conv2, reduce, expand=False, **self.knobs(), name="conv2")(x, train=train)
    for stage, group in enumerate(self.inceptions, start=3):
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      for j, row in enumerate(group):
        x = InceptionModule(*row, **self.knobs(), name=f"inception_{stage}{chr(ord('a') + j)}")(
            x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


class ResNet(Network):
  """ResNet v1.5 (He et al. 2016; the stride on the 3x3 conv, as torchvision) of bottleneck blocks.

  conv 7x7/2 + norm + act -> max pool 3x3/2 -> stages of :class:`Bottleneck` (``expand=True``; the
  first block of each stage has a projection shortcut, and stride 2 after the first stage) -> global
  average pool -> FC.

  Attributes:
    num_classes: outputs of the FC layer.
    stage_sizes: blocks per stage (ResNet-50: 3, 4, 6, 3).
    num_filters: filters of the stem conv and reduced width of the first stage; doubles each stage.
    expansion: a block's output channels over its reduced width (4).
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = _kw()
  num_filters: int = _kw(default=64)
  expansion: int = _kw(default=4)

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
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      width = self.num_filters * 2**i
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(width * self.expansion, width, strides=(stride, stride), expand=True,
                       **self.knobs(), name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


mobilenet_v1 = functools.partial(MobileNetV1, stem=32, layers=MOBILENET_V1)
mobilenet_v2 = functools.partial(MobileNetV2, stem=32, blocks=MOBILENET_V2, last_features=1280,
                                 dropout_rate=0.2, act=jax.nn.relu6)
squeezenet1_0 = functools.partial(SqueezeNet, stem=96, fires=SQUEEZENET1_0, dropout_rate=0.5,
                                  norm=None)
googlenet = functools.partial(GoogLeNet, stem=(64, 64, 192), inceptions=GOOGLENET, dropout_rate=0.4,
                              norm=None)
resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))

SMALLNET_BLOCKS = ("dense", "bottleneck", "separable", "inverted_residual", "fire", "inception",
                   "shuffle", "mlpconv")


class SmallNet(Network):
  """The small classifier the runner trains side by side: one topology, only the block differs.

  stem (dense kxk conv to ``width`` + norm + act) -> ``stages`` stages of ``depth`` blocks with
  width·2^i features (a 2x2/2 max pool, SAME, before every stage after the first) -> global average
  pool -> Dense(num_classes). For inputs of 8x8 to 32x32 (any size works: pools round up).

  The blocks, for F features:
    dense: ``DenseConv(F, kernel_size)``.
    bottleneck: ``Bottleneck(F, int(F·reduction), kernel_size, expand=False)``, the Inception
      reduction: 1x1 to F·reduction, then kxk to F.
    separable: ``DepthwiseSeparable(F, kernel_size)``.
    inverted_residual: ``InvertedResidual(F, expansion, kernel_size)``.
    fire: ``FireModule(squeeze=int(F·reduction), expand1x1=F//2, expand3x3=F - F//2)``; 1x1 + 3x3.
    inception: ``InceptionModule`` with GoogLeNet 3a's proportions: 1x1 F//4, 3x3 reduce F//4, 3x3 the
      rest (F/2 when 8 divides F), 5x5 reduce, 5x5 and pool proj F//8 each; needs width >= 8.
    shuffle: ``ShuffleUnit(F, groups, bottleneck_ratio=reduction)`` at stride 1; its first 1x1 is
      grouped when ``groups`` divides the input channels.
    mlpconv: ``MLPConv(F, kernel_size, pointwise_layers)``: the dense net plus 1x1 + act layers.

  Attributes:
    block: one of :data:`SMALLNET_BLOCKS`.
    num_classes: outputs of the final Dense layer.
    width: channels of the stem and the first stage.
    stages: number of stages; each after the first halves H and W and doubles the channels.
    depth: blocks per stage.
    kernel_size: (kh, kw) of the stem and of the kxk conv of dense, bottleneck, separable,
      inverted_residual and mlpconv (fire, inception and shuffle keep their own 3x3 / 5x5).
    reduction: bottleneck width over F for bottleneck, fire and shuffle, in (0, 1].
    expansion: inverted_residual's t.
    groups: shuffle's g; divides width.
    pointwise_layers: mlpconv's 1x1 + act layers after the kxk conv (>= 0).
    impl: depthwise implementation (separable, inverted_residual, shuffle).
  """
  block: str = "dense"
  num_classes: int = 10
  width: int = 32
  stages: int = 2
  depth: int = 2
  kernel_size: Sequence[int] = (3, 3)
  reduction: float = 0.25
  expansion: int = 4
  groups: int = 2
  pointwise_layers: int = 1
  impl: str = "auto"

  def __post_init__(self):
    owner = type(self).__name__
    validate.one_of(owner, "block", self.block, SMALLNET_BLOCKS)
    for name in ("width", "stages", "depth", "expansion", "groups"):
      validate.positive_int(owner, name, getattr(self, name))
    validate.positive_int(owner, "pointwise_layers", self.pointwise_layers, minimum=0)
    validate.int_pair(owner, "kernel_size", self.kernel_size)
    validate.number(owner, "reduction", self.reduction, low=0, high=1, low_open=True)
    validate.one_of(owner, "impl", self.impl, kernels.names())
    minimum = {"fire": 2, "inception": 8}.get(self.block, 1)
    if self.width < minimum:
      raise ValueError(f"{owner}: width must be >= {minimum} for block {self.block!r}, got {self.width}")
    if self.block == "shuffle" and (self.width % self.groups
                                    or int(self.width * self.reduction) < self.groups):
      raise ValueError(f"{owner}: groups must divide width={self.width} and be at most "
                       f"int(width·reduction)={int(self.width * self.reduction)} for block 'shuffle', "
                       f"got {self.groups}")
    super().__post_init__()

  def make_block(self, features: int, in_features: int, name: str) -> nn.Module:
    """The ``block`` family's module for ``features`` output channels after ``in_features``."""
    kernel_size = validate.int_pair(type(self).__name__, "kernel_size", self.kernel_size)
    reduced = max(1, int(features * self.reduction))
    kw = dict(self.knobs(), name=name)
    if self.block == "dense":
      return DenseConv(features, kernel_size, **kw)
    if self.block == "bottleneck":
      return Bottleneck(features, reduced, kernel_size, expand=False, residual=False, **kw)
    if self.block == "separable":
      return DepthwiseSeparable(features, kernel_size, impl=self.impl, **kw)
    if self.block == "inverted_residual":
      return InvertedResidual(features, self.expansion, kernel_size, impl=self.impl, **kw)
    if self.block == "fire":
      return FireModule(reduced, features // 2, features - features // 2, **kw)
    if self.block == "inception":
      f1x1, f5x5 = features // 4, features // 8
      return InceptionModule(f1x1, f1x1, features - f1x1 - 2 * f5x5, f5x5, f5x5, f5x5, **kw)
    if self.block == "shuffle":
      return ShuffleUnit(features, self.groups, bottleneck_ratio=self.reduction,
                         group_first=in_features % self.groups == 0, impl=self.impl, **kw)
    return MLPConv(features, kernel_size, pointwise_layers=self.pointwise_layers, **kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kernel_size = validate.int_pair(type(self).__name__, "kernel_size", self.kernel_size)
    x = DenseConv(self.width, kernel_size, **self.knobs(), name="stem")(x, train=train)
    for i in range(self.stages):
      if i > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      for j in range(self.depth):
        block = self.make_block(self.width * 2**i, x.shape[-1], name=f"stage{i + 1}_block{j + 1}")
        x = block(x, train=train)
    return self.classify(x, self.num_classes, train=train)
