"""RepVGG and MobileOne: plain stacks of re-parameterizable blocks, as timm's ByobNet builds them.

Both train with parallel branches (:class:`~pwconv.blocks.RepVGGBlock`,
:class:`~pwconv.blocks.MobileOneBlock`) and infer as a plain stack of convs: ``deploy=True`` builds
that form, :func:`pwconv.reparam.reparameterize` folds trained variables into it. The papers give
the deploy form's figures; the train form has the same tensors and MACs as timm's models.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks import MobileOneBlock, RepVGGBlock
from pwconv.models import registry
from pwconv.models.network import Network, drop_path_rates, kw_only
from pwconv.models.smallnet import SmallNet, register_block


class RepNet(Network):
  """A block stem (3x3/2) -> stages (the first block of each stride 2) -> global average pool -> FC.

  Attributes:
    num_classes: outputs of the FC layer.
    depths: units per stage.
    widths: output channels per stage.
    stem_features: channels of the stem block.
    deploy: every block in its deploy form, one conv with a bias (what
      :func:`pwconv.reparam.reparameterize` returns).
    drop_path_rate: stochastic depth, rising linearly from 0 at the first stage block to this rate
      at the last (timm's schedule; the stem has none); blocks without an identity branch ignore it.
  """
  num_classes: int = 1000
  depths: Sequence[int] = kw_only()
  widths: Sequence[int] = kw_only()
  stem_features: int = kw_only()
  deploy: bool = kw_only(default=False)
  drop_path_rate: float = kw_only(default=0.0)

  def __post_init__(self):
    owner = type(self).__name__
    for name in ("depths", "widths"):
      validate.positive_ints(owner, name, getattr(self, name))
    if len(self.depths) != len(self.widths):
      raise ValueError(f"{owner}: depths and widths must have one entry per stage, got "
                       f"{len(self.depths)} and {len(self.widths)}")
    validate.positive_int(owner, "stem_features", self.stem_features)
    validate.boolean(owner, "deploy", self.deploy)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  def drop_path_rates(self, blocks: int) -> list[float]:
    return drop_path_rates(self.drop_path_rate, blocks)


class RepVGG(RepNet):
  """RepVGG (Ding et al. 2021): a :class:`~pwconv.blocks.RepVGGBlock` stem (3x3/2), four stages of
  RepVGG blocks, global average pool, FC. A unit is one block.

  RepVGG-A0: depths (2, 4, 14, 1), widths (64a, 128a, 256a, 512b) = (48, 96, 192, 1280) with
  a = 0.75, b = 2.5, stem min(64, 64a) = 48. Deploy form: a 3x3 conv + bias + ReLU per layer, a VGG.
  """

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    rates = iter(self.drop_path_rates(sum(self.depths)))
    x = RepVGGBlock(self.stem_features, strides=(2, 2), deploy=self.deploy, **self.knobs(),
                    name="stem")(x, train=train)
    for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
      for j in range(depth):
        stride = 2 if j == 0 else 1
        x = RepVGGBlock(width, strides=(stride, stride), deploy=self.deploy,
                        drop_path_rate=next(rates), **self.knobs(),
                        name=f"stage{i + 1}_block{j + 1}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


class MobileOne(RepNet):
  """MobileOne (Vasu et al. 2023): a dense :class:`~pwconv.blocks.MobileOneBlock` stem (3x3/2, one
  kxk branch), four stages of units, global average pool, FC.

  A unit is a depthwise 3x3 MobileOne block (stride 2 in a stage's first unit) then a pointwise 1x1
  one to the stage's width, each with ``num_conv_branches`` kxk branches; so stage i has
  2·depths[i] blocks, named ``stage{i}_block{k}`` in that order.

  Attributes:
    num_conv_branches: kxk branches of every stage block (S0: 4; S1-S4: 1).

  MobileOne-S0: depths (2, 8, 10, 1), widths (64·0.75, 128, 256, 512·2) = (48, 128, 256, 1024),
  stem 48.
  """
  num_conv_branches: int = kw_only(default=1)

  def __post_init__(self):
    validate.positive_int(type(self).__name__, "num_conv_branches", self.num_conv_branches)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    rates = iter(self.drop_path_rates(2 * sum(self.depths)))
    x = MobileOneBlock(self.stem_features, strides=(2, 2), deploy=self.deploy, **self.knobs(),
                       name="stem")(x, train=train)
    block = functools.partial(MobileOneBlock, num_conv_branches=self.num_conv_branches,
                              deploy=self.deploy, **self.knobs())
    for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
      for j in range(depth):
        stride = 2 if j == 0 else 1
        x = block(x.shape[-1], (3, 3), (stride, stride), depthwise=True,
                  drop_path_rate=next(rates), name=f"stage{i + 1}_block{2 * j + 1}")(x, train=train)
        x = block(width, (1, 1), drop_path_rate=next(rates),
                  name=f"stage{i + 1}_block{2 * j + 2}")(x, train=train)
    return self.classify(x, self.num_classes, train=train)


repvgg_a0 = functools.partial(RepVGG, depths=(2, 4, 14, 1), widths=(48, 96, 192, 1280),
                              stem_features=48)
mobileone_s0 = functools.partial(MobileOne, depths=(2, 8, 10, 1), widths=(48, 128, 256, 1024),
                                 stem_features=48, num_conv_branches=4)


def _timm_layer(layer: str) -> str:
  """A block's layer name -> timm's: conv_kxk0 -> conv_kxk.0.conv, conv_1x1_norm -> conv_1x1.bn."""
  if layer in ("conv", "identity"):
    return {"conv": "reparam_conv", "identity": "identity"}[layer]
  base, norm = (layer[:-len("_norm")], True) if layer.endswith("_norm") else (layer, False)
  branch = re.fullmatch(r"conv_kxk(\d+)", base)
  if branch:
    base = f"conv_kxk.{branch[1]}"
  return f"{base}.{'bn' if norm else 'conv'}"


def timm_names(module: nn.Module, layer_paths: Sequence[str]) -> Mapping[str, str]:
  """pwconv layer paths -> timm ByobNet prefixes: ``stage2_block3/conv_kxk_norm`` ->
  ``stages.1.2.conv_kxk.bn``, ``stem/conv`` (deploy) -> ``stem.reparam_conv``, ``classifier`` ->
  ``head.fc``."""
  del module
  names = {}
  for path in layer_paths:
    top, _, layer = path.partition("/")
    block = re.fullmatch(r"stage(\d+)_block(\d+)", top)
    if top == "classifier":
      names[path] = "head.fc"
    elif top == "stem" or block:
      prefix = "stem" if top == "stem" else f"stages.{int(block[1]) - 1}.{int(block[2]) - 1}"
      names[path] = f"{prefix}.{_timm_layer(layer)}"
  return names


registry.register(
    "repvgg_a0", repvgg_a0, family="repvgg",
    source="Ding et al. 2021, RepVGG, Table 4 (RepVGG-A0: 8.30M params, 1.4 GFLOPs, counted as "
           "MACs, of the deploy form); timm repvgg_a0. Train form: 9,108,968 params, "
           "1,512,581,120 MACs; deploy form: 8,309,384 params, 1,361,451,008 MACs",
    figures={"macs": 1_400_000_000, "params": 8_300_000},
    references=[registry.Reference(library="timm", name="repvgg_a0", classifier="head.fc.weight",
                                   names=timm_names, kwargs={"padding": "symmetric"})])
registry.register(
    "mobileone_s0", mobileone_s0, family="repvgg",
    source="Vasu et al. 2023, MobileOne, Table 8 (MobileOne-S0: 2.1M params, 275M FLOPs, counted "
           "as MACs, of the deploy form); timm mobileone_s0. Train form: 5,293,272 params, "
           "1,051,935,232 MACs; deploy form: 2,078,504 params, 275,110,400 MACs",
    figures={"macs": 275_000_000, "params": 2_100_000},
    references=[registry.Reference(library="timm", name="mobileone_s0",
                                   classifier="head.fc.weight", names=timm_names,
                                   kwargs={"padding": "symmetric"})])


def _smallnet_repvgg(net: SmallNet, features: int, in_features: int, strides: tuple[int, int],
                     name: str, *, deploy: bool) -> RepVGGBlock:
  del in_features
  kernel_size = validate.int_pair(type(net).__name__, "kernel_size", net.kernel_size)
  return RepVGGBlock(features, kernel_size, strides, deploy=deploy,
                     drop_path_rate=net.drop_path(name), **net.knobs(), name=name)


def _check_odd_kernel(net: SmallNet) -> None:
  if any(k % 2 == 0 for k in validate.int_pair("SmallNet", "kernel_size", net.kernel_size)):
    raise ValueError(f"SmallNet: kernel_size must be odd for block 'repvgg' (the 1x1 and identity "
                     f"branches sit at its centre), got {net.kernel_size!r}")


register_block(
    "repvgg", functools.partial(_smallnet_repvgg, deploy=False), downsample="stride",
    check=_check_odd_kernel,
    summary="RepVGGBlock(F, kernel_size): kxk + 1x1 + identity branches, each with a norm, summed; "
            "pwconv.reparam folds them into one kxk conv")
