"""The reference depthwise convolution: XLA's grouped convolution."""

from __future__ import annotations

import jax
from jax import lax


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   padding: tuple[tuple[int, int], tuple[int, int]],
                   dilation: tuple[int, int]) -> jax.Array:
  """``lax.conv_general_dilated`` with ``feature_group_count = C``; x NHWC, kernel HWIO."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
