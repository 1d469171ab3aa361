"""GhostNet (Han et al. 2020): Ghost bottlenecks between a 3x3/2 stem and a 1x1 conv, then a pooled
1x1 head conv; and SmallNet's ``ghost`` design."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks import DenseConv, GhostBottleneck
from pwconv.layers import PointwiseConv
from pwconv.models import registry
from pwconv.models.network import Network, kw_only, make_divisible
from pwconv.models.smallnet import SmallNet, register_block

# Table 1, as rows (kernel k, expansion size "#exp", output channels "#out", SE ratio, stride),
# grouped as the reference implementations group them (timm's ``blocks.0`` ... ``blocks.8``).
GHOSTNET = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)


class GhostNet(Network):
  """GhostNet: conv 3x3/2 -> Ghost bottlenecks -> conv 1x1 -> global average pool -> 1x1 head conv
  (with bias) -> act -> dropout -> FC.

  Attributes:
    num_classes: outputs of the FC layer.
    width: the width multiplier (timm's ``width``): the stem, every bottleneck's hidden and output
      channels, and the last 1x1 conv have ``make_divisible(width·c, 4)`` channels; SE widths are
      ``make_divisible(E·se_ratio, 4)`` of the hidden width E; the head conv keeps
      ``head_features``.
    stem: channels of the first (dense) conv 3x3/2.
    blocks: groups of (kernel, exp, out, se_ratio, stride) rows, one
      :class:`~pwconv.GhostBottleneck` each (se_ratio 0: no SE). The grouping only names the
      reference's weights (``blocks.{group}.{row}``); the last 1x1 conv has the last row's exp.
    head_features: channels of the 1x1 conv after the pool.
    dropout_rate: dropout before the FC layer (0.2, as the reference implementations).

  x: (N, H, W, 3) -> (N, num_classes) logits. GhostNet has no stochastic depth (timm's GhostNet
  takes no drop-path rate). Cost: the bottlenecks' (see :class:`~pwconv.GhostBottleneck`), plus
  the stem, Ho·Wo·C·exp for the last 1x1 conv, exp·head_features for the head conv and
  head_features·num_classes for the FC: 141,150,512 MACs and 5,182,508 params at 224x224 for
  ``ghostnet()`` (timm's ghostnet_100 exactly).
  """
  num_classes: int = 1000
  width: float = 1.0
  stem: int = kw_only()
  blocks: Sequence[Sequence[tuple[int, int, int, float, int]]] = kw_only()
  head_features: int = kw_only()
  dropout_rate: float = kw_only(default=0.0)

  def __post_init__(self):
    owner = type(self).__name__
    validate.number(owner, "width", self.width, low=0, low_open=True)
    validate.positive_int(owner, "stem", self.stem)
    validate.positive_int(owner, "head_features", self.head_features)
    for group in validate.sequence(owner, "blocks", self.blocks, what="groups of rows"):
      validate.sequence(owner, "blocks", group, what="(kernel, exp, out, se_ratio, stride) rows")
    for row in (row for group in self.blocks for row in group):
      if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != 5:
        raise ValueError(f"{owner}: each row of blocks must be (kernel, exp, out, se_ratio, "
                         f"stride), got {row!r}")
      validate.number(owner, "se_ratio", row[3], low=0, high=1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    w = self.width
    x = DenseConv(make_divisible(self.stem * w, 4), (3, 3), strides=(2, 2), **self.knobs(),
                  name="stem")(x, train=train)
    k = 0
    for group in self.blocks:
      for kernel, exp, out, se_ratio, stride in group:
        k += 1
        hidden = make_divisible(exp * w, 4)
        se = make_divisible(hidden * se_ratio, 4) if se_ratio else None
        x = GhostBottleneck(make_divisible(out * w, 4), hidden, kernel, stride, se_features=se,
                            **self.knobs(), name=f"block{k}")(x, train=train)
    last = make_divisible(self.blocks[-1][-1][1] * w, 4)
    x = DenseConv(last, (1, 1), **self.knobs(), name="last")(x, train=train)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = PointwiseConv(self.head_features, use_bias=self.unnormed_bias(),
                      dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    x = self.activate(x).reshape(x.shape[0], -1)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="classifier")(x)


ghostnet = functools.partial(GhostNet, stem=16, blocks=GHOSTNET, head_features=1280,
                             dropout_rate=0.2)

# A Ghost module's layers -> timm's GhostModule, and a bottleneck's -> timm's GhostBottleneck.
_TIMM_GHOST = {"primary": "primary_conv.0", "primary_norm": "primary_conv.1",
               "cheap": "cheap_operation.0", "cheap_norm": "cheap_operation.1"}
_TIMM_BOTTLENECK = {
    **{f"ghost{g}/{ours}": f"ghost{g}.{theirs}"
       for g in (1, 2) for ours, theirs in _TIMM_GHOST.items()},
    "depthwise": "conv_dw", "depthwise_norm": "bn_dw", "se/reduce": "se.conv_reduce",
    "se/expand": "se.conv_expand", "shortcut_depthwise": "shortcut.0",
    "shortcut_depthwise_norm": "shortcut.1", "shortcut": "shortcut.2",
    "shortcut_norm": "shortcut.3",
}


def _timm_names(module: GhostNet, layer_paths: Sequence[str]) -> Mapping[str, str]:
  """pwconv layer paths -> timm ``GhostNet`` state-dict prefixes (``block7/ghost1/cheap`` ->
  ``blocks.6.0.ghost1.cheap_operation.0``); the last 1x1 conv is timm's ``blocks.9.0``."""
  last = f"blocks.{len(module.blocks)}.0"
  names = {"stem/conv": "conv_stem", "stem/conv_norm": "bn1", "last/conv": f"{last}.conv",
           "last/conv_norm": f"{last}.bn1", "head": "conv_head", "classifier": "classifier"}
  blocks = [f"blocks.{i}.{j}" for i, group in enumerate(module.blocks) for j in range(len(group))]
  for path in layer_paths:
    block, _, rest = path.partition("/")
    if block.startswith("block") and rest in _TIMM_BOTTLENECK:
      names[path] = f"{blocks[int(block[len('block'):]) - 1]}.{_TIMM_BOTTLENECK[rest]}"
  return names


registry.register(
    "ghostnet", ghostnet, family="ghostnet",
    source="Han et al. 2020, GhostNet, Table 1 and Table 7 (GhostNet 1.0x: 141M FLOPs, counted as "
           "MACs, 5.2M params); timm's ghostnet_100 (same network): 5,182,508 params, 141,150,512 "
           "MACs. BatchNorm eps 1e-5 (PyTorch's)",
    figures={"macs": 141_000_000, "params": 5_200_000},
    references=[registry.Reference(library="timm", name="ghostnet_100",
                                   classifier="classifier.weight", names=_timm_names,
                                   kwargs={"padding": "symmetric"})])


def _smallnet_ghost(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
                    name: str) -> nn.Module:
  del in_features
  return GhostBottleneck(features, features * net.expansion, net.kernel_size, strides,
                         **net.knobs(), name=name)


register_block(
    "ghost", _smallnet_ghost, downsample="stride",
    summary="GhostBottleneck(F, F·expansion, kernel_size): GhostNet's block, two Ghost modules "
            "(a 1x1 makes half the channels, a cheap depthwise 3x3 the rest); stride-2 blocks have "
            "a depthwise kxk/2 + 1x1 shortcut")
