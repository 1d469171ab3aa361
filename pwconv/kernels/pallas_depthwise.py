"""Depthwise convolution as a Pallas kernel: Triton on GPU, Mosaic on TPU, interpreted elsewhere.

Two kernel bodies compute the same thing, because the two Pallas backends accept different code:

- :func:`gpu_depthwise` (Triton): each program computes a tile of ``BLOCK_H`` output rows by
  ``BLOCK_W`` output columns by ``BLOCK_C`` output channels of one image. For every tap it loads
  the strided, dilated input window of the tile with a masked gather: taps outside the image
  (the padding) are masked to zero, so no padded copy of the input is ever written, and stride,
  dilation and the depth multiplier are just index arithmetic. The windows of neighbouring taps
  overlap almost entirely, so after the first tap they should hit L1, and only the halo rows
  shared with the next tile come from L2 twice (expected, not profiled). Accumulates in f32.
- :func:`tpu_depthwise` (Mosaic): each program holds one image's (H, W, ``TPU_BLOCK_C``) slab in
  VMEM (the whole halo is reused) and adds every tap's window into an f32 VMEM accumulator. The
  padding is handled by static index ranges: a tap only reads and writes the output rows and
  columns whose input lies inside the image. Strides and dilation are strided VMEM loads. Mosaic
  has no gathers, so a depth multiplier m > 1 repeats the input channels m times in HBM first
  (one extra pass over an m-times larger input).

:func:`depthwise_conv` picks the body by ``jax.default_backend()``: compiled Triton on "gpu",
compiled Mosaic on "tpu", and the Triton body in interpret mode anywhere else (CPU), so tests run
it. It is a bilinear primitive (:mod:`pwconv.kernels.primitive`) whose transposes are
:mod:`pwconv.kernels.shifted`'s shifted-add gradients (XLA fusions), not Pallas kernels.

The block sizes are chosen for H100/H200 (Triton) and for TPU lanes but are UNMEASURED on any
device: nobody has timed this kernel against XLA yet, which is why it is not an ``"auto"`` choice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from pwconv.kernels import primitive
from pwconv.kernels import shifted
from pwconv.kernels.shifted import Padding, Pair

# GPU tile (unmeasured on device): 8 x 16 output pixels x 64 channels = 8192 f32 accumulators per
# program over 8 warps (32 per thread). 64 bf16 channels are one 128-byte line per pixel, so every
# row of a masked load is a coalesced line; the 10 x 18 input window of a 3x3 tile is 1.4x the
# output tile. Narrow outputs trade columns for rows (e.g. 7x7 maps use 8 x 8 tiles).
BLOCK_H = 8
BLOCK_W = 16
BLOCK_C = 64
NUM_WARPS = 8

# TPU channel block: one vreg row of lanes. Channel counts that are not a multiple of it use the
# whole channel axis as one block (allowed by Mosaic, but lane-sparse below 128).
TPU_BLOCK_C = 128


def _gpu_kernel(x_ref, w_ref, o_ref, *, strides, padding, dilation, multiplier, tiles_w, block):
  """One (bh, bw, bc) output tile of image ``program_id(2)``; refs are whole arrays.

  x_ref: (N, H, W, C); w_ref: (kh, kw, C·m); o_ref: (N, Ho, Wo, C·m). Masked-off lanes keep
  their out-of-range indices: Triton never dereferences them, interpret mode masks the loads and
  drops the stores, and a clamping ``where`` on the channel index would hide its contiguity from
  Triton's vectorizer.
  """
  bh, bw, bc = block
  _, h, w, _ = x_ref.shape
  kh, kw, cout = w_ref.shape
  _, out_h, out_w, _ = o_ref.shape
  (sh, sw), (dh, dw), ((top, _), (left, _)) = strides, dilation, padding
  tile, n = pl.program_id(0), pl.program_id(2)
  ho = (tile // tiles_w) * bh + jnp.arange(bh)
  wo = (tile % tiles_w) * bw + jnp.arange(bw)
  co = pl.program_id(1) * bc + jnp.arange(bc)
  ho_ok, wo_ok, co_ok = ho < out_h, wo < out_w, co < cout
  # co >= 0, so truncating division is floor division without jnp's sign fix-up selects.
  ci = co if multiplier == 1 else lax.div(co, multiplier)
  acc = jnp.zeros(block, jnp.float32)
  for i in range(kh):
    hi = ho * sh + (i * dh - top)
    h_ok = ho_ok & (hi >= 0) & (hi < h)
    for j in range(kw):
      wi = wo * sw + (j * dw - left)
      w_ok = wo_ok & (wi >= 0) & (wi < w)
      mask = h_ok[:, None, None] & w_ok[None, :, None] & co_ok[None, None, :]
      window = plgpu.load(x_ref.at[n, hi[:, None, None], wi[None, :, None], ci[None, None, :]],
                          mask=mask, other=0)
      tap = plgpu.load(w_ref.at[i, j, co], mask=co_ok, other=0)
      acc += window.astype(jnp.float32) * tap.astype(jnp.float32)[None, None, :]
  out_mask = ho_ok[:, None, None] & wo_ok[None, :, None] & co_ok[None, None, :]
  plgpu.store(o_ref.at[n, ho[:, None, None], wo[None, :, None], co[None, None, :]],
              acc.astype(o_ref.dtype), mask=out_mask)


def gpu_depthwise(x: jax.Array, kernel: jax.Array, strides: Pair, padding: Padding,
                  dilation: Pair, *, interpret: bool = False,
                  tile: tuple[int, int, int] | None = None,
                  num_warps: int | None = None) -> jax.Array:
  """The Triton kernel (masked-gather tiles); ``interpret=True`` runs it on any backend.

  Args and result as :func:`depthwise_conv`. Grid: (tiles of Ho x Wo, blocks of C·m, N), at most
  ``BLOCK_H·BLOCK_W`` pixels by ``BLOCK_C`` channels each, shrunk to powers of two that cover
  small outputs. Cost: N·Ho·Wo·kh·kw·C·m MACs; HBM traffic about one read of x and one write of y.

  ``tile`` = (block_h, block_w, block_c), powers of two, and ``num_warps`` override
  :data:`BLOCK_H`, :data:`BLOCK_W`, :data:`BLOCK_C` and :data:`NUM_WARPS` (the tile sweep of
  ``python -m pwconv.bench --suite gpu`` times several); the same shrinking applies.
  """
  n, h, w, c = x.shape
  kh, kw, _, cout = kernel.shape
  out_h, out_w = shifted.output_hw((h, w), (kh, kw), strides, padding, dilation)
  block_h, block_w, block_c = (BLOCK_H, BLOCK_W, BLOCK_C) if tile is None else tile
  num_warps = NUM_WARPS if num_warps is None else num_warps
  for name, size in (("tile block_h", block_h), ("tile block_w", block_w),
                     ("tile block_c", block_c), ("num_warps", num_warps)):
    if not isinstance(size, int) or size < 1 or size & (size - 1):
      raise ValueError(f"gpu_depthwise: {name} must be a positive power of two, got {size!r}")
  bw = min(block_w, pl.next_power_of_2(out_w))
  bh = min(block_h * block_w // bw, pl.next_power_of_2(out_h))
  bc = min(block_c, pl.next_power_of_2(cout))
  tiles_w = pl.cdiv(out_w, bw)
  body = functools.partial(_gpu_kernel, strides=strides, padding=padding, dilation=dilation,
                           multiplier=cout // c, tiles_w=tiles_w, block=(bh, bw, bc))
  return pl.pallas_call(
      body,
      out_shape=jax.ShapeDtypeStruct((n, out_h, out_w, cout), x.dtype),
      grid=(pl.cdiv(out_h, bh) * tiles_w, pl.cdiv(cout, bc), n),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps),
      interpret=interpret,
      name="pwconv_depthwise_gpu",
  )(x, kernel.reshape(kh, kw, cout))


def _valid_range(size: int, out: int, stride: int, offset: int) -> Pair:
  """[lo, hi): the outputs o with 0 <= o·stride + offset < size."""
  lo = min(max(0, -(offset // stride)), out)
  hi = min(out, max(lo, (size - 1 - offset) // stride + 1))
  return lo, hi


def _tpu_kernel(x_ref, w_ref, o_ref, acc_ref, *, strides, padding, dilation, kernel_hw):
  """One image's (Ho, Wo, bc) output block; x_ref: (H, W, bc), w_ref: (kh·kw, bc)."""
  h, w, _ = x_ref.shape
  out_h, out_w, _ = o_ref.shape
  kh, kw = kernel_hw
  (sh, sw), (dh, dw), ((top, _), (left, _)) = strides, dilation, padding
  acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
  for i in range(kh):
    r0, r1 = _valid_range(h, out_h, sh, i * dh - top)
    for j in range(kw):
      c0, c1 = _valid_range(w, out_w, sw, j * dw - left)
      if r0 == r1 or c0 == c1:
        continue
      window = x_ref[pl.ds(r0 * sh + i * dh - top, r1 - r0, stride=sh),
                     pl.ds(c0 * sw + j * dw - left, c1 - c0, stride=sw), :]
      tap = w_ref[pl.ds(i * kw + j, 1), :].astype(jnp.float32)
      acc_ref[r0:r1, c0:c1, :] += window.astype(jnp.float32) * tap
  o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def tpu_depthwise(x: jax.Array, kernel: jax.Array, strides: Pair, padding: Padding,
                  dilation: Pair, *, interpret: bool = False) -> jax.Array:
  """The Mosaic kernel (one VMEM image slab per program); ``interpret=True`` runs it anywhere.

  Args and result as :func:`depthwise_conv`. Grid: (N, C·m / bc), bc = ``TPU_BLOCK_C`` when it
  divides C·m, else C·m. VMEM: two buffers each of the (H, W, bc) input and (Ho, Wo, bc) output
  blocks plus an f32 (Ho, Wo, bc) accumulator (about 19 MiB for 112x112x128 bf16); the limit is
  raised to fit, so very large maps can exceed a chip's VMEM (64 MiB on v7x). A multiplier m > 1
  first repeats x's channels m times in HBM. Cost: N·Ho·Wo·kh·kw·C·m MACs.
  """
  n, h, w, c = x.shape
  kh, kw, _, cout = kernel.shape
  out_h, out_w = shifted.output_hw((h, w), (kh, kw), strides, padding, dilation)
  x = jnp.repeat(x, cout // c, axis=-1)
  bc = TPU_BLOCK_C if cout % TPU_BLOCK_C == 0 else cout
  itemsize = jnp.dtype(x.dtype).itemsize
  vmem = (2 * (h * w + out_h * out_w) * itemsize + out_h * out_w * 4) * bc + 2 * kh * kw * bc * 4
  body = functools.partial(_tpu_kernel, strides=strides, padding=padding, dilation=dilation,
                           kernel_hw=(kh, kw))
  return pl.pallas_call(
      body,
      out_shape=jax.ShapeDtypeStruct((n, out_h, out_w, cout), x.dtype),
      grid=(n, cout // bc),
      in_specs=[pl.BlockSpec((None, h, w, bc), lambda b, k: (b, 0, 0, k)),
                pl.BlockSpec((kh * kw, bc), lambda b, k: (0, k))],
      out_specs=pl.BlockSpec((None, out_h, out_w, bc), lambda b, k: (b, 0, 0, k)),
      scratch_shapes=[pltpu.VMEM((out_h, out_w, bc), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel"),
          vmem_limit_bytes=max(32 << 20, vmem + (vmem >> 2))),
      interpret=interpret,
      name="pwconv_depthwise_tpu",
  )(x, kernel.reshape(kh * kw, cout))


def _forward(x, kernel, strides, padding, dilation):
  backend = jax.default_backend()
  if backend == "tpu":
    return tpu_depthwise(x, kernel, strides, padding, dilation)
  return gpu_depthwise(x, kernel, strides, padding, dilation, interpret=backend != "gpu")


depthwise_conv = primitive.bilinear_depthwise("pwconv_pallas_depthwise", _forward,
                                              shifted.input_grad, shifted.weight_grad)
depthwise_conv.__doc__ = """Depthwise convolution by a Pallas kernel; backward by :mod:`pwconv.kernels.shifted`.

Args:
  x: (N, H, W, C), any float dtype.
  kernel: (kh, kw, 1, C·m), same dtype; output channel c·m + j filters input channel c with
    ``kernel[..., 0, c·m + j]``.
  strides: (sh, sw), each >= 1.
  padding: ((top, bottom), (left, right)), non-negative; may be asymmetric or exceed the kernel.
  dilation: (dh, dw), each >= 1.

Returns:
  (N, Ho, Wo, C·m) in x's dtype, accumulated in f32. Cost: N·Ho·Wo·kh·kw·C·m MACs. Forward-mode
  derivatives run the Pallas kernel on the tangents.
"""
