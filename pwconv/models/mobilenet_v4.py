"""MobileNetV4 (Qin et al. 2024): conv-bn-act layers and Universal Inverted Bottlenecks, and the UIB
design of SmallNet."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks import DenseConv, UniversalInvertedBottleneck
from pwconv.models import registry
from pwconv.models.network import Network, kw_only, make_divisible
from pwconv.models.smallnet import SmallNet, register_block


class ConvLayer(NamedTuple):
  """A kxk conv -> norm -> act layer (timm's "cn" block)."""
  kernel_size: int
  stride: int
  features: int


class UIBLayer(NamedTuple):
  """``repeats`` :class:`~pwconv.UniversalInvertedBottleneck` blocks (timm's "uir"); the stride is
  the first repeat's. ``start``/``middle``: depthwise kernel sizes, None where the paper has "-"."""
  start: int | None
  middle: int | None
  stride: int
  expansion: float
  features: int
  repeats: int = 1


# MNv4-Conv-S, one tuple per stage, as the reference implementations build it (TF Model Garden's
# MNV4ConvSmall block specs, timm's mobilenetv4_conv_small): stages 1 and 2 are a kxk/2 conv ->
# BN -> ReLU then a 1x1 conv -> BN -> ReLU, an activation after the 1x1 included.
MOBILENET_V4_CONV_SMALL = (
    (ConvLayer(3, 2, 32), ConvLayer(1, 1, 32)),  # 112x112 in
    (ConvLayer(3, 2, 96), ConvLayer(1, 1, 64)),  # 56x56 in
    (UIBLayer(5, 5, 2, 3, 96),  # 28x28 in; ExtraDW
     UIBLayer(None, 3, 1, 2, 96, repeats=4),  # IB
     UIBLayer(3, None, 1, 4, 96)),  # ConvNeXt-like
    (UIBLayer(3, 3, 2, 6, 128),  # 14x14 in; ExtraDW
     UIBLayer(5, 5, 1, 4, 128),  # ExtraDW
     UIBLayer(None, 5, 1, 4, 128),  # IB
     UIBLayer(None, 5, 1, 3, 128),  # IB
     UIBLayer(None, 3, 1, 4, 128, repeats=2)),  # IB
    (ConvLayer(1, 1, 960),),  # 7x7 in
)


class MobileNetV4(Network):
  """MobileNetV4's convolutional models: conv 3x3/2 stem, stages of conv-bn-act layers and UIBs,
  global average pool, 1x1 conv -> norm -> act on the pooled vector, FC.

  Attributes:
    num_classes: outputs of the FC layer.
    channel_multiplier: every layer has ``make_divisible(multiplier·c)`` channels (timm's
      ``channel_multiplier``); below 1 the stem keeps its width (timm's ``fix_stem``). The head conv
      keeps ``head_features``.
    stem: channels of the first (dense) conv 3x3/2.
    stages: one tuple of :class:`ConvLayer` and :class:`UIBLayer` rows per stage; a UIB's hidden
      width is ``make_divisible(Cin·expansion)``; it has a shortcut where its stride is 1 and
      Cin == F.
    head_features: channels of the 1x1 conv applied after the pool (with norm and act).
    layer_scale_init: LayerScale initial value of every UIB (the hybrid models: 1e-5); None: none.
    drop_path_rate: stochastic depth: block i of the n blocks (counted from 0, conv layers
      included, the stem not) drops its residual branch with probability rate·i/n, timm's linear
      schedule (only UIBs with a shortcut have one to drop).
    dropout_rate: dropout before the FC layer.
  """
  num_classes: int = 1000
  channel_multiplier: float = 1.0
  stem: int = kw_only()
  stages: Sequence[Sequence[ConvLayer | UIBLayer]] = kw_only()
  head_features: int = kw_only()
  layer_scale_init: float | None = kw_only(default=None)
  drop_path_rate: float = kw_only(default=0.0)
  dropout_rate: float = kw_only(default=0.0)

  def __post_init__(self):
    owner = type(self).__name__
    validate.number(owner, "channel_multiplier", self.channel_multiplier, low=0, low_open=True)
    validate.positive_int(owner, "stem", self.stem)
    validate.positive_int(owner, "head_features", self.head_features)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    if self.layer_scale_init is not None:
      validate.number(owner, "layer_scale_init", self.layer_scale_init)
    for stage in validate.sequence(owner, "stages", self.stages, what="stages"):
      for row in validate.sequence(owner, "stages", stage, what="ConvLayer/UIBLayer rows"):
        if not isinstance(row, (ConvLayer, UIBLayer)):
          raise TypeError(f"{owner}: stages must hold ConvLayer and UIBLayer rows, got {row!r}")
    super().__post_init__()

  def layers(self) -> list[tuple[str, ConvLayer | UIBLayer, int]]:
    """(name, row, stride) of every block, repeats expanded: names "stage{s}_block{j}", from 1."""
    out = []
    for s, stage in enumerate(self.stages):
      j = 0
      for row in stage:
        for r in range(row.repeats if isinstance(row, UIBLayer) else 1):
          j += 1
          out.append((f"stage{s + 1}_block{j}", row, row.stride if r == 0 else 1))
    return out

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    m = self.channel_multiplier
    stem = self.stem if m < 1 else make_divisible(self.stem * m)
    x = DenseConv(stem, (3, 3), strides=(2, 2), **self.knobs(), name="stem")(x, train=train)
    layers = self.layers()
    for i, (name, row, stride) in enumerate(layers):
      features = make_divisible(row.features * m)
      if isinstance(row, ConvLayer):
        x = DenseConv(features, (row.kernel_size, row.kernel_size), strides=(stride, stride),
                      **self.knobs(), name=name)(x, train=train)
        continue
      x = UniversalInvertedBottleneck(
          features, hidden_features=make_divisible(x.shape[-1] * row.expansion),
          start_kernel_size=row.start, middle_kernel_size=row.middle, strides=(stride, stride),
          layer_scale_init=self.layer_scale_init,
          drop_path_rate=self.drop_path_rate * i / len(layers),
          **self.knobs(), name=name)(x, train=train)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = DenseConv(self.head_features, (1, 1), **self.knobs(), name="head")(x, train=train)
    # The pooled map is 1x1, so classify's average pool passes it through unchanged.
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


# pwconv layer (after the block name) -> timm's module.
_TIMM_LAYERS = {"conv": "conv", "conv_norm": "bn1", "start_depthwise": "dw_start.conv",
                "start_depthwise_norm": "dw_start.bn", "expand": "pw_exp.conv",
                "expand_norm": "pw_exp.bn", "middle_depthwise": "dw_mid.conv",
                "middle_depthwise_norm": "dw_mid.bn", "project": "pw_proj.conv",
                "project_norm": "pw_proj.bn", "layer_scale": "layer_scale"}
_TIMM_TOP = {"stem/conv": "conv_stem", "stem/conv_norm": "bn1", "head/conv": "conv_head",
             "head/conv_norm": "norm_head", "classifier": "classifier"}


def _timm_names(module: nn.Module, paths: Sequence[str]) -> Mapping[str, str]:
  """pwconv layer paths -> timm's MobileNetV3-class names ("stage3_block2/expand" ->
  "blocks.2.1.pw_exp.conv")."""
  del module
  names = {}
  for path in paths:
    block = re.fullmatch(r"stage(\d+)_block(\d+)/(\w+)", path)
    if block and block.group(3) in _TIMM_LAYERS:
      stage, index, layer = block.groups()
      names[path] = f"blocks.{int(stage) - 1}.{int(index) - 1}.{_TIMM_LAYERS[layer]}"
    elif path in _TIMM_TOP:
      names[path] = _TIMM_TOP[path]
  return names


mobilenet_v4_conv_small = functools.partial(MobileNetV4, stem=32, stages=MOBILENET_V4_CONV_SMALL,
                                            head_features=1280)

registry.register(
    "mobilenet_v4_conv_small", mobilenet_v4_conv_small, family="mobilenet_v4",
    source="Qin et al. 2024, MobileNetV4, MNv4-Conv-S (ImageNet-1k results: 0.2G MACs, 3.8M "
           "params); timm's mobilenetv4_conv_small is the same network: 3,774,024 params "
           "(BatchNorm scales and biases included), 186,005,568 MACs. BatchNorm eps 1e-5, "
           "symmetric padding for timm's weights",
    figures={"macs": 200_000_000, "params": 3_800_000},
    references=[registry.Reference(library="timm", name="mobilenetv4_conv_small",
                                   classifier="classifier.weight", names=_timm_names,
                                   kwargs={"padding": "symmetric"})])


def _uib(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
         name: str) -> UniversalInvertedBottleneck:
  del in_features
  kernel_size = validate.int_pair(type(net).__name__, "kernel_size", net.kernel_size)
  return UniversalInvertedBottleneck(features, net.expansion, start_kernel_size=kernel_size,
                                     middle_kernel_size=kernel_size, strides=strides,
                                     drop_path_rate=net.drop_path(name), **net.knobs(), name=name)


register_block(
    "uib", _uib, downsample="stride",
    summary="UniversalInvertedBottleneck(F, expansion) as ExtraDW: kxk depthwise -> 1x1 expand -> "
            "kxk depthwise -> 1x1 project (MobileNetV4)")
