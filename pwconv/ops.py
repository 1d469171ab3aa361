"""Pure array functions for pointwise designs. Layout NHWC; kernels HWIO as ``flax.linen.Conv`` stores them.

- :func:`pointwise_conv`: a 1x1 convolution written as a ``dot_general`` over the channel axis.
- :func:`depthwise_conv`: one kxk filter per channel (times a depth multiplier); ``impl`` picks the
  implementation (see :mod:`pwconv.kernels`); ``"xla"`` is the reference.
- :func:`channel_shuffle`: ShuffleNet's permutation that lets grouped 1x1 convs exchange information.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pwconv import kernels
from pwconv import validate

Padding = str | int | tuple[tuple[int, int], tuple[int, int]]


def pointwise_conv(x: jax.Array, kernel: jax.Array, *, groups: int = 1,
                   precision: lax.PrecisionLike = None) -> jax.Array:
  """1x1 convolution: ``y[n, h, w, :] = x[n, h, w, :] @ kernel`` (block-diagonal when grouped).

  Args:
    x: (N, H, W, Cin).
    kernel: (Cin // groups, Cout). Output channels ``[g * Cout/groups, (g+1) * Cout/groups)`` read
      input channels ``[g * Cin/groups, (g+1) * Cin/groups)``, as ``nn.Conv(feature_group_count=groups)``.
    groups: number of channel groups; divides both Cin and Cout.
    precision: passed to ``lax.dot_general``.

  Returns:
    (N, H, W, Cout). Cost: H·W·Cin·Cout/groups MACs per example.
  """
  owner = "pointwise_conv"
  validate.nhwc(owner, "x", x)
  groups = validate.positive_int(owner, "groups", groups)
  if getattr(kernel, "ndim", None) != 2:
    raise ValueError(f"{owner}: kernel must have rank 2 (Cin // groups, Cout), got shape "
                     f"{tuple(getattr(kernel, 'shape', ()))}")
  validate.floating(owner, "kernel", kernel)
  cin, cout = x.shape[-1], kernel.shape[1]
  if cout < 1:
    raise ValueError(f"{owner}: kernel must have at least one output channel, got shape "
                     f"{tuple(kernel.shape)}")
  if cin % groups:
    raise ValueError(f"{owner}: groups={groups} must divide the input channels {cin}")
  if cout % groups:
    raise ValueError(f"{owner}: groups={groups} must divide the output channels {cout}")
  if kernel.shape[0] != cin // groups:
    raise ValueError(f"{owner}: kernel must have shape ({cin // groups}, Cout) for {cin} input "
                     f"channels and groups={groups}, got {tuple(kernel.shape)}")
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if groups == 1:
    return lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=precision)
  n, h, w, _ = x.shape
  xg = x.reshape(n, h, w, groups, cin // groups)
  kg = kernel.reshape(cin // groups, groups, cout // groups)
  # Contract the per-group channels, batch over groups: (G, N, H, W, Cout/G).
  y = lax.dot_general(xg, kg, (((4,), (0,)), ((3,), (1,))), precision=precision)
  return jnp.moveaxis(y, 0, 3).reshape(n, h, w, cout)


def conv_padding(owner: str, padding: Any, in_hw: Sequence[int], kernel_hw: Sequence[int],
                 strides: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Explicit ((top, bottom), (left, right)) padding for any padding form of the contract.

  "SAME" pads so that out = ceil(in / stride), the extra row or column going to the bottom/right
  (as ``lax`` and TensorFlow do); "VALID" pads nothing; an int pads every side by that much.
  """
  if isinstance(padding, str):
    validate.one_of(owner, "padding", padding, ("SAME", "VALID"))
    if padding == "VALID":
      return ((0, 0), (0, 0))
    pads = []
    for size, k, s, d in zip(in_hw, kernel_hw, strides, dilation):
      out = -(-size // s)
      total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
      pads.append((total // 2, total - total // 2))
    return tuple(pads)
  if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
    padding = validate.positive_int(owner, "padding", padding, minimum=0)
    return ((padding, padding), (padding, padding))
  if isinstance(padding, np.ndarray):
    padding = padding.tolist()
  try:
    (top, bottom), (left, right) = padding
  except (TypeError, ValueError):
    raise TypeError(f"{owner}: padding must be 'SAME', 'VALID', an int, or ((top, bottom), "
                    f"(left, right)), got {padding!r}") from None
  return tuple((validate.positive_int(owner, "padding", lo, minimum=0),
                validate.positive_int(owner, "padding", hi, minimum=0))
               for lo, hi in ((top, bottom), (left, right)))


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
  """Output length of a strided, dilated, padded convolution along one axis."""
  return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, strides: int | Sequence[int] = 1,
                   padding: Padding = "SAME", dilation: int | Sequence[int] = 1,
                   impl: str = "auto") -> jax.Array:
  """Depthwise kxk convolution: each input channel filtered on its own by ``multiplier`` filters.

  Args:
    x: (N, H, W, C).
    kernel: (kh, kw, 1, C·multiplier) as ``nn.Conv(feature_group_count=C)`` stores it; output channel
      ``c·multiplier + j`` is input channel ``c`` filtered by ``kernel[..., 0, c·multiplier + j]``.
    strides: int or (sh, sw), each >= 1.
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).
    dilation: int or (dh, dw), each >= 1 (atrous convolution).
    impl: "auto" (fastest measured path on the current backend) or a name in
      ``pwconv.kernels.names()``; "xla" is the reference ``lax.conv_general_dilated``. Every impl
      gives the same values and derivatives under every transformation (``jax.grad``, ``jax.jvp``,
      ``jax.jacfwd``, ``jax.vmap``): "shifted" and "pallas" are bilinear primitives
      (:mod:`pwconv.kernels.primitive`). "auto" is chosen per platform when the program is
      lowered, so ``jax.export`` for several platforms gets each platform's choice.

  Returns:
    (N, Ho, Wo, C·multiplier). Cost: Ho·Wo·kh·kw·C·multiplier MACs per example (padded taps counted).
  """
  owner = "depthwise_conv"
  validate.nhwc(owner, "x", x)
  validate.one_of(owner, "impl", impl, kernels.names())
  if getattr(kernel, "ndim", None) != 4:
    raise ValueError(f"{owner}: kernel must have rank 4 (kh, kw, 1, C * multiplier), got shape "
                     f"{tuple(getattr(kernel, 'shape', ()))}")
  validate.floating(owner, "kernel", kernel)
  kh, kw, kin, kout = kernel.shape
  c = x.shape[-1]
  if kin != 1 or kout % c or kout == 0 or kh < 1 or kw < 1:
    raise ValueError(f"{owner}: kernel must have shape (kh, kw, 1, {c} * multiplier) for {c} input "
                     f"channels, got {tuple(kernel.shape)}")
  strides = validate.int_pair(owner, "strides", strides)
  dilation = validate.int_pair(owner, "dilation", dilation)
  pads = conv_padding(owner, padding, x.shape[1:3], (kh, kw), strides, dilation)
  out_hw = [conv_output_size(size, k, s, d, p)
            for size, k, s, d, p in zip(x.shape[1:3], (kh, kw), strides, dilation, pads)]
  if min(out_hw) < 1:
    raise ValueError(f"{owner}: input {tuple(x.shape[1:3])} is too small for a {kh}x{kw} kernel with "
                     f"dilation {dilation} and padding {pads}: output would be {tuple(out_hw)}")
  dtype = jnp.result_type(x, kernel)
  return kernels.get(impl)(x.astype(dtype), kernel.astype(dtype), strides, pads, dilation)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet channel shuffle: (N, H, W, g·k) -> same shape, channel ``a·k + b`` moved to ``b·g + a``.

  Written as reshape (.., g, k) -> transpose (.., k, g) -> reshape, so it costs no MACs.
  """
  owner = "channel_shuffle"
  validate.nhwc(owner, "x", x)
  groups = validate.positive_int(owner, "groups", groups)
  c = x.shape[-1]
  if c % groups:
    raise ValueError(f"{owner}: groups={groups} must divide the channels {c}")
  n, h, w, _ = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)
