"""The small classifier the runner trains side by side, and the registry of the designs it can hold.

Adding a design is one :func:`register_block` call: a function that builds the design's block for F
features, how the design changes stage (a stride-2 block, or a max pool before the stage, as its
paper does), and the widths it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks import (Bottleneck, DenseConv, DepthwiseSeparable, FireModule, InceptionModule,
                           InvertedResidual, MLPConv, ShuffleUnit)
from pwconv.models import registry
from pwconv.models.network import Network, drop_path_rates

# (net, features, in_features, strides, name) -> the block.
MakeBlock = Callable[["SmallNet", int, int, tuple[int, int], str], nn.Module]


@dataclasses.dataclass(frozen=True)
class SmallNetBlock:
  """How :class:`SmallNet` builds one design's blocks.

  Attributes:
    name: the variant name (``config.variants`` of the runner).
    make: ``make(net, features, in_features, strides, name)`` -> the block mapping ``in_features`` to
      ``features`` channels at ``strides``; ``net``'s fields (``kernel_size``, ``reduction``, ...) and
      knobs (``net.knobs()``) are the design's settings.
    downsample: how a stage after the first halves H and W: "stride" (its first block has stride 2:
      MobileNet, ShuffleNet) or "pool" (a 2x2/2 max pool before it: VGG, NiN, SqueezeNet, GoogLeNet).
    min_width: the smallest ``width`` the design can be built at.
    check: raises ValueError for SmallNet settings this design cannot be built with (or None).
    summary: one line for SmallNet's docstring and ``--help`` texts.
  """
  name: str
  make: MakeBlock
  downsample: str = "pool"
  min_width: int = 1
  check: Callable[["SmallNet"], None] | None = None
  summary: str = ""


SMALLNET_BLOCKS: dict[str, SmallNetBlock] = {}


def register_block(name: str, make: MakeBlock, *, downsample: str = "pool", min_width: int = 1,
                   check: Callable[[SmallNet], None] | None = None, summary: str = "") -> SmallNetBlock:
  """Adds a design to SmallNet (and ``smallnet_<name>`` to the model registry)."""
  if name in SMALLNET_BLOCKS:
    raise ValueError(f"SmallNet: block {name!r} is registered already")
  validate.one_of("SmallNet", "downsample", downsample, ("stride", "pool"))
  spec = SmallNetBlock(name, make, downsample, min_width, check, summary)
  SMALLNET_BLOCKS[name] = spec
  registry.register(f"smallnet_{name}", lambda **kwargs: SmallNet(block=name, **kwargs),
                    family="smallnet", resolution=32,
                    source=f"pwconv's SmallNet with {name} blocks: {summary}")
  return spec


class SmallNet(Network):
  """The small classifier the runner trains side by side: one topology, only the block differs.

  stem (dense kxk conv to ``width`` + norm + act) -> ``stages`` stages of ``depth`` blocks with
  width·2^i features -> global average pool -> Dense(num_classes). Each stage after the first halves H
  and W the way the design's paper does (:attr:`SmallNetBlock.downsample`): a stride-2 first block, or a
  2x2/2 max pool before the stage (padded by the ``padding`` convention: "SAME" rounds odd sizes up,
  "symmetric" down); so no classic design needs a projection shortcut (GhostNet's and ConvNeXt's
  designs change width with their own shortcut or downsample layer, as their papers do). For inputs
  of 8x8 to 32x32 (any size works). The designs are in :data:`SMALLNET_BLOCKS`.

  Attributes:
    block: a name in :data:`SMALLNET_BLOCKS` or a :class:`SmallNetBlock`.
    num_classes: outputs of the final Dense layer.
    width: channels of the stem and the first stage.
    stages: number of stages; each after the first halves H and W and doubles the channels.
    depth: blocks per stage.
    kernel_size: (kh, kw) of the stem and of the kxk conv of the designs that have one to choose
      (fire, inception and shuffle keep their own 3x3 / 5x5).
    reduction: bottleneck width over F for bottleneck, fire and shuffle, in (0, 1].
    expansion: the hidden width over the input of the expanding designs (inverted_residual's t;
      mbconv, fused_mbconv, uib, ghost and convnext use it too).
    groups: shuffle's g; divides width.
    pointwise_layers: mlpconv's 1x1 + act layers after the kxk conv (>= 0).
    drop_path_rate: stochastic depth of the designs with a residual branch that can be dropped
      (mbconv, fused_mbconv, uib, convnext, repvgg), rising linearly from 0 at the first block to
      this rate at the last (:meth:`drop_path`); other designs have no such branch.
  """
  block: str | SmallNetBlock = "dense"
  num_classes: int = 10
  width: int = 32
  stages: int = 2
  depth: int = 2
  kernel_size: Sequence[int] = (3, 3)
  reduction: float = 0.25
  expansion: int = 4
  groups: int = 2
  pointwise_layers: int = 1
  drop_path_rate: float = 0.0

  def __post_init__(self):
    owner = type(self).__name__
    spec = self.spec
    for name in ("width", "stages", "depth", "expansion", "groups"):
      validate.positive_int(owner, name, getattr(self, name))
    validate.positive_int(owner, "pointwise_layers", self.pointwise_layers, minimum=0)
    validate.int_pair(owner, "kernel_size", self.kernel_size)
    validate.number(owner, "reduction", self.reduction, low=0, high=1, low_open=True)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    if self.width < spec.min_width:
      raise ValueError(f"{owner}: width must be >= {spec.min_width} for block {spec.name!r}, got "
                       f"{self.width}")
    if spec.check is not None:
      spec.check(self)
    super().__post_init__()

  def drop_path(self, name: str) -> float:
    """The drop-path rate of the block called ``name`` ("stage<i>_block<j>", as :meth:`__call__`
    names them): block k of the network's n gets drop_path_rate·k / (n - 1)."""
    stage, block = (int(n) for n in name.removeprefix("stage").split("_block"))
    rates = drop_path_rates(self.drop_path_rate, self.stages * self.depth)
    return rates[(stage - 1) * self.depth + block - 1]

  @property
  def spec(self) -> SmallNetBlock:
    if isinstance(self.block, SmallNetBlock):
      return self.block
    validate.one_of(type(self).__name__, "block", self.block, tuple(SMALLNET_BLOCKS))
    return SMALLNET_BLOCKS[self.block]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    spec = self.spec
    kernel_size = validate.int_pair(type(self).__name__, "kernel_size", self.kernel_size)
    x = DenseConv(self.width, kernel_size, **self.knobs(), name="stem")(x, train=train)
    for i in range(self.stages):
      for j in range(self.depth):
        strides = (1, 1)
        if i > 0 and j == 0:
          if spec.downsample == "stride":
            strides = (2, 2)
          else:
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=self.pad((2, 2)))
        x = spec.make(self, self.width * 2**i, x.shape[-1], strides,
                      f"stage{i + 1}_block{j + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


def _kernel_size(net: SmallNet) -> tuple[int, int]:
  return validate.int_pair(type(net).__name__, "kernel_size", net.kernel_size)


def _reduced(net: SmallNet, features: int) -> int:
  return max(1, int(features * net.reduction))


def _check_shuffle(net: SmallNet) -> None:
  if net.width % net.groups or int(net.width * net.reduction) < net.groups:
    raise ValueError(f"SmallNet: groups must divide width={net.width} and be at most "
                     f"int(width·reduction)={int(net.width * net.reduction)} for block 'shuffle', "
                     f"got {net.groups}")


def _inception(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
               name: str) -> nn.Module:
  del in_features, strides
  f1x1, f5x5 = features // 4, features // 8
  return InceptionModule(f1x1, f1x1, features - f1x1 - 2 * f5x5, f5x5, f5x5, f5x5, **net.knobs(),
                         name=name)


register_block(
    "dense", lambda net, f, cin, s, name: DenseConv(f, _kernel_size(net), s, **net.knobs(), name=name),
    summary="DenseConv(F, kernel_size): the kxk conv every design stands in for")
register_block(
    "bottleneck", lambda net, f, cin, s, name: Bottleneck(
        f, _reduced(net, f), _kernel_size(net), s, expand=False, residual=False, **net.knobs(),
        name=name),
    summary="Bottleneck(F, F·reduction, kernel_size, expand=False): the Inception reduction, 1x1 "
            "to F·reduction then kxk to F")
register_block(
    "separable", lambda net, f, cin, s, name: DepthwiseSeparable(
        f, _kernel_size(net), s, **net.knobs(), name=name),
    downsample="stride", summary="DepthwiseSeparable(F, kernel_size): MobileNetV1's layer")
register_block(
    "inverted_residual", lambda net, f, cin, s, name: InvertedResidual(
        f, net.expansion, _kernel_size(net), s, **net.knobs(), name=name),
    downsample="stride", summary="InvertedResidual(F, expansion, kernel_size): MobileNetV2's block")
register_block(
    "fire", lambda net, f, cin, s, name: FireModule(
        _reduced(net, f), f // 2, f - f // 2, **net.knobs(), name=name),
    min_width=2, summary="FireModule(F·reduction, F // 2, F - F // 2): SqueezeNet's 1x1 + 3x3 expands")
register_block(
    "inception", _inception, min_width=8,
    summary="InceptionModule with GoogLeNet 3a's proportions: 1x1 F//4, 3x3 reduce F//4, 3x3 the "
            "rest, 5x5 reduce, 5x5 and pool proj F//8 each")
register_block(
    "shuffle", lambda net, f, cin, s, name: ShuffleUnit(
        f, net.groups, s, bottleneck_ratio=net.reduction, group_first=cin % net.groups == 0,
        **net.knobs(), name=name),
    downsample="stride", check=_check_shuffle,
    summary="ShuffleUnit(F, groups, bottleneck_ratio=reduction); stride-2 units concatenate the "
            "pooled input, as ShuffleNet")
register_block(
    "mlpconv", lambda net, f, cin, s, name: MLPConv(
        f, _kernel_size(net), s, pointwise_layers=net.pointwise_layers, **net.knobs(), name=name),
    summary="MLPConv(F, kernel_size, pointwise_layers): the dense net plus 1x1 + act layers (NiN)")
