"""MobileNetV1 (depthwise-separable layers) and MobileNetV2 (inverted residuals), and how
torchvision's and timm's state dicts name their layers."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks import DenseConv, DepthwiseSeparable, InvertedResidual
from pwconv.models import registry
from pwconv.models.network import Network, check_multiplier, kw_only, make_divisible

# (filters, stride) of each depthwise-separable layer after the conv 3x3/2 32 stem. Table 1 prints
# the 13th as s2, a known typo: its input and output are both 7x7 (every implementation uses s1).
MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def scale_depth(repeats: int, depth_multiplier: float) -> int:
  """A stage's repeats times ``depth_multiplier``, rounded up (timm's EfficientNet rounding)."""
  return int(math.ceil(repeats * depth_multiplier))


def _check_depth(owner: str, value: float) -> None:
  validate.number(owner, "depth_multiplier", value, low=0, low_open=True)


class MobileNetV1(Network):
  """MobileNet (Howard et al. 2017): conv 3x3/2, depthwise-separable layers, average pool, FC.

  Attributes:
    num_classes: outputs of the FC layer.
    width_multiplier: alpha; every layer has ``make_divisible(alpha·filters)`` channels (= alpha·filters
      for the paper's alpha in {1, 0.75, 0.5, 0.25}). Cost scales roughly as alpha².
    depth_multiplier: scales the n layers of each stage (a run of equal-width layers: 1, 2, 2, 6,
      2) to ceil(n·d), as timm's ``depth_multiplier``; the first layer of a stage keeps its stride.
    stem: filters of the first (dense) conv 3x3/2.
    layers: (filters, stride) of each :class:`~pwconv.DepthwiseSeparable` layer.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  stem: int = kw_only()
  layers: Sequence[tuple[int, int]] = kw_only()

  def __post_init__(self):
    check_multiplier(type(self).__name__, self.width_multiplier)
    _check_depth(type(self).__name__, self.depth_multiplier)
    super().__post_init__()

  def layout(self) -> list[tuple[int, int, int, int]]:
    """(filters, stride, stage, index in the stage) of each layer, after both multipliers."""
    stages: list[list[tuple[int, int]]] = []
    for filters, stride in self.layers:
      if stages and stages[-1][0][0] == filters and stride == 1:
        stages[-1].append((filters, stride))
      else:
        stages.append([(filters, stride)])
    plan = []
    for s, stage in enumerate(stages):
      filters, stride = stage[0]
      filters = make_divisible(filters * self.width_multiplier)
      for i in range(scale_depth(len(stage), self.depth_multiplier)):
        plan.append((filters, stride if i == 0 else 1, s, i))
    return plan

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = DenseConv(make_divisible(self.stem * self.width_multiplier), (3, 3), strides=(2, 2),
                  **self.knobs(), name="stem")(x, train=train)
    for k, (filters, stride, _, _) in enumerate(self.layout(), start=1):
      x = DepthwiseSeparable(filters, strides=(stride, stride), **self.knobs(),
                             name=f"block{k}")(x, train=train)
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
    depth_multiplier: scales each row's repeats n to ceil(n·d), as timm's ``depth_multiplier``.
    stem: channels of the first (dense) conv 3x3/2.
    blocks: (t, c, n, s) rows of :class:`~pwconv.InvertedResidual` repeats; residual where s = 1 and
      the channels match.
    last_features: channels of the 1x1 conv before the pool.
    dropout_rate: dropout before the FC layer (0.2 in the reference implementation).
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  stem: int = kw_only()
  blocks: Sequence[tuple[int, int, int, int]] = kw_only()
  last_features: int = kw_only()
  dropout_rate: float = kw_only(default=0.0)

  def __post_init__(self):
    check_multiplier(type(self).__name__, self.width_multiplier)
    _check_depth(type(self).__name__, self.depth_multiplier)
    super().__post_init__()

  def layout(self) -> list[tuple[int, int, int, int, int]]:
    """(t, channels, stride, row, index in the row) of each block, after both multipliers."""
    return [(t, make_divisible(c * self.width_multiplier), s if i == 0 else 1, row, i)
            for row, (t, c, n, s) in enumerate(self.blocks)
            for i in range(scale_depth(n, self.depth_multiplier))]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    alpha = self.width_multiplier
    x = DenseConv(make_divisible(self.stem * alpha), (3, 3), strides=(2, 2), **self.knobs(),
                  name="stem")(x, train=train)
    for k, (t, channels, stride, _, _) in enumerate(self.layout(), start=1):
      x = InvertedResidual(channels, expansion=t, strides=(stride, stride), **self.knobs(),
                           name=f"block{k}")(x, train=train)
    x = DenseConv(make_divisible(self.last_features * max(1.0, alpha)), (1, 1), **self.knobs(),
                  name="last")(x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


_BATCH_NORM = ("BatchNorm momentum 0.9 (PyTorch's 0.1), epsilon 1e-5, as torchvision and timm; "
               "weights trained in TensorFlow need epsilon 1e-3 (norm=functools.partial("
               "nn.BatchNorm, momentum=0.9, epsilon=1e-3)) and padding='SAME'.")

mobilenet_v1 = functools.partial(MobileNetV1, stem=32, layers=MOBILENET_V1)
mobilenet_v1.__doc__ = ("MobileNet 1.0-224 (Table 1): ReLU after every conv as the paper says. "
                        "timm's mobilenetv1_100 is this network with act=jax.nn.relu6 and "
                        "padding='symmetric'. " + _BATCH_NORM)
mobilenet_v2 = functools.partial(MobileNetV2, stem=32, blocks=MOBILENET_V2, last_features=1280,
                                 dropout_rate=0.2, act=jax.nn.relu6)
mobilenet_v2.__doc__ = ("MobileNetV2 1.0-224 (Table 2), ReLU6; torchvision's mobilenet_v2 and "
                        "timm's mobilenetv2_100 with padding='symmetric'. " + _BATCH_NORM)


def _pair(conv: str, norm: str, layer: str) -> dict[str, str]:
  """A conv layer and its norm -> their reference prefixes."""
  return {layer: conv, f"{layer}_norm": norm}


def _timm_v1_names(module: MobileNetV1, layers: Sequence[str]) -> dict[str, str]:
  del layers
  names = {**_pair("conv_stem", "bn1", "stem/conv"), "classifier": "classifier"}
  for k, (_, _, stage, i) in enumerate(module.layout(), start=1):
    block = f"blocks.{stage}.{i}"
    names.update(_pair(f"{block}.conv_dw", f"{block}.bn1", f"block{k}/depthwise"))
    names.update(_pair(f"{block}.conv_pw", f"{block}.bn2", f"block{k}/pointwise"))
  return names


def _timm_v2_names(module: MobileNetV2, layers: Sequence[str]) -> dict[str, str]:
  del layers
  names = {**_pair("conv_stem", "bn1", "stem/conv"), **_pair("conv_head", "bn2", "last/conv"),
           "classifier": "classifier"}
  for k, (t, _, _, row, i) in enumerate(module.layout(), start=1):
    block = f"blocks.{row}.{i}"
    # timm's first block (t = 1) is a DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2.
    convs = ((("depthwise", "conv_dw"), ("project", "conv_pw")) if t == 1 else
             (("expand", "conv_pw"), ("depthwise", "conv_dw"), ("project", "conv_pwl")))
    for j, (layer, conv) in enumerate(convs, start=1):
      names.update(_pair(f"{block}.{conv}", f"{block}.bn{j}", f"block{k}/{layer}"))
  return names


def _torchvision_v2_names(module: MobileNetV2, layers: Sequence[str]) -> dict[str, str]:
  del layers
  plan = module.layout()
  last = f"features.{len(plan) + 1}"
  names = {**_pair("features.0.0", "features.0.1", "stem/conv"),
           **_pair(f"{last}.0", f"{last}.1", "last/conv"), "classifier": "classifier.1"}
  for k, (t, *_) in enumerate(plan, start=1):
    block = f"features.{k}.conv"
    # conv.i = Conv2dNormActivation (conv.i.0, conv.i.1) for the expand and depthwise convs; the
    # linear projection is a bare conv and BatchNorm, conv.(i) and conv.(i + 1).
    convs = ("depthwise",) if t == 1 else ("expand", "depthwise")
    for i, layer in enumerate(convs):
      names.update(_pair(f"{block}.{i}.0", f"{block}.{i}.1", f"block{k}/{layer}"))
    names.update(_pair(f"{block}.{len(convs)}", f"{block}.{len(convs) + 1}", f"block{k}/project"))
  return names


registry.register(
    "mobilenet_v1", mobilenet_v1, family="mobilenet",
    source="Howard et al. 2017, MobileNets, Table 1 and Table 8 (1.0 MobileNet-224); timm's "
           "mobilenetv1_100: 4,231,976 params, 568,740,352 MACs",
    figures={"macs": 569_000_000, "params": 4_200_000},
    references=[registry.Reference(
        library="timm", name="mobilenetv1_100", classifier="classifier.weight",
        names=_timm_v1_names, kwargs={"padding": "symmetric", "act": jax.nn.relu6})])
registry.register(
    "mobilenet_v2", mobilenet_v2, family="mobilenet",
    source="Sandler et al. 2018, MobileNetV2, Table 4. The TF-slim release lists 300M MACs and 3.47M "
           "params (conv and FC weights alone: 3,470,760); torchvision's exact count, BatchNorm scale "
           "and bias included, is 3,504,872",
    figures={"macs": 300_000_000, "params": 3_400_000},
    references=[
        registry.Reference(library="torchvision", name="mobilenet_v2",
                           classifier="classifier.1.weight", names=_torchvision_v2_names,
                           kwargs={"padding": "symmetric"}),
        registry.Reference(library="timm", name="mobilenetv2_100", classifier="classifier.weight",
                           names=_timm_v2_names, kwargs={"padding": "symmetric"})])
