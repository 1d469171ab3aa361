"""PointwiseConv and DepthwiseConv against flax.linen.Conv with the same parameters."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

import pwconv


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


class PointwiseConvTest(parameterized.TestCase):

  @parameterized.product(groups=(1, 3), strides=((1, 1), (2, 2), (1, 3)), use_bias=(False, True))
  def test_equals_nn_conv(self, groups, strides, use_bias):
    x = _x((2, 7, 8, 6))
    layer = pwconv.PointwiseConv(9, groups=groups, strides=strides, use_bias=use_bias)
    variables = layer.init(jax.random.key(1), x)
    kernel = variables["params"]["kernel"]
    chex.assert_shape(kernel, (6 // groups, 9))
    conv = nn.Conv(9, (1, 1), strides=strides, feature_group_count=groups, use_bias=use_bias)
    conv_params = {"kernel": kernel[None, None]}
    if use_bias:
      conv_params["bias"] = jax.random.normal(jax.random.key(2), (9,))
      variables = {"params": {"kernel": kernel, "bias": conv_params["bias"]}}
    y = layer.apply(variables, x)
    chex.assert_shape(y, (2, -(-7 // strides[0]), -(-8 // strides[1]), 9))
    chex.assert_trees_all_close(y, conv.apply({"params": conv_params}, x), rtol=1e-5, atol=1e-5)

  def test_he_fan_out_init_as_torchvision(self):
    # std sqrt(2 / fan_out), fan_out = Cout·kh·kw: torchvision's kaiming_normal_(mode="fan_out").
    x = jnp.zeros((1, 4, 4, 256))
    ours = pwconv.PointwiseConv(128).init(jax.random.key(0), x)["params"]["kernel"]
    conv = nn.Conv(128, (3, 3), kernel_init=pwconv.layers.he_normal).init(jax.random.key(0), x)
    self.assertAlmostEqual(float(jnp.std(ours)), (2 / 128) ** 0.5, delta=0.002)
    self.assertAlmostEqual(float(jnp.std(conv["params"]["kernel"])), (2 / (128 * 9)) ** 0.5,
                           delta=0.001)

  def test_bf16_compute_f32_params(self):
    x = _x((2, 4, 4, 8))
    layer = pwconv.PointwiseConv(16, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(1), x)
    self.assertEqual(variables["params"]["kernel"].dtype, jnp.float32)
    y = layer.apply(variables, x)
    self.assertEqual(y.dtype, jnp.bfloat16)
    y32 = pwconv.PointwiseConv(16).apply(variables, x)
    chex.assert_trees_all_close(y.astype(jnp.float32), y32, atol=0.05, rtol=0.05)

  @parameterized.parameters(
      (dict(features=0), ValueError, "PointwiseConv: features must be >= 1, got 0"),
      (dict(features=4, groups=-1), ValueError, "PointwiseConv: groups must be >= 1, got -1"),
      (dict(features=4, strides=(0, 1)), ValueError, "PointwiseConv: strides must be >= 1, got 0"),
      (dict(features=4.0), TypeError, "PointwiseConv: features must be an int"),
  )
  def test_bad_fields(self, kwargs, error, message):
    with self.assertRaisesRegex(error, message):
      pwconv.PointwiseConv(**kwargs)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "PointwiseConv: groups=4 must divide the input channels 6"):
      pwconv.PointwiseConv(8, groups=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))
    with self.assertRaisesRegex(ValueError, "PointwiseConv: groups=2 must divide features=5"):
      pwconv.PointwiseConv(5, groups=2).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))
    with self.assertRaisesRegex(ValueError, r"PointwiseConv: x must have rank 4 \(N, H, W, C\)"):
      pwconv.PointwiseConv(5).init(jax.random.key(0), jnp.zeros((2, 6)))


class DepthwiseConvTest(parameterized.TestCase):

  @parameterized.product(
      kernel_size=((3, 3), (5, 3)), strides=((1, 1), (2, 2)), dilation=((1, 1), (2, 2)),
      depth_multiplier=(1, 2))
  def test_equals_nn_conv_feature_groups(self, kernel_size, strides, dilation, depth_multiplier):
    x = _x((2, 9, 8, 4))
    layer = pwconv.DepthwiseConv(kernel_size, strides, dilation=dilation,
                                 depth_multiplier=depth_multiplier, use_bias=True)
    variables = layer.init(jax.random.key(1), x)
    conv = nn.Conv(4 * depth_multiplier, kernel_size, strides, kernel_dilation=dilation,
                   feature_group_count=4, use_bias=True)
    # The parameters are stored exactly as nn.Conv stores them, so they move across unchanged.
    chex.assert_trees_all_equal_shapes(variables, conv.init(jax.random.key(1), x))
    variables = jax.tree.map(lambda v: v + 0.1, variables)
    chex.assert_trees_all_close(layer.apply(variables, x), conv.apply(variables, x),
                                rtol=1e-5, atol=1e-5)

  def test_bf16_compute_f32_params(self):
    x = _x((2, 8, 8, 8))
    layer = pwconv.DepthwiseConv(dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(1), x)
    self.assertEqual(variables["params"]["kernel"].dtype, jnp.float32)
    self.assertEqual(layer.apply(variables, x).dtype, jnp.bfloat16)

  @parameterized.parameters(
      (dict(depth_multiplier=0), ValueError, "DepthwiseConv: depth_multiplier must be >= 1, got 0"),
      (dict(kernel_size=(3, 0)), ValueError, "DepthwiseConv: kernel_size must be >= 1, got 0"),
      (dict(strides=-1), ValueError, "DepthwiseConv: strides must be >= 1, got -1"),
      (dict(dilation=(1, 1, 1)), TypeError, "DepthwiseConv: dilation must be an int or a pair"),
      (dict(impl="triton"), ValueError, "DepthwiseConv: impl must be one of"),
  )
  def test_bad_fields(self, kwargs, error, message):
    with self.assertRaisesRegex(error, message):
      pwconv.DepthwiseConv(**kwargs)

  def test_bad_padding(self):
    with self.assertRaisesRegex(ValueError, "DepthwiseConv: padding must be one of"):
      pwconv.DepthwiseConv(padding="FULL")
    layer = pwconv.DepthwiseConv(padding=((1, 1), (1, -1)))  # checked against the input at call time
    with self.assertRaisesRegex(ValueError, "depthwise_conv: padding must be >= 0, got -1"):
      layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))


if __name__ == "__main__":
  pytest.main([__file__])
