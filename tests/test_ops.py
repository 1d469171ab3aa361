"""pwconv.ops against plain lax / flax references: values, gradients, dtypes and errors."""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import lax
from jax.test_util import check_grads

from pwconv import kernels
from pwconv import ops


def _normal(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _block_diagonal(kernel, channels):
  """The dense (kh, kw, C, C·m) kernel equal to a depthwise (kh, kw, 1, C·m) kernel."""
  kh, kw, _, cm = kernel.shape
  m = cm // channels
  mask = (jnp.arange(channels)[:, None] == (jnp.arange(cm)[None, :] // m)).astype(kernel.dtype)
  return kernel * mask[None, None]


class PointwiseConvTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(groups=(1, 2, 4), shape=((2, 5, 7, 8), (1, 1, 1, 16)))
  def test_equals_flax_conv_1x1(self, groups, shape):
    x = _normal(0, shape)
    conv = nn.Conv(12, (1, 1), feature_group_count=groups, use_bias=False)
    variables = conv.init(jax.random.key(1), x)
    kernel = variables["params"]["kernel"]
    y = self.variant(lambda x, k: ops.pointwise_conv(x, k, groups=groups))(x, kernel[0, 0])
    chex.assert_shape(y, shape[:3] + (12,))
    chex.assert_trees_all_close(y, conv.apply(variables, x), rtol=1e-5, atol=1e-5)

  def test_gradients(self):
    x, k = _normal(0, (2, 3, 3, 6)), _normal(1, (3, 4))
    check_grads(lambda x, k: ops.pointwise_conv(x, k, groups=2), (x, k), order=2, modes=("rev",))

  def test_bf16_close_to_f32(self):
    x, k = _normal(0, (2, 8, 8, 64)), _normal(1, (64, 32)) / 8
    y32 = ops.pointwise_conv(x, k)
    y16 = ops.pointwise_conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    self.assertEqual(y16.dtype, jnp.bfloat16)
    chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=0.05, rtol=0.05)

  @parameterized.parameters(
      (np.zeros((2, 4, 4)), np.zeros((4, 2)), ValueError, "pointwise_conv: x must have rank 4"),
      (np.zeros((1, 4, 4, 6)), np.zeros((4, 2)), ValueError, r"kernel must have shape \(6, Cout\)"),
      (np.zeros((1, 4, 4, 6)), np.zeros((6,)), ValueError, "kernel must have rank 2"),
      (np.zeros((1, 4, 4, 6), np.int32), np.zeros((6, 2)), TypeError, "x must have a floating dtype"),
  )
  def test_bad_input(self, x, kernel, error, message):
    with self.assertRaisesRegex(error, message):
      ops.pointwise_conv(jnp.asarray(x), jnp.asarray(kernel))

  @parameterized.parameters((4, 0, ValueError, "groups must be >= 1"),
                            (6, 4, ValueError, "groups=4 must divide the input channels 6"),
                            (6, 3, ValueError, "groups=3 must divide the output channels 4"),
                            (6, 1.5, TypeError, "groups must be an int"))
  def test_bad_groups(self, cin, groups, error, message):
    x = jnp.zeros((1, 2, 2, cin))
    kernel = jnp.zeros((2, 4))
    with self.assertRaisesRegex(error, f"pointwise_conv: {message}"):
      ops.pointwise_conv(x, kernel, groups=groups)


PADDINGS = ("SAME", "VALID", 0, 2, ((0, 2), (1, 0)), ((3, 1), (2, 2)))


class DepthwiseConvTest(parameterized.TestCase):

  @parameterized.parameters(*[
      (padding, strides, *rest) for padding, strides, rest in itertools.product(
          PADDINGS, (1, 2, (1, 3)), ((1, 1, (3, 3)), (2, 3, (5, 5)), ((2, 1), 2, (3, 2))))])
  def test_reference_equals_block_diagonal_dense_conv(self, padding, strides, dilation, multiplier,
                                                      kernel_size):
    c = 4
    x = _normal(0, (2, 11, 10, c))
    kernel = _normal(1, (*kernel_size, 1, c * multiplier))
    y = ops.depthwise_conv(x, kernel, strides=strides, padding=padding, dilation=dilation, impl="xla")
    pads = ops.conv_padding("test", padding, x.shape[1:3], kernel_size,
                            ops.validate.int_pair("t", "s", strides),
                            ops.validate.int_pair("t", "d", dilation))
    dense = lax.conv_general_dilated(
        x, _block_diagonal(kernel, c), ops.validate.int_pair("t", "s", strides), pads,
        rhs_dilation=ops.validate.int_pair("t", "d", dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    chex.assert_trees_all_close(y, dense, rtol=1e-4, atol=1e-4)

  @parameterized.parameters(
      ("SAME", 1, (11, 10)), ("SAME", 2, (6, 5)), ("SAME", 3, (4, 4)), ("VALID", 1, (9, 8)),
      ("VALID", 2, (5, 4)), (1, 1, (11, 10)), (((0, 2), (1, 0)), 1, (11, 9)))
  def test_output_size(self, padding, strides, hw):
    y = ops.depthwise_conv(jnp.zeros((1, 11, 10, 3)), jnp.zeros((3, 3, 1, 6)), strides=strides,
                           padding=padding)
    chex.assert_shape(y, (1, *hw, 6))

  def test_same_matches_flax(self):
    x = _normal(0, (2, 9, 8, 6))
    conv = nn.Conv(12, (3, 3), strides=(2, 2), kernel_dilation=(2, 2), feature_group_count=6,
                   use_bias=False, padding="SAME")
    variables = conv.init(jax.random.key(1), x)
    y = ops.depthwise_conv(x, variables["params"]["kernel"], strides=2, dilation=2)
    chex.assert_trees_all_close(y, conv.apply(variables, x), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*kernels.names())
  def test_every_impl_equals_reference(self, impl):
    x, k = _normal(0, (2, 7, 6, 4)), _normal(1, (3, 3, 1, 8))
    fn = self.variant(lambda x, k: ops.depthwise_conv(x, k, strides=2, padding=((1, 0), (2, 1)),
                                                      impl=impl))
    ref = ops.depthwise_conv(x, k, strides=2, padding=((1, 0), (2, 1)), impl="xla")
    chex.assert_trees_all_close(fn(x, k), ref, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(("SAME", 1, 1), ("VALID", 2, 1), (((0, 2), (1, 0)), 1, 2))
  def test_gradients(self, padding, strides, dilation):
    x, k = _normal(0, (2, 6, 5, 3)), _normal(1, (3, 3, 1, 6))
    # The op is bilinear, so a large finite-difference step is exact up to rounding; the default
    # 1e-4 step alone gives f32 rounding noise near the 0.2% tolerance.
    for impl in ("xla", "auto"):
      check_grads(lambda x, k: ops.depthwise_conv(x, k, strides=strides, padding=padding,
                                                  dilation=dilation, impl=impl),
                  (x, k), order=1, modes=("rev",), eps=1e-2)

  def test_bf16_close_to_f32(self):
    x, k = _normal(0, (2, 16, 16, 32)), _normal(1, (3, 3, 1, 32)) / 3
    y32 = ops.depthwise_conv(x, k)
    y16 = ops.depthwise_conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    self.assertEqual(y16.dtype, jnp.bfloat16)
    chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=0.05, rtol=0.05)

  @parameterized.parameters(
      (dict(x=np.zeros((4, 4, 3))), ValueError, "x must have rank 4"),
      (dict(kernel=np.zeros((3, 3, 3))), ValueError, "kernel must have rank 4"),
      (dict(kernel=np.zeros((3, 3, 1, 5))), ValueError, r"kernel must have shape \(kh, kw, 1, 3 \*"),
      (dict(kernel=np.zeros((3, 3, 2, 6))), ValueError, r"kernel must have shape \(kh, kw, 1, 3 \*"),
      (dict(strides=0), ValueError, "strides must be >= 1, got 0"),
      (dict(strides=(1, -2)), ValueError, "strides must be >= 1, got -2"),
      (dict(strides=(1, 2, 3)), TypeError, "strides must be an int or a pair"),
      (dict(dilation=0), ValueError, "dilation must be >= 1, got 0"),
      (dict(padding="same"), ValueError, r"padding must be one of \['SAME', 'VALID'\], got 'same'"),
      (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
      (dict(padding=((1, 1),)), TypeError, "padding must be 'SAME', 'VALID', an int"),
      (dict(padding=((1, -1), (0, 0))), ValueError, "padding must be >= 0, got -1"),
      (dict(impl="cudnn"), ValueError, "impl must be one of"),
      (dict(padding="VALID", kernel=np.zeros((7, 7, 1, 3))), ValueError, r"input \(5, 5\) is too small for a 7x7 kernel"),
  )
  def test_bad_input(self, overrides, error, message):
    args = dict(x=np.zeros((1, 5, 5, 3), np.float32), kernel=np.zeros((3, 3, 1, 3), np.float32))
    args.update(overrides)
    x, kernel = jnp.asarray(args.pop("x")), jnp.asarray(args.pop("kernel"))
    with self.assertRaisesRegex(error, f"depthwise_conv: {message}"):
      ops.depthwise_conv(x, kernel, **args)


class ChannelShuffleTest(parameterized.TestCase):

  @parameterized.parameters((2, 6), (3, 12), (4, 8), (1, 5))
  def test_permutation(self, groups, channels):
    x = jnp.broadcast_to(jnp.arange(channels, dtype=jnp.float32), (1, 2, 2, channels))
    y = ops.channel_shuffle(x, groups)
    k = channels // groups
    # Channel a·k + b of the input lands at b·g + a.
    expected = np.empty(channels)
    for a in range(groups):
      for b in range(k):
        expected[b * groups + a] = a * k + b
    np.testing.assert_array_equal(np.asarray(y[0, 0, 0]), expected)
    # Shuffling with k groups undoes shuffling with g groups.
    np.testing.assert_array_equal(ops.channel_shuffle(y, k), x)

  def test_gradient(self):
    check_grads(lambda x: ops.channel_shuffle(x, 3), (_normal(0, (1, 2, 2, 6)),), order=1)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "channel_shuffle: groups=4 must divide the channels 6"):
      ops.channel_shuffle(jnp.zeros((1, 2, 2, 6)), 4)
    with self.assertRaisesRegex(ValueError, "channel_shuffle: groups must be >= 1, got 0"):
      ops.channel_shuffle(jnp.zeros((1, 2, 2, 6)), 0)
    with self.assertRaisesRegex(ValueError, "channel_shuffle: x must have rank 4"):
      ops.channel_shuffle(jnp.zeros((2, 6)), 2)



def test_numpy_scalars_and_arrays_as_sizes():
  # padding=np.int64(1) and strides=np.array([1, 2]) were refused: what numpy-computed sizes look like.
  x, kernel = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 1, 2))
  expected = ops.depthwise_conv(x, kernel, padding=1, strides=(1, 2), impl="xla")
  got = ops.depthwise_conv(x, kernel, padding=np.int64(1), strides=np.array([1, 2]), impl="xla")
  np.testing.assert_array_equal(got, expected)
  got = ops.depthwise_conv(x, kernel, padding=np.array([[1, 1], [1, 1]]), strides=np.int32(1),
                           impl="xla")
  assert got.shape == (1, 6, 6, 2)


if __name__ == "__main__":
  pytest.main([__file__])
