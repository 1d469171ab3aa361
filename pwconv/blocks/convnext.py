"""ConvNeXt's block (Liu et al. 2022): a 7x7 depthwise conv for space, two 1x1s for channels.

The block puts the 1x1s where a Transformer puts its MLP: the depthwise kxk mixes space on C
channels, one norm follows it, and the two pointwise convs (C -> 4C -> C, GELU between) do almost
all the work. :data:`layer_norm` and :func:`gelu` are the block's (and the network's) own ``norm``
and ``act``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks.base import Block, ModuleDef, pair
from pwconv.layers import DropPath, LayerScale, PointwiseConv, he_normal

Activation = Callable[[jax.Array], jax.Array]

# LayerNorm over the channels (the last axis) with ConvNeXt's epsilon, 1e-6. The variance is
# E[(x - mean)²], as PyTorch computes it, not flax's faster E[x²] - mean², which loses digits when
# the mean is large against the spread.
layer_norm = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False)


def gelu(x: jax.Array) -> jax.Array:
  """GELU in its exact form x·Φ(x) = x·(1 + erf(x/√2))/2, as ``torch.nn.GELU()``.

  ``flax.linen.gelu`` and ``jax.nn.gelu`` default to the tanh approximation, which is off by up to
  4.7e-4 (at |x| ≈ 2.7).
  """
  return jax.nn.gelu(x, approximate=False)


class ConvNeXtBlock(Block):
  """ConvNeXt block: depthwise kxk -> norm -> 1x1 to E -> act -> 1x1 to F -> layer scale -> drop
  path -> + shortcut.

  Where the output has another shape than the input (``strides`` > 1 or Cin != F), the block first
  changes it as ConvNeXt changes stage: norm -> an sh x sw conv with stride (sh, sw) to F channels
  (2x2/2 between stages; 1x1 when only the width changes), unpadded as in every reference (odd sizes
  round down). The shortcut is taken after that layer, so it is always the identity.

  Attributes:
    features: output channels F.
    kernel_size: (kh, kw) of the depthwise conv (7x7).
    strides: (sh, sw) of the downsample layer in front; the depthwise conv has stride 1.
    expansion: E = int(expansion·F) hidden channels between the two 1x1s (4).
    layer_scale_init: initial per-channel scale of the branch (1e-6: each block starts near its
      shortcut); None: no layer scale.
    drop_path_rate: probability of dropping the branch of an example while training (drawn from
      the "dropout" rng stream); 0 is the identity.

  Of :class:`Block`'s knobs: ``norm`` defaults to :data:`layer_norm` (channels-last LayerNorm, eps
  1e-6) and ``act`` to exact :func:`gelu`, as the paper's; a network hands down its own.
  ``use_bias`` defaults to True (every conv has a bias, as the paper's; None: only the convs that
  no norm follows). ``zero_init_last`` starts the layer scale (without one, the last 1x1's kernel)
  at zero. ``padding`` pads the depthwise conv.

  x: (N, H, W, Cin) -> (N, Ho, Wo, F), Ho = floor(H / sh), Wo = floor(W / sw).
  Cost: Ho·Wo·kh·kw·F + 2·Ho·Wo·F·E MACs, plus Ho·Wo·sh·sw·Cin·F for the downsample layer.
  Params: kh·kw·F + 2·F·E, biases F + E + F, norm 2·F, layer scale F; plus sh·sw·Cin·F + F + 2·Cin.
  ``dense_equivalent``: the dense kh x kw conv Cin -> F at ``strides`` the block stands in for.
  """
  features: int
  kernel_size: Sequence[int] = (7, 7)
  strides: Sequence[int] = (1, 1)
  expansion: float = 4
  layer_scale_init: float | None = 1e-6
  drop_path_rate: float = 0.0
  norm: ModuleDef | None = dataclasses.field(default=layer_norm, kw_only=True)
  act: Activation | None = dataclasses.field(default=gelu, kw_only=True)
  use_bias: bool | None = dataclasses.field(default=True, kw_only=True)

  def __post_init__(self):
    owner = type(self).__name__
    validate.fields(self, positive=("features",), pairs=("kernel_size", "strides"))
    validate.number(owner, "expansion", self.expansion, low=0, low_open=True)
    if int(self.expansion * self.features) < 1:
      raise ValueError(f"{owner}: expansion·features must be >= 1, got {self.expansion} · "
                       f"{self.features}")
    if self.layer_scale_init is not None:
      validate.number(owner, "layer_scale_init", self.layer_scale_init)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    strides = pair(self.strides)
    if strides != (1, 1) or cin != self.features:
      if x.shape[1] < strides[0] or x.shape[2] < strides[1]:
        raise ValueError(f"{type(self).__name__}: x of shape {tuple(x.shape)} is smaller than the "
                         f"{strides[0]}x{strides[1]} downsample window")
      x = self.normalize(x, name="downsample_norm", train=train)
      x = nn.Conv(self.features, strides, strides=strides, padding="VALID", kernel_init=he_normal,
                  use_bias=self.unnormed_bias(), dtype=self.dtype, param_dtype=self.param_dtype,
                  name="downsample")(x)
    y = self.conv_norm_act(x, self.depthwise_layer(self.kernel_size), name="depthwise", train=train,
                           act=False)
    pointwise = functools.partial(PointwiseConv, use_bias=self.unnormed_bias(), dtype=self.dtype,
                                  param_dtype=self.param_dtype)
    y = self.activate(pointwise(int(self.expansion * self.features), name="expand")(y))
    zero_last = self.zero_init_last and self.layer_scale_init is None
    y = pointwise(self.features, name="project",
                  **({"kernel_init": nn.initializers.zeros_init()} if zero_last else {}))(y)
    if self.layer_scale_init is not None:
      init = 0.0 if self.zero_init_last else self.layer_scale_init
      y = LayerScale(init, param_dtype=self.param_dtype, name="layer_scale")(y)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    return self.in_dtype(x) + y
