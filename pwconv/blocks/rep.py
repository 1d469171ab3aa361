"""Structural re-parameterization: blocks that train with parallel branches and infer as one conv.

RepVGG (Ding et al. 2021) and MobileOne (Vasu et al. 2023) train a kxk conv + norm alongside a 1x1
conv + norm and an identity norm, summed before the activation: the 1x1 is a training device. Every
branch is linear in eval mode, so the sum is one kxk conv with a bias: the 1x1 kernel sits at the
kxk kernel's centre, the identity is a centre tap of 1 per channel, each norm scales its branch's
output channels. ``deploy=True`` builds that single conv; :func:`pwconv.reparam.reparameterize`
turns a trained block's variables into it (through :meth:`RepBranches.fold_branches`).

The 1x1 and identity branches read the input where the kxk conv's centre tap reads it, under either
padding convention (with "SAME" at an even size and stride 2 that is the odd rows and columns), so
folding is exact under both.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from pwconv import ops
from pwconv import validate
from pwconv.blocks.base import Block, ModuleDef, pair
from pwconv.layers import DropPath

# (a, b) per output channel: an eval-mode norm computes a·x + b.
Affine = tuple[np.ndarray, np.ndarray]


def centre_taps(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                padding: Any) -> jax.Array:
  """The pixels of x that the centre tap of a kxk conv (odd k, nn.Conv ``padding``) reads.

  x: (N, H, W, C) -> (N, Ho, Wo, C), Ho x Wo being the kxk conv's output size.
  """
  pads = ops.conv_padding("centre_taps", padding, x.shape[1:3], kernel_size, strides, (1, 1))
  index = []
  for size, k, s, (low, high) in zip(x.shape[1:3], kernel_size, strides, pads):
    rows = (size + low + high - k) // s + 1
    start = k // 2 - low
    index.append(slice(start, start + (rows - 1) * s + 1, s))
  if all(i == slice(0, size, 1) for i, size in zip(index, x.shape[1:3])):
    return x
  return x[:, index[0], index[1], :]


_ABSTRACT = ("RepBranches is the shared base of RepVGGBlock and MobileOneBlock: build one of those")


class RepBranches(Block):
  """What RepVGG and MobileOne blocks share: parallel conv -> norm branches, summed, then act.

  Train form: ``kxk_names`` kxk conv -> norm branches, a 1x1 conv -> norm branch (``scale_name``;
  none when it is None), and an identity norm branch ("identity") when Cin == F and the strides are
  1; ``act`` after the sum. Deploy form (``deploy=True``): one kxk conv with a bias ("conv") -> act.
  Subclasses choose the branches and the conv groups.

  Attributes:
    features: output channels F.
    kernel_size: (kh, kw), both odd (the other branches sit at the kernel's centre).
    strides: applied by every conv branch.
    deploy: build the deploy form.
    drop_path_rate: stochastic depth of the conv branches' sum, applied only when there is an
      identity branch (as timm).

  Of :class:`Block`'s knobs, ``zero_init_last`` is accepted and unused (no norm ends the block's
  branches more than another; timm zeroes none), and ``use_bias`` applies to the train form (the
  deploy conv always has a bias: it holds the folded norms).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  deploy: bool = dataclasses.field(default=False, kw_only=True)
  drop_path_rate: float = dataclasses.field(default=0.0, kw_only=True)

  def __post_init__(self):
    owner = type(self).__name__
    validate.fields(self, positive=("features",), pairs=("kernel_size", "strides"),
                    booleans=("deploy",))
    if any(k % 2 == 0 for k in pair(self.kernel_size)):
      raise ValueError(f"{owner}: kernel_size must be odd (the 1x1 and identity branches sit at "
                       f"its centre), got {self.kernel_size!r}")
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  @property
  def kxk_names(self) -> tuple[str, ...]:
    raise NotImplementedError(_ABSTRACT)

  @property
  def scale_name(self) -> str | None:
    raise NotImplementedError(_ABSTRACT)

  def conv_groups(self, in_features: int) -> int:
    """The groups of every conv of the block for ``in_features`` input channels (checked)."""
    raise NotImplementedError(_ABSTRACT)

  def has_identity(self, in_features: int) -> bool:
    return in_features == self.features and pair(self.strides) == (1, 1)

  def branch_layer(self, in_features: int, kernel_size: Sequence[int],
                   strides: Sequence[int]) -> ModuleDef:
    """The conv factory of a branch: depthwise, 1x1 (PointwiseConv) or kxk, grouped as the block."""
    groups = self.conv_groups(in_features)
    if groups > 1 and groups == in_features == self.features:
      return self.depthwise_layer(kernel_size, strides)
    if pair(kernel_size) == (1, 1):
      return self.pointwise_layer(self.features, groups=groups, strides=pair(strides))
    return self.conv_layer(self.features, kernel_size, strides, groups=groups)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    kernel_size, strides = pair(self.kernel_size), pair(self.strides)
    kxk = self.branch_layer(cin, kernel_size, strides)
    if self.deploy:
      conv = kxk(name="conv", use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
      return self.activate(conv(x))
    unit = functools.partial(self.conv_norm_act, train=train, act=False)
    branches = [unit(x, kxk, name=name) for name in self.kxk_names]
    if self.scale_name is not None:
      taps = centre_taps(x, kernel_size, strides, self.pad(kernel_size))
      branches.append(unit(taps, self.branch_layer(cin, (1, 1), (1, 1)), name=self.scale_name))
    y = functools.reduce(operator.add, branches)
    if self.has_identity(cin):
      y = DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)
      y = y + self.normalize(x, name="identity", train=train)
    return self.activate(y)

  def fold_branches(self, in_features: int, params: Mapping[str, Any],
                    affines: Mapping[str, Affine]) -> dict[str, dict[str, np.ndarray]]:
    """The deploy form's params ``{"conv": {"kernel", "bias"}}`` from the train form's.

    Args:
      in_features: the block's input channels.
      params: the train form's "params" (layer name -> leaves).
      affines: the eval-mode (a, b) of each BatchNorm of the block, by layer name; a branch whose
        norm is not here has no norm (``norm=None``).

    Raises:
      ValueError: a norm that is not BatchNorm (it has params but no affine), or a missing branch.
    """
    owner = type(self).__name__

    def branch(name: str) -> Affine:
      if name not in params:
        raise ValueError(f"{owner}: the train-form params have no branch {name!r} (got "
                         f"{sorted(params)})")
      kernel = np.asarray(params[name]["kernel"], np.float64)
      bias = np.asarray(params[name].get("bias", 0.0), np.float64)
      return apply_affine(owner, f"{name}_norm", kernel, bias, params, affines)

    folded = [branch(name) for name in self.kxk_names]
    deploy_shape = folded[0][0].shape
    shape = deploy_shape if len(deploy_shape) == 4 else (1, 1, *deploy_shape)
    kernel = sum(k.reshape(shape) for k, _ in folded)
    bias = sum(b for _, b in folded)
    centre = (shape[0] // 2, shape[1] // 2)
    if self.scale_name is not None:
      k, b = branch(self.scale_name)
      kernel[centre] += k.reshape(shape[2:])
      bias = bias + b
    if self.has_identity(in_features):
      eye = np.zeros(shape[2:])
      eye[np.arange(shape[3]) % shape[2], np.arange(shape[3])] = 1.0
      k, b = apply_affine(owner, "identity", eye, np.zeros(shape[3]), params, affines)
      kernel[centre] += k
      bias = bias + b
    return {"conv": {"kernel": kernel.reshape(deploy_shape), "bias": bias}}

  def dense_equivalent(self, in_features: int) -> RepBranches:
    """The deploy form: the single conv with a bias the branches fold into."""
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.clone(deploy=True, parent=None, name=None)


def apply_affine(owner: str, norm: str, kernel: np.ndarray, bias: np.ndarray,
                 params: Mapping[str, Any], affines: Mapping[str, Affine]) -> Affine:
  """(kernel·a, bias·a + b) for the norm ``norm`` that follows a conv (a = 1, b = 0 without one)."""
  if norm in affines:
    a, b = affines[norm]
    return kernel * a, bias * a + b
  if norm in params:
    raise ValueError(f"{owner}: cannot fold {norm!r}: only BatchNorm (or norm=None) folds into a "
                     "conv")
  return kernel, np.broadcast_to(bias, kernel.shape[-1:])


class RepVGGBlock(RepBranches):
  """RepVGG block (Ding et al. 2021; timm's ``RepVggBlock``): kxk conv + norm, 1x1 conv + norm and,
  when Cin == F and strides are 1, an identity norm, summed -> act. ``deploy=True``: one kxk conv
  with a bias -> act.

  Attributes:
    features: output channels F.
    kernel_size: (kh, kw), odd.
    strides: of both conv branches (no identity branch unless 1).
    groups: g, the groups of both convs (RepVGG-B1g4: 4 on every other block); divides Cin and F.
    deploy, drop_path_rate: see :class:`RepBranches`.

  x: (N, H, W, Cin) -> (N, Ho, Wo, F). Cost: train form Ho·Wo·(kh·kw + 1)·Cin·F/g MACs, params
  (kh·kw + 1)·Cin·F/g + 4F (+ 2F with the identity norm); deploy form Ho·Wo·kh·kw·Cin·F/g MACs,
  params kh·kw·Cin·F/g + F. ``dense_equivalent`` is the deploy form.
  """
  groups: int = 1

  def __post_init__(self):
    validate.fields(self, positive=("groups",))
    super().__post_init__()

  @property
  def kxk_names(self) -> tuple[str, ...]:
    return ("conv_kxk",)

  @property
  def scale_name(self) -> str | None:
    return "conv_1x1"

  def conv_groups(self, in_features: int) -> int:
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(f"{type(self).__name__}: groups={self.groups} must divide the input "
                       f"channels {in_features} and features={self.features}")
    return self.groups


class MobileOneBlock(RepBranches):
  """MobileOne block (Vasu et al. 2023; timm's ``MobileOneBlock``): ``num_conv_branches`` kxk
  conv + norm branches, a 1x1 conv + norm "scale" branch (when the kernel is not 1x1) and, when
  Cin == F and strides are 1, an identity norm, summed -> act. ``deploy=True``: one kxk conv with a
  bias -> act. MobileOne alternates a depthwise 3x3 form and a pointwise 1x1 form.

  Attributes:
    features: output channels F (= Cin in the depthwise form).
    kernel_size: (kh, kw), odd; (1, 1) is the pointwise form.
    strides: of every conv branch (no identity branch unless 1).
    depthwise: every conv is depthwise (groups = Cin = F, :class:`~pwconv.DepthwiseConv`); else
      dense.
    num_conv_branches: B, the over-parameterized kxk branches (MobileOne-S0: 4; S1-S4: 1).
    deploy, drop_path_rate: see :class:`RepBranches`.

  x: (N, H, W, Cin) -> (N, Ho, Wo, F). With c = Cin·F (dense) or C (depthwise) and s = 1 if there is
  a scale branch else 0, cost: train form Ho·Wo·(B·kh·kw + s)·c MACs, params (B·kh·kw + s)·c
  + 2F·(B + s) (+ 2F with the identity norm); deploy form Ho·Wo·kh·kw·c MACs, params kh·kw·c + F.
  ``dense_equivalent`` is the deploy form.
  """
  depthwise: bool = False
  num_conv_branches: int = 1

  def __post_init__(self):
    validate.fields(self, positive=("num_conv_branches",), booleans=("depthwise",))
    super().__post_init__()

  @property
  def kxk_names(self) -> tuple[str, ...]:
    return tuple(f"conv_kxk{i}" for i in range(self.num_conv_branches))

  @property
  def scale_name(self) -> str | None:
    return None if pair(self.kernel_size) == (1, 1) else "conv_scale"

  def conv_groups(self, in_features: int) -> int:
    if not self.depthwise:
      return 1
    if in_features != self.features:
      raise ValueError(f"{type(self).__name__}: the depthwise form needs features == the input "
                       f"channels {in_features}, got features={self.features}")
    return in_features
