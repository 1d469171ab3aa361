"""MobileNetV3 and EfficientNet (V1 and V2), built from timm's efficientnet-builder vocabulary.

An architecture is a table of stages, each a tuple of :class:`BlockDef` rows (timm's block strings:
``"ir_r3_k5_s2_e3_c40_se0.25_nre"`` is ``BlockDef(3, 5, 2, 3, 40, 0.25, act=nn.relu)``). Widths
scale by ``channel_multiplier`` (rounded to multiples of 8 as timm's ``round_channels``) and depths
by ``depth_multiplier`` (timm's per-stage rule), so timm's reduced models have pwconv twins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks import DenseConv, FusedMBConv, MBConv, hard_sigmoid, hard_swish
from pwconv.blocks.base import Activation
from pwconv.blocks.mbconv import SE_BASES, Rounding
from pwconv.layers import PointwiseConv
from pwconv.models import registry
from pwconv.models.network import Network, kw_only, make_divisible
from pwconv.models.smallnet import SmallNet, register_block


class BlockDef(NamedTuple):
  """One row of an architecture table: ``repeats`` blocks of one kind.

  Attributes:
    repeats: r, the row's blocks before depth scaling.
    kernel_size: k, of the depthwise (MBConv) or dense (FusedMBConv) conv.
    stride: s; only a stage's first block keeps it (the others have stride 1).
    expansion: e, the hidden width over the input (1: timm's "ds" / "cn" blocks).
    features: c, output channels before width scaling.
    se_ratio: se, squeeze-excite ratio (relative to what the network's ``se_from`` says), or None.
    act: the row's activation (timm's "nre": ``nn.relu``); None: the network's ``act``.
    fused: a :class:`~pwconv.FusedMBConv` row (timm's "er", and "cn" for e = 1), else
      :class:`~pwconv.MBConv` ("ir", and "ds" for e = 1).
    skip: the identity shortcut where stride is 1 and the channels match; False: timm's "noskip"
      (and its "cn" rows without "skip").
  """
  repeats: int
  kernel_size: int
  stride: int
  expansion: float
  features: int
  se_ratio: float | None = None
  act: Activation | None = None
  fused: bool = False
  skip: bool = True


class Planned(NamedTuple):
  """One block as a network builds it: its name, timm's (stage, index), row and scaled settings."""
  name: str
  stage: int
  index: int
  row: BlockDef
  features: int
  stride: int
  drop_path_rate: float


def scale_depth(repeats: Sequence[int], multiplier: float) -> list[int]:
  """timm's per-stage depth scaling: the stage's total repeats times ``multiplier``, rounded up,
  shared out over its rows from the last one back (each keeps at least 1).

  ``scale_depth([1, 1, 2], 0.5) == [1, 1, 1]``; ``scale_depth([4], 0.9) == [4]``.
  """
  total = sum(repeats)
  scaled = math.ceil(total * multiplier)
  out = []
  for r in reversed(repeats):
    share = max(1, round(r / total * scaled))
    out.append(share)
    total -= r
    scaled -= share
  return out[::-1]


def _check_row(owner: str, i: int, row: Any) -> None:
  where = f"{owner}: stages[{i}]"
  if not isinstance(row, BlockDef):
    raise TypeError(f"{where} must hold BlockDef rows, got {type(row).__name__} {row!r}")
  for name in ("repeats", "kernel_size", "features"):
    validate.positive_int(where, name, getattr(row, name))
  if row.stride not in (1, 2):
    raise ValueError(f"{where}: stride must be 1 or 2, got {row.stride!r}")
  validate.number(where, "expansion", row.expansion, low=0, low_open=True)
  if row.se_ratio is not None:
    validate.number(where, "se_ratio", row.se_ratio, low=0, high=1, low_open=True)
  if row.act is not None and not callable(row.act):
    raise TypeError(f"{where}: act must be a callable or None, got {row.act!r}")
  validate.boolean(where, "fused", row.fused)
  validate.boolean(where, "skip", row.skip)


class EfficientNet(Network):
  """EfficientNet (Tan & Le 2019) and EfficientNetV2 (2021), as timm builds them.

  Stem conv 3x3/2 + norm + act -> stages of :class:`~pwconv.MBConv` / :class:`~pwconv.FusedMBConv`
  blocks -> conv 1x1 head + norm + act -> global average pool -> dropout -> FC:
  x (N, H, W, 3) -> (N, num_classes) logits.

  Attributes:
    num_classes: outputs of the FC layer.
    channel_multiplier: width scaling; every width c becomes ``make_divisible(c·m, 8,
      round_limit=round_limit)`` (stem and head included), as timm's ``round_channels``.
    depth_multiplier: depth scaling, per stage (:func:`scale_depth`).
    drop_path_rate: stochastic depth, timm's linear schedule: block i of n (counted from 0 over the
      whole network) drops its residual branch with probability rate·i/n while training.
    dropout_rate: dropout before the FC layer.
    stem_features: channels of the stem conv before scaling.
    stages: the architecture table, a tuple of stages, each a tuple of :class:`BlockDef` rows.
    head_features: channels of the 1x1 head conv before scaling.
    round_limit: the ``make_divisible`` round-down limit of the width scaling (0.9;
      EfficientNetV2-B* use 0: always to the nearest multiple of 8).
    se_from, se_round, se_act, se_gate: how every block sizes and runs its squeeze-excite
      (:class:`~pwconv.blocks.ExpandedBlock`): EfficientNet's from the block input, rounded with
      ``round``, the block's activation, sigmoid gate.

  The hidden width of a block with input Cin is ``make_divisible(Cin·e)``, as timm's.
  """
  num_classes: int = 1000
  channel_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  drop_path_rate: float = 0.0
  dropout_rate: float = kw_only(default=0.0)
  stem_features: int = kw_only()
  stages: Sequence[Sequence[BlockDef]] = kw_only()
  head_features: int = kw_only()
  round_limit: float = kw_only(default=0.9)
  se_from: str = kw_only(default="input")
  se_round: Rounding = kw_only(default=round)
  se_act: Activation | None = kw_only(default=None)
  se_gate: Activation = kw_only(default=nn.sigmoid)

  def __post_init__(self):
    owner = type(self).__name__
    for name in ("channel_multiplier", "depth_multiplier"):
      validate.number(owner, name, getattr(self, name), low=0, low_open=True)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    validate.number(owner, "round_limit", self.round_limit, low=0, high=1)
    validate.positive_int(owner, "stem_features", self.stem_features)
    validate.positive_int(owner, "head_features", self.head_features)
    validate.one_of(owner, "se_from", self.se_from, SE_BASES)
    for name in ("se_round", "se_gate"):
      if not callable(getattr(self, name)):
        raise TypeError(f"{owner}: {name} must be a callable, got {getattr(self, name)!r}")
    if self.se_act is not None and not callable(self.se_act):
      raise TypeError(f"{owner}: se_act must be a callable or None, got {self.se_act!r}")
    if not isinstance(self.stages, Sequence) or not self.stages:
      raise ValueError(f"{owner}: stages must be a non-empty tuple of stages, got {self.stages!r}")
    for i, stage in enumerate(self.stages):
      if not isinstance(stage, Sequence) or isinstance(stage, BlockDef) or not stage:
        raise ValueError(f"{owner}: stages[{i}] must be a non-empty tuple of BlockDef rows, got "
                         f"{stage!r}")
      for row in stage:
        _check_row(owner, i, row)
    super().__post_init__()

  def round_channels(self, channels: int) -> int:
    return make_divisible(channels * self.channel_multiplier, 8, round_limit=self.round_limit)

  def stem_width(self) -> int:
    return self.round_channels(self.stem_features)

  def head_width(self) -> int:
    return self.round_channels(self.head_features)

  def plan(self) -> list[Planned]:
    """Every block in order, after width and depth scaling, with its drop-path rate."""
    rows = []
    for s, stage in enumerate(self.stages):
      counts = scale_depth([row.repeats for row in stage], self.depth_multiplier)
      rows.append([row for row, n in zip(stage, counts) for _ in range(n)])
    total = sum(len(stage) for stage in rows)
    planned = []
    for s, stage in enumerate(rows):
      for j, row in enumerate(stage):
        planned.append(Planned(f"stage{s + 1}_block{j + 1}", s, j, row,
                               self.round_channels(row.features), row.stride if j == 0 else 1,
                               self.drop_path_rate * len(planned) / total))
    return planned

  def trunk(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Stem and stages: (N, H, W, 3) -> (N, H/32, W/32, C)."""
    x = DenseConv(self.stem_width(), (3, 3), strides=(2, 2), **self.knobs(), name="stem")(
        x, train=train)
    for block in self.plan():
      row = block.row
      block_cls = FusedMBConv if row.fused else MBConv
      knobs = self.knobs(act=self.act if row.act is None else row.act)
      x = block_cls(block.features, row.expansion, (row.kernel_size,) * 2, (block.stride,) * 2,
                    round_hidden=make_divisible, se_ratio=row.se_ratio, se_from=self.se_from,
                    se_round=self.se_round, se_act=self.se_act, se_gate=self.se_gate,
                    residual=None if row.skip else False, drop_path_rate=block.drop_path_rate,
                    **knobs, name=block.name)(x, train=train)
    return x

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.trunk(x, train=train)
    x = DenseConv(self.head_width(), (1, 1), **self.knobs(), name="head")(x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


class MobileNetV3(EfficientNet):
  """MobileNetV3 (Howard et al. 2019), as timm builds it: :class:`EfficientNet`'s stem and stages,
  then the "efficient last stage": global average pool -> 1x1 conv with bias (no norm) -> act ->
  dropout -> FC.

  The squeeze-excite is MobileNetV3's: reduced width ``make_divisible(E·se_ratio)`` from the hidden
  width E, ReLU inside, hard-sigmoid gate. Below ``channel_multiplier`` 0.75 the stem keeps its 16
  channels (timm's ``fix_stem``); the head conv never scales.
  """
  se_from: str = kw_only(default="hidden")
  se_round: Rounding = kw_only(default=make_divisible)
  se_act: Activation | None = kw_only(default=nn.relu)
  se_gate: Activation = kw_only(default=hard_sigmoid)

  def stem_width(self) -> int:
    if self.channel_multiplier < 0.75:
      return self.stem_features
    return self.round_channels(self.stem_features)

  def head_width(self) -> int:
    return self.head_features

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = jnp.mean(self.trunk(x, train=train), axis=(1, 2), keepdims=True)
    use_bias = self.unnormed_bias()
    x = self.activate(PointwiseConv(self.head_width(), use_bias=use_bias, dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="head")(x))
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


_relu = nn.relu

# timm's _gen_mobilenet_v3 tables ("ds", "ir" and the final "cn" 1x1 rows); the paper's Tables 1, 2.
MOBILENET_V3_LARGE = (
    (BlockDef(1, 3, 1, 1, 16, act=_relu),),
    (BlockDef(1, 3, 2, 4, 24, act=_relu), BlockDef(1, 3, 1, 3, 24, act=_relu)),
    (BlockDef(3, 5, 2, 3, 40, 0.25, act=_relu),),
    (BlockDef(1, 3, 2, 6, 80), BlockDef(1, 3, 1, 2.5, 80), BlockDef(2, 3, 1, 2.3, 80)),
    (BlockDef(2, 3, 1, 6, 112, 0.25),),
    (BlockDef(3, 5, 2, 6, 160, 0.25),),
    (BlockDef(1, 1, 1, 1, 960, fused=True, skip=False),),
)
MOBILENET_V3_SMALL = (
    (BlockDef(1, 3, 2, 1, 16, 0.25, act=_relu),),
    (BlockDef(1, 3, 2, 4.5, 24, act=_relu), BlockDef(1, 3, 1, 3.67, 24, act=_relu)),
    (BlockDef(1, 5, 2, 4, 40, 0.25), BlockDef(2, 5, 1, 6, 40, 0.25)),
    (BlockDef(2, 5, 1, 3, 48, 0.25),),
    (BlockDef(3, 5, 2, 6, 96, 0.25),),
    (BlockDef(1, 1, 1, 1, 576, fused=True, skip=False),),
)
# Tan & Le 2019, Table 1 (MBConv1 is the "ds" row, t = 1).
EFFICIENTNET_B0 = (
    (BlockDef(1, 3, 1, 1, 16, 0.25),),
    (BlockDef(2, 3, 2, 6, 24, 0.25),),
    (BlockDef(2, 5, 2, 6, 40, 0.25),),
    (BlockDef(3, 3, 2, 6, 80, 0.25),),
    (BlockDef(3, 5, 1, 6, 112, 0.25),),
    (BlockDef(4, 5, 2, 6, 192, 0.25),),
    (BlockDef(1, 3, 1, 6, 320, 0.25),),
)
# Tan & Le 2021, Table 4 (EfficientNetV2-S): Fused-MBConv1 (one 3x3 conv with a shortcut), two
# Fused-MBConv4 stages, then MBConv + SE.
EFFICIENTNET_V2_S = (
    (BlockDef(2, 3, 1, 1, 24, fused=True),),
    (BlockDef(4, 3, 2, 4, 48, fused=True),),
    (BlockDef(4, 3, 2, 4, 64, fused=True),),
    (BlockDef(6, 3, 2, 4, 128, 0.25),),
    (BlockDef(9, 3, 1, 6, 160, 0.25),),
    (BlockDef(15, 3, 2, 6, 256, 0.25),),
)
# The official EfficientNetV2-B0 base (google/automl efficientnetv2 effnetv2_configs).
EFFICIENTNET_V2_BASE = (
    (BlockDef(1, 3, 1, 1, 16, fused=True),),
    (BlockDef(2, 3, 2, 4, 32, fused=True),),
    (BlockDef(2, 3, 2, 4, 48, fused=True),),
    (BlockDef(3, 3, 2, 4, 96, 0.25),),
    (BlockDef(5, 3, 1, 6, 112, 0.25),),
    (BlockDef(8, 3, 2, 6, 192, 0.25),),
)

mobilenet_v3_large = functools.partial(MobileNetV3, stem_features=16, stages=MOBILENET_V3_LARGE,
                                       head_features=1280, act=hard_swish, dropout_rate=0.2)
mobilenet_v3_small = functools.partial(MobileNetV3, stem_features=16, stages=MOBILENET_V3_SMALL,
                                       head_features=1024, act=hard_swish, dropout_rate=0.2)
efficientnet_b0 = functools.partial(EfficientNet, stem_features=32, stages=EFFICIENTNET_B0,
                                    head_features=1280, act=nn.swish, dropout_rate=0.2)
efficientnet_v2_rw_t = functools.partial(EfficientNet, channel_multiplier=0.8, depth_multiplier=0.9,
                                         stem_features=24, stages=EFFICIENTNET_V2_S,
                                         head_features=1280, act=nn.swish)
efficientnet_v2_b0 = functools.partial(EfficientNet, stem_features=32, stages=EFFICIENTNET_V2_BASE,
                                       head_features=1280, round_limit=0.0, act=nn.swish)

# pwconv layer name -> timm's, per block kind: (fused, expanded).
_TIMM_LAYERS = {
    (False, True): {"expand": "conv_pw", "expand_norm": "bn1", "depthwise": "conv_dw",
                    "depthwise_norm": "bn2", "project": "conv_pwl", "project_norm": "bn3"},
    (False, False): {"depthwise": "conv_dw", "depthwise_norm": "bn1", "project": "conv_pw",
                     "project_norm": "bn2"},
    (True, True): {"expand": "conv_exp", "expand_norm": "bn1", "project": "conv_pwl",
                   "project_norm": "bn2"},
    (True, False): {"conv": "conv", "conv_norm": "bn1"},
}
_TIMM_SE = {"se/reduce": "se.conv_reduce", "se/expand": "se.conv_expand"}


def timm_names(module: EfficientNet, layer_paths: Sequence[str]) -> dict[str, str]:
  """pwconv layer path -> timm state-dict prefix, for :class:`EfficientNet` and
  :class:`MobileNetV3` ("stage2_block1/expand" -> "blocks.1.0.conv_pw")."""
  del layer_paths  # the plan names every layer
  names = {"stem/conv": "conv_stem", "stem/conv_norm": "bn1", "classifier": "classifier"}
  if isinstance(module, MobileNetV3):
    names["head"] = "conv_head"
  else:
    names.update({"head/conv": "conv_head", "head/conv_norm": "bn2"})
  for block in module.plan():
    prefix = f"blocks.{block.stage}.{block.index}"
    layers = dict(_TIMM_LAYERS[block.row.fused, block.row.expansion != 1])
    if block.row.se_ratio is not None:
      layers.update(_TIMM_SE)
    names.update({f"{block.name}/{ours}": f"{prefix}.{theirs}" for ours, theirs in layers.items()})
  return names


def _timm(name: str, **kwargs: Any) -> registry.Reference:
  return registry.Reference(library="timm", name=name, classifier="classifier.weight",
                            names=timm_names, kwargs={"padding": "symmetric", **kwargs})


registry.register(
    "mobilenet_v3_large", mobilenet_v3_large, family="efficientnet",
    source="Howard et al. 2019, Searching for MobileNetV3, Table 3 (Large 1.0: 219M MAdds, 5.4M "
           "params). timm's mobilenetv3_large_100 (and torchvision's) counts 216,589,760 MACs and "
           "5,483,032 params, BatchNorm included: the paper truncates the params, and its 219M is "
           "1.1% above the count of the released network",
    figures={"macs": 219_000_000, "params": 5_400_000},
    references=[_timm("mobilenetv3_large_100")])
registry.register(
    "mobilenet_v3_small", mobilenet_v3_small, family="efficientnet",
    source="Howard et al. 2019, Searching for MobileNetV3, Table 4 (Small 1.0: 56M MAdds, 2.5M "
           "params; the paper truncates: timm counts 56,510,400 MACs and 2,542,856 params)",
    figures={"macs": 56_000_000, "params": 2_500_000},
    references=[_timm("mobilenetv3_small_100")])
registry.register(
    "efficientnet_b0", efficientnet_b0, family="efficientnet",
    source="Tan & Le 2019, EfficientNet, Table 2 (B0: 5.3M params, 0.39B FLOPs, counted as "
           "multiply-adds); timm's efficientnet_b0 (PyTorch padding, BatchNorm eps 1e-5)",
    figures={"macs": 390_000_000, "params": 5_300_000},
    references=[_timm("efficientnet_b0")])
registry.register(
    "efficientnet_v2_rw_t", efficientnet_v2_rw_t, family="efficientnet",
    source="timm's efficientnetv2_rw_t: EfficientNetV2-S (Tan & Le 2021, Table 4) at width 0.8 and "
           "depth 0.9, a timm variant not in the paper; timm's model card: 13.6M params, 1.9 GMACs "
           "at 224x224",
    figures={"macs": 1_900_000_000, "params": 13_600_000},
    references=[_timm("efficientnetv2_rw_t")])
registry.register(
    "efficientnet_v2_b0", efficientnet_v2_b0, family="efficientnet",
    source="Tan & Le 2021, EfficientNetV2-B0 (the official base network, which the paper gives no "
           "figures for); timm's tf_efficientnetv2_b0 holds the TensorFlow weights: TF SAME "
           "padding, BatchNorm eps 1e-3",
    references=[_timm("tf_efficientnetv2_b0", padding="SAME",
                      norm=functools.partial(nn.BatchNorm, momentum=0.99, epsilon=1e-3))])


def _mbconv(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
            name: str) -> nn.Module:
  del in_features
  return MBConv(features, net.expansion, net.kernel_size, strides, se_ratio=0.25,
                drop_path_rate=net.drop_path(name), **net.knobs(), name=name)


def _fused_mbconv(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
                  name: str) -> nn.Module:
  del in_features
  return FusedMBConv(features, net.expansion, net.kernel_size, strides,
                     drop_path_rate=net.drop_path(name), **net.knobs(), name=name)


register_block(
    "mbconv", _mbconv, downsample="stride",
    summary="MBConv(F, expansion, kernel_size, se_ratio=0.25): EfficientNet's block, SE sized from "
            "the block input")
register_block(
    "fused_mbconv", _fused_mbconv, downsample="stride",
    summary="FusedMBConv(F, expansion, kernel_size): EfficientNetV2's dense kxk expand, linear "
            "1x1")
