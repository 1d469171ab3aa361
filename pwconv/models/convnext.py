"""ConvNeXt (Liu et al. 2022): a patchify stem, stages of ConvNeXt blocks, a pool -> norm -> FC
head; and the SmallNet design ``convnext``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks import Block, ConvNeXtBlock, DenseConv, gelu, layer_norm
from pwconv.blocks.base import ModuleDef
from pwconv.models import registry
from pwconv.models.network import Network, drop_path_rates, kw_only
from pwconv.models.smallnet import register_block

Activation = Callable[[jax.Array], jax.Array]


class NormHead(Block):
  """ConvNeXt's head: global average pool -> norm (``pool_norm``) -> dropout -> FC (``fc``).

  Attributes:
    features: outputs of the FC layer (the classes).
    dropout_rate: dropout before the FC layer.

  Of the knobs, ``norm`` is the head's norm (over the pooled channels); the FC always has a bias.

  x: (N, H, W, C) -> (N, features). Cost: C·features MACs; params C·features + features, and 2·C
  for a LayerNorm. ``dense_equivalent`` is the head itself: it stands in for no kxk conv.
  """
  features: int
  dropout_rate: float = 0.0

  def __post_init__(self):
    validate.positive_int(type(self).__name__, "features", self.features)
    validate.number(type(self).__name__, "dropout_rate", self.dropout_rate, low=0, high=1,
                    high_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    x = self.normalize(jnp.mean(x, axis=(1, 2)), name="pool_norm", train=train)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)

  def dense_equivalent(self, in_features: int) -> NormHead:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self


class ConvNeXt(Network):
  """ConvNeXt (Liu et al. 2022), as timm builds it.

  patchify stem (a ``patch_size``² conv with stride ``patch_size``, unpadded, + norm) -> stages of
  :class:`~pwconv.blocks.ConvNeXtBlock`, each stage after the first opening with a norm + 2x2/2
  conv downsample layer (in its first block) -> global average pool -> norm -> FC
  (:class:`NormHead`).

  Attributes:
    num_classes: outputs of the FC layer.
    depths: blocks per stage (Tiny: 3, 3, 9, 3).
    dims: channels per stage (Tiny: 96, 192, 384, 768).
    kernel_size: (kh, kw) of every block's depthwise conv.
    expansion: a block's hidden width over its width (4).
    patch_size: the stem's kernel and stride (4).
    layer_scale_init: initial layer scale of each block (1e-6); None: none.
    drop_path_rate: stochastic depth of the last block; block k of K gets rate·k / (K - 1).
    dropout_rate: dropout before the FC layer.

  Of the knobs, ``norm`` defaults to :data:`~pwconv.blocks.layer_norm`, ``act`` to exact
  :func:`~pwconv.blocks.gelu` and ``use_bias`` to True, as the paper's; ``padding`` pads the
  depthwise convs (the stem and the downsample layers never pad). ConvNeXt-Tiny at 224x224:
  4,455,531,264 MACs, 28,589,128 params, as timm's ``convnext_tiny``.
  """
  num_classes: int = 1000
  depths: Sequence[int] = kw_only()
  dims: Sequence[int] = kw_only()
  kernel_size: Sequence[int] = kw_only(default=(7, 7))
  expansion: float = kw_only(default=4)
  patch_size: int = kw_only(default=4)
  layer_scale_init: float | None = kw_only(default=1e-6)
  drop_path_rate: float = kw_only(default=0.0)
  dropout_rate: float = kw_only(default=0.0)
  norm: ModuleDef | None = kw_only(default=layer_norm)
  act: Activation | None = kw_only(default=gelu)
  use_bias: bool | None = kw_only(default=True)

  def __post_init__(self):
    owner = type(self).__name__
    for name in ("depths", "dims"):
      validate.positive_ints(owner, name, getattr(self, name))
    if len(self.depths) != len(self.dims):
      raise ValueError(f"{owner}: depths and dims must have one entry per stage, got "
                       f"{len(self.depths)} depths and {len(self.dims)} dims")
    validate.positive_int(owner, "patch_size", self.patch_size)
    validate.int_pair(owner, "kernel_size", self.kernel_size)
    validate.number(owner, "expansion", self.expansion, low=0, low_open=True)
    if self.layer_scale_init is not None:
      validate.number(owner, "layer_scale_init", self.layer_scale_init)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    patch = (self.patch_size, self.patch_size)
    x = DenseConv(self.dims[0], patch, patch, **self.knobs(padding="VALID", act=None),
                  name="stem")(x, train=train)
    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.depths)))
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      for j in range(depth):
        stride = 2 if i > 0 and j == 0 else 1
        x = ConvNeXtBlock(dim, self.kernel_size, (stride, stride), self.expansion,
                          self.layer_scale_init, next(rates), **self.knobs(),
                          name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    head = NormHead(self.num_classes, self.dropout_rate, **self.knobs(), name="head")
    return head(x, train=train)


convnext_tiny = functools.partial(ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))

# pwconv layer -> timm's module: the stem, the head, and the layers of block j of stage i.
_TIMM_FIXED = {"stem/conv": "stem.0", "stem/conv_norm": "stem.1",
               "head/pool_norm": "head.norm", "head/fc": "head.fc"}
_TIMM_BLOCK = {"downsample_norm": "stages.{i}.downsample.0",
               "downsample": "stages.{i}.downsample.1",
               "depthwise": "stages.{i}.blocks.{j}.conv_dw",
               "depthwise_norm": "stages.{i}.blocks.{j}.norm",
               "expand": "stages.{i}.blocks.{j}.mlp.fc1",
               "project": "stages.{i}.blocks.{j}.mlp.fc2",
               "layer_scale": "stages.{i}.blocks.{j}"}


def timm_names(module: nn.Module, layer_paths: Sequence[str]) -> Mapping[str, str]:
  """pwconv layer path -> timm ConvNeXt state-dict prefix (``stage2_block1/downsample`` ->
  ``stages.1.downsample.1``, ``stage1_block3/expand`` -> ``stages.0.blocks.2.mlp.fc1``)."""
  del module
  names = {}
  for path in layer_paths:
    match = re.fullmatch(r"stage(\d+)_block(\d+)/(\w+)", path)
    if path in _TIMM_FIXED:
      names[path] = _TIMM_FIXED[path]
    elif match and match[3] in _TIMM_BLOCK:
      names[path] = _TIMM_BLOCK[match[3]].format(i=int(match[1]) - 1, j=int(match[2]) - 1)
  return names


registry.register(
    "convnext_tiny", convnext_tiny, family="convnext",
    source="Liu et al. 2022, A ConvNet for the 2020s, architecture table (Table 9): ConvNeXt-T "
           "4.5×10⁹ FLOPs (counted as multiply-adds, i.e. MACs) and 28.6×10⁶ params; timm's "
           "convnext_tiny: 4,455,531,264 MACs, 28,589,128 params",
    figures={"macs": 4_500_000_000, "params": 28_600_000},
    references=[registry.Reference(library="timm", name="convnext_tiny",
                                   classifier="head.fc.weight", names=timm_names,
                                   kwargs={"padding": "symmetric"})])


def _convnext_block(net: nn.Module, features: int, in_features: int, strides: tuple[int, int],
                    name: str) -> ConvNeXtBlock:
  del in_features  # a new width or stride gets the block's own norm + conv in front
  return ConvNeXtBlock(features, net.kernel_size, strides, net.expansion,
                       drop_path_rate=net.drop_path(name), **net.knobs(), name=name)


register_block(
    "convnext", _convnext_block, downsample="stride",
    summary="ConvNeXtBlock(F, kernel_size, expansion): depthwise kxk, norm, 1x1 to F·expansion, "
            "act, 1x1 to F, layer scale 1e-6; a stage opens with norm + 2x2/2 conv, as ConvNeXt "
            "(with SmallNet's norm and act, like every design)")
