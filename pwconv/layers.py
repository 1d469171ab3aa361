"""Pointwise and depthwise convolution layers (Flax linen), backed by :mod:`pwconv.ops`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import kernels
from pwconv import ops
from pwconv import validate

Dtype = Any
Initializer = nn.initializers.Initializer

# He (Kaiming) normal initialisation, std sqrt(2 / fan_out), as torchvision and timm initialise convs:
# fan_out = kh·kw·Cout for an HWIO kernel, Cout for a pointwise (Cin, Cout) one. Norm-free networks
# (GoogLeNet, SqueezeNet) keep their activations' scale through depth with it.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Std sqrt(2 / fan_in): keeps a ReLU network's forward signal at its scale (He et al. 2015, eq. 10).
# What blocks with no norm use: with fan-out, a norm-free 1x1 reduction from Cin to Cout << Cin
# multiplies its output's variance by Cin / Cout (GoogLeNet's logits reached std ~1e2 at init).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# For a depthwise kernel (kh, kw, 1, C·m) each output sees kh·kw inputs and each input feeds kh·kw·m
# outputs; fan-in (kh·kw) is timm's fan-out per group for m = 1.
depthwise_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class PointwiseConv(nn.Module):
  """1x1 convolution as a ``dot_general`` over channels.

  Attributes:
    features: output channels Cout.
    groups: channel groups (ShuffleNet's grouped 1x1); divides Cin and Cout. Params Cin·Cout/groups.
    strides: (sh, sw) subsampling, as a strided 1x1 ``nn.Conv`` (ResNet's projection shortcut); the
      output is ceil(H / sh) x ceil(W / sw).
    use_bias: add a per-channel bias.
    dtype: computation dtype (None: inferred from input and params).
    param_dtype: dtype the parameters are stored in.

  ``kernel`` is stored as (Cin // groups, Cout), the HWIO kernel of ``nn.Conv(kernel_size=(1, 1))`` with
  its two unit axes dropped. Cost: H·W·Cin·Cout/groups MACs per example.
  """
  features: int
  groups: int = 1
  use_bias: bool = False
  strides: Sequence[int] = (1, 1)
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = he_normal
  bias_init: Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    validate.fields(self, positive=("features", "groups"), pairs=("strides",),
                    booleans=("use_bias",))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    owner = type(self).__name__
    validate.nhwc(owner, "x", x)
    cin = x.shape[-1]
    if cin % self.groups:
      raise ValueError(f"{owner}: groups={self.groups} must divide the input channels {cin}")
    if self.features % self.groups:
      raise ValueError(f"{owner}: groups={self.groups} must divide features={self.features}")
    kernel = self.param("kernel", self.kernel_init, (cin // self.groups, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    sh, sw = validate.int_pair(owner, "strides", self.strides)
    if (sh, sw) != (1, 1):
      x = x[:, ::sh, ::sw, :]
    y = ops.pointwise_conv(x, kernel, groups=self.groups)
    return y + bias if bias is not None else y


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution: each input channel filtered by ``depth_multiplier`` filters of its own.

  Attributes:
    kernel_size: (kh, kw).
    strides: (sh, sw); the output is ceil(H / sh) x ceil(W / sw) with "SAME" padding.
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).
    dilation: (dh, dw) atrous rates; the receptive field is (kh - 1)·dh + 1 rows.
    depth_multiplier: m; the output has C·m channels.
    use_bias: add a per-channel bias.
    impl: "auto" or a name in ``pwconv.kernels.names()``; every choice computes the same function and is
      counted the same by :func:`pwconv.profile`.

  ``kernel`` is stored as (kh, kw, 1, C·m), exactly as ``nn.Conv(feature_group_count=C)`` stores it, so
  parameters move between the two unchanged. Cost: Ho·Wo·kh·kw·C·m MACs per example; params kh·kw·C·m.
  """
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: ops.Padding = "SAME"
  dilation: Sequence[int] = (1, 1)
  depth_multiplier: int = 1
  use_bias: bool = False
  impl: str = "auto"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = depthwise_he_normal
  bias_init: Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    validate.fields(self, positive=("depth_multiplier",),
                    pairs=("kernel_size", "strides", "dilation"), choices={"impl": kernels.names()},
                    booleans=("use_bias",))
    if isinstance(self.padding, str):  # other forms are checked against the input at call time
      validate.one_of(type(self).__name__, "padding", self.padding, ("SAME", "VALID"))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    validate.nhwc(type(self).__name__, "x", x)
    kh, kw = validate.int_pair(type(self).__name__, "kernel_size", self.kernel_size)
    features = x.shape[-1] * self.depth_multiplier
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = ops.depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                           dilation=self.dilation, impl=self.impl)
    return y + bias if bias is not None else y


class DropPath(nn.Module):
  """Stochastic depth (Huang et al. 2016): zeroes a residual branch per example with probability
  ``rate`` while training and scales the kept ones by 1 / (1 - rate), so eval needs no rescaling.

  Attributes:
    rate: drop probability in [0, 1). At 0 (or with ``deterministic=True``) it is the identity and
      draws no random numbers.

  ``__call__(x, *, deterministic)``: x (N, ...) -> same shape; draws from the "dropout" rng stream.
  """
  rate: float = 0.0

  def __post_init__(self):
    validate.number(type(self).__name__, "rate", self.rate, low=0, high=1, high_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if self.rate == 0 or deterministic:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class LayerScale(nn.Module):
  """Per-channel learnt scale of a residual branch (CaiT; ConvNeXt, MobileNetV4): y = x · gamma.

  Attributes:
    init_value: initial gamma (ConvNeXt: 1e-6, so each block starts near its shortcut).
    param_dtype: dtype of gamma.

  ``gamma`` has shape (C,) for x (..., C); C params, no MACs.
  """
  init_value: float = 1e-6
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    validate.number(type(self).__name__, "init_value", self.init_value)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       self.param_dtype)
    return x * gamma.astype(x.dtype)
