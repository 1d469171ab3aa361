"""GhostNet's blocks (Han et al. 2020): the Ghost module and the Ghost bottleneck.

A 1x1 conv makes only part of a layer's output channels (the "intrinsic" maps); a cheap depthwise
conv on those makes the rest (the "ghosts"). Costs are MACs per example, padded taps counted; Ho, Wo
is the output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks.base import Block, pair
from pwconv.blocks.classic import SqueezeExcite
from pwconv.blocks.mbconv import hard_sigmoid


class GhostModule(Block):
  """Ghost module: 1x1 conv -> norm -> act to M = ceil(F / s) channels; depthwise d x d conv ->
  norm -> act on those, M·(s - 1) more; both concatenated and cut to F.

  Attributes:
    features: output channels F.
    ratio: s >= 2; one in s output channels comes from the 1x1 conv, the others from the cheap
      depthwise conv (depth multiplier s - 1). When s does not divide F the last s·M - F cheap
      channels are computed and dropped, as the reference does.
    dw_size: (d, d) kernel of the cheap depthwise conv (stride 1).
    linear: no activation after either conv (the second module of a Ghost bottleneck).
    ends_branch: the module ends a residual branch: ``zero_init_last`` then zeroes the scales of
      both its norms, so it outputs zeros at init. Alone, a Ghost module has no shortcut and
      ignores ``zero_init_last``.

  x: (N, H, W, Cin) -> (N, H, W, F). Cost: H·W·Cin·M + H·W·d²·M·(s - 1), against H·W·Cin·F for
  the 1x1 conv it stands in for (``dense_equivalent``): about s times fewer for large Cin.
  Params: Cin·M + d²·M·(s - 1), plus 2 per channel of each norm (2·s·M).
  """
  features: int
  ratio: int = 2
  dw_size: int | Sequence[int] = 3
  linear: bool = False
  ends_branch: bool = False

  def __post_init__(self):
    validate.fields(self, positive=("features",), pairs=("dw_size",),
                    booleans=("linear", "ends_branch"))
    validate.positive_int(type(self).__name__, "ratio", self.ratio, minimum=2)
    super().__post_init__()

  @property
  def primary_features(self) -> int:
    """M = ceil(F / s): the channels the 1x1 conv makes."""
    return math.ceil(self.features / self.ratio)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    act = not self.linear
    y = self.conv_norm_act(x, self.pointwise_layer(self.primary_features), name="primary",
                           train=train, act=act, last=self.ends_branch)
    cheap = self.depthwise_layer(self.dw_size, depth_multiplier=self.ratio - 1)
    ghosts = self.conv_norm_act(y, cheap, name="cheap", train=train, act=act, last=self.ends_branch)
    return jnp.concatenate([y, ghosts], axis=-1)[..., :self.features]

  def dense_equivalent(self, in_features: int) -> nn.Module:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.dense_conv(self.features, (1, 1))


class GhostBottleneck(Block):
  """Ghost bottleneck: Ghost module (act) to E -> [strided depthwise kxk -> norm] -> [SE] ->
  linear Ghost module to F, plus a shortcut.

  Attributes:
    features: output channels F.
    hidden_features: E, the width between the two Ghost modules (the paper's "#exp").
    kernel_size: (k, k) of the strided depthwise conv and of the shortcut's depthwise conv.
    strides: (1, 1): no depthwise conv in the main branch. Otherwise a depthwise kxk conv + norm
      (no activation) with these strides follows the first Ghost module.
    se_features: R, the reduced width of a Squeeze-Excite on the E hidden channels (its 1x1 convs
      always biased; ``act``, ReLU when None, after the reduction; a hard-sigmoid gate, PyTorch's
      relu6(x + 3) / 6); GhostNet uses R = make_divisible(E / 4, 4). None: no SE.
    ratio: s of both Ghost modules.
    dw_size: the cheap depthwise kernel (d, d) of both Ghost modules.

  The shortcut is the identity when the strides are 1 and Cin = F, else a depthwise kxk conv with
  the strides -> norm -> 1x1 conv to F -> norm. Nothing follows the sum (no activation).

  x: (N, H, W, Cin) -> (N, Ho, Wo, F). Cost, with M1 = ceil(E / s) and M2 = ceil(F / s):
  H·W·(Cin·M1 + d²·M1·(s - 1)) + [Ho·Wo·k²·E] + [2·E·R] + Ho·Wo·(E·M2 + d²·M2·(s - 1))
  + [Ho·Wo·(k²·Cin + Cin·F)] for the projection shortcut. ``dense_equivalent``: one kxk conv
  Cin -> F with the strides.
  """
  features: int
  hidden_features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  se_features: int | None = None
  ratio: int = 2
  dw_size: int | Sequence[int] = 3

  def __post_init__(self):
    owner = type(self).__name__
    validate.fields(self, positive=("features", "hidden_features"),
                    pairs=("kernel_size", "strides", "dw_size"))
    validate.positive_int(owner, "ratio", self.ratio, minimum=2)
    if self.se_features is not None:
      validate.positive_int(owner, "se_features", self.se_features)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    strides = pair(self.strides)
    ghost = {"ratio": self.ratio, "dw_size": self.dw_size}
    y = GhostModule(self.hidden_features, **ghost, **self.knobs(), name="ghost1")(x, train=train)
    if strides != (1, 1):
      y = self.conv_norm_act(y, self.depthwise_layer(self.kernel_size, strides), name="depthwise",
                             train=train, act=False)
    if self.se_features is not None:
      y = SqueezeExcite(reduced_features=self.se_features, gate=hard_sigmoid,
                        act=self.act or nn.relu, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="se")(y, train=train)
    y = GhostModule(self.features, **ghost, linear=True, ends_branch=True, **self.knobs(),
                    name="ghost2")(y, train=train)
    if strides == (1, 1) and cin == self.features:
      return y + self.in_dtype(x)
    s = self.conv_norm_act(x, self.depthwise_layer(self.kernel_size, strides),
                           name="shortcut_depthwise", train=train, act=False)
    s = self.conv_norm_act(s, self.pointwise_layer(self.features), name="shortcut", train=train,
                           act=False)
    return y + s
