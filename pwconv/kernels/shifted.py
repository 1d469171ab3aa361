"""Depthwise convolution as kh·kw shifted multiply-adds: the CPU fast path.

XLA:CPU runs a grouped convolution (``feature_group_count = C``) 20-50x slower than the same sum
written as kh·kw strided, dilated windows of the padded input, each scaled by its per-channel tap
and added: XLA fuses that whole sum into one elementwise loop over the output. XLA's own depthwise
gradients are slower still (the weight gradient becomes a dense convolution), so the op has a
backward written the same way, declared through :mod:`pwconv.kernels.primitive` (a bilinear
primitive, so forward-mode autodiff and vmap work too):

- input gradient: the transposed convolution. The cotangent is placed on the stride grid and shifted
  by the padding in one ``lax.pad`` (interior padding; negative edge padding crops), then correlated
  with the flipped taps as kh·kw shifted multiply-adds.
- weight gradient: per tap, a sum over (N, Ho, Wo) of (input window · cotangent). XLA:CPU
  materialises every sliced operand of a reduction, so an elementwise loop first folds groups of
  images and output columns (16 or 32 products per element), and one reduction finishes an
  array that many times smaller.

bf16 inputs are accumulated in f32; results come back in the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from pwconv.kernels import primitive

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]

# Products the weight gradient's elementwise loop sums per element before the reduction (half of
# them at most from the batch axis, the rest from the output columns), for kernels of up to 16 taps
# and for larger ones. Measured on XLA:CPU (8x56x56x128 f32): folding 16 runs the 3x3 weight
# gradient 5-8x faster than reducing the windows directly, folding 4 is 2-4x slower than 16, and
# 5x5 runs 1.4x faster folding 32 than 16.
_FOLD_SMALL = 16
_FOLD_LARGE = 32


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """f32 for narrower floats (bf16, f16), else the dtype itself (f32, f64)."""
  return jnp.promote_types(dtype, jnp.float32)


def output_hw(x_hw: Pair, kernel_hw: Pair, strides: Pair, padding: Padding,
              dilation: Pair) -> Pair:
  """(Ho, Wo) of a strided, dilated, explicitly padded convolution of an (H, W) map."""
  return tuple((size + lo + hi - (k - 1) * d - 1) // s + 1
               for size, k, s, d, (lo, hi) in zip(x_hw, kernel_hw, strides, dilation, padding))


def _window(src: jax.Array, starts: Sequence[int], counts: Sequence[int],
            steps: Sequence[int]) -> jax.Array:
  """``src[s0::t0][:c0], src[s1::t1][:c1], ...`` over the leading axes; trailing axes whole."""
  rest = src.shape[len(starts):]
  return lax.slice(src, (*starts, *(0 for _ in rest)),
                   (*(s + (c - 1) * t + 1 for s, c, t in zip(starts, counts, steps)), *rest),
                   (*steps, *(1 for _ in rest)))


def _shifted_sum(src: jax.Array, taps: jax.Array, starts: tuple[Sequence[int], Sequence[int]],
                 out_hw: Pair, strides: Pair) -> jax.Array:
  """Sum over taps (i, j) of ``src[:, starts[0][i] + ho·sh, starts[1][j] + wo·sw] * taps[i, j]``.

  Args:
    src: (N, Hs, Ws, C) in the compute dtype.
    taps: (kh, kw, C) in the compute dtype.
    starts: the row start of each of the kh taps, the column start of each of the kw taps.
    out_hw: (Ho, Wo).
    strides: (sh, sw), the step in ``src`` between neighbouring outputs.

  Returns:
    (N, Ho, Wo, C). Cost: N·Ho·Wo·kh·kw·C MACs in one fused elementwise loop.
  """
  acc = None
  for i, row in enumerate(starts[0]):
    for j, col in enumerate(starts[1]):
      term = _window(src, (0, row, col), (src.shape[0], *out_hw), (1, *strides)) * taps[i, j]
      acc = term if acc is None else acc + term
  return acc


def _split_taps(kernel: jax.Array, c: int, dtype: jnp.dtype) -> jax.Array:
  """(kh, kw, 1, C·m) -> (kh, kw, C, m) in ``dtype``; output channel c·m + j is [..., c, j]."""
  kh, kw, _, cm = kernel.shape
  return kernel.reshape(kh, kw, c, cm // c).astype(dtype)


def _fold(size: int, target: int) -> Pair:
  """(groups, per_group): ``size`` split into groups of at most ``target``, padding the least."""
  groups = -(-size // target)
  return groups, -(-size // groups)


def _forward(x, kernel, strides, padding, dilation):
  n, h, w, c = x.shape
  kh, kw, _, cm = kernel.shape
  dtype = _compute_dtype(x.dtype)
  out_hw = output_hw((h, w), (kh, kw), strides, padding, dilation)
  (top, bottom), (left, right) = padding
  src = lax.pad(x.astype(dtype), jnp.zeros((), dtype),
                ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  starts = ([i * dilation[0] for i in range(kh)], [j * dilation[1] for j in range(kw)])
  taps = _split_taps(kernel, c, dtype)
  # One loop per multiplier index, interleaved by the stack: broadcasting (C, 1) against (C, m)
  # measured 15% slower for m = 2.
  y = jnp.stack([_shifted_sum(src, taps[..., j], starts, out_hw, strides)
                 for j in range(cm // c)], axis=-1)
  return y.reshape(n, *out_hw, cm).astype(x.dtype)


def _input_grad(g, kernel, x_shape, strides, padding, dilation):
  """dx[h, w] = sum over taps of the cotangent that tap read x[h, w] into, times the tap.

  g: (N, Ho, Wo, C, m) in the compute dtype. The cotangent gd on the stride grid has
  gd[ho·sh] = g[ho]; dx[h] = sum_i gd[h + top - i·dh]. One pad shifts gd by (kh-1)·dh - top
  (a negative shift crops, as does oversize bottom padding at the tail) so every tap reads an
  H-row window starting at (kh-1-i)·dh. Cost: N·H·W·kh·kw·C·m MACs.
  """
  _, h, w, c = x_shape
  kh, kw, _, _ = kernel.shape
  m = g.shape[-1]
  grid_pads = [(0, 0, 0)]
  for size, k, s, d, (lo, _), o in zip((h, w), (kh, kw), strides, dilation, padding,
                                      g.shape[1:3]):
    grid_pads.append(((k - 1) * d - lo, size + lo - (o - 1) * s - 1, s - 1))
  gd = lax.pad(g, jnp.zeros((), g.dtype), grid_pads + [(0, 0, 0), (0, 0, 0)])
  flipped = ([(kh - 1 - i) * dilation[0] for i in range(kh)],
             [(kw - 1 - j) * dilation[1] for j in range(kw)])
  taps = _split_taps(kernel, c, g.dtype)
  # One elementwise loop over the multiplier too: a reduction over m would materialise the windows.
  return sum(_shifted_sum(gd[..., j], taps[..., j], flipped, (h, w), (1, 1)) for j in range(m))


def _weight_grad(x, g, kernel_hw, strides, padding, dilation):
  """dk[i, j, c, m] = sum over n, ho, wo of xp[n, ho·sh + i·dh, wo·sw + j·dw, c]·g[n, ho, wo, c, m].

  x: (N, H, W, C) and g: (N, Ho, Wo, C, m), both in the compute dtype; xp is x zero-padded. Images
  and output columns are split into groups of bn and bw (bn·bw <= fold, 16 or 32); an elementwise
  loop sums each group, then one reduction sums the (kh·kw, N/bn, Ho, Wo/bw, C, m) partial sums.
  Returns (kh, kw, C, m).
  Cost: N·Ho·Wo·kh·kw·C·m MACs (plus the zero padding of N and Wo up to whole groups).
  """
  n, _, w, _ = x.shape
  kh, kw = kernel_hw
  _, ho, wo, _, _ = g.shape
  fold = _FOLD_SMALL if kh * kw <= 16 else _FOLD_LARGE
  gn, bn = _fold(n, fold // 2)
  gw, bw = _fold(wo, max(1, fold // bn))
  (top, bottom), (left, right) = padding
  right = max(right, (kw - 1) * dilation[1] + (gw * bw - 1) * strides[1] + 1 - left - w)
  zero = jnp.zeros((), g.dtype)
  src = lax.pad(x, zero, ((0, gn * bn - n, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  src = src[..., None]
  g = lax.pad(g, zero, ((0, gn * bn - n, 0), (0, 0, 0), (0, gw * bw - wo, 0), (0, 0, 0), (0, 0, 0)))
  counts = (gn, ho, gw)
  partial = []
  for i in range(kh):
    for j in range(kw):
      acc = None
      for a in range(bn):
        for b in range(bw):
          xs = _window(src, (a, i * dilation[0], j * dilation[1] + b * strides[1]), counts,
                       (bn, strides[0], bw * strides[1]))
          term = xs * _window(g, (a, 0, b), counts, (bn, 1, bw))
          acc = term if acc is None else acc + term
      partial.append(acc)
  return jnp.stack(partial).sum((1, 2, 3)).reshape(kh, kw, *g.shape[3:])


def input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], strides: Pair,
               padding: Padding, dilation: Pair) -> jax.Array:
  """The gradient in x of :func:`depthwise_conv` for a cotangent g (N, Ho, Wo, C·m)."""
  c = x_shape[-1]
  dtype = _compute_dtype(g.dtype)
  g = g.astype(dtype).reshape(*g.shape[:3], c, kernel.shape[-1] // c)
  return _input_grad(g, kernel, x_shape, strides, padding, dilation)


def weight_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], strides: Pair,
                padding: Padding, dilation: Pair) -> jax.Array:
  """The gradient in the kernel of :func:`depthwise_conv` for a cotangent g (N, Ho, Wo, C·m)."""
  c = x.shape[-1]
  kh, kw, _, cm = kernel_shape
  dtype = _compute_dtype(x.dtype)
  g = g.astype(dtype).reshape(*g.shape[:3], c, cm // c)
  dk = _weight_grad(x.astype(dtype), g, (kh, kw), strides, padding, dilation)
  return dk.reshape(kernel_shape)


depthwise_conv = primitive.bilinear_depthwise("pwconv_shifted_depthwise", _forward, input_grad,
                                              weight_grad)
depthwise_conv.__doc__ = """Depthwise convolution as kh·kw shifted multiply-adds, with a shifted-add backward.

Args:
  x: (N, H, W, C), any float dtype.
  kernel: (kh, kw, 1, C·m), same dtype; output channel c·m + j filters input channel c with
    ``kernel[..., 0, c·m + j]``.
  strides: (sh, sw), each >= 1.
  padding: ((top, bottom), (left, right)), non-negative; may be asymmetric or exceed the kernel.
  dilation: (dh, dw), each >= 1.

Returns:
  (N, Ho, Wo, C·m) in x's dtype. Cost: N·Ho·Wo·kh·kw·C·m MACs forward; backward the same for
  the weight gradient plus N·H·W·kh·kw·C·m for the input gradient (the zeros between strided
  outputs are multiplied too, so about sh·sw times the forward).
"""
