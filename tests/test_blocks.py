"""Blocks: shapes over strides/kernels/dtypes, jit agreement, exact compositions, knobs and errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx
from flax.nnx import bridge
from jax import lax

import pwconv

CIN = 16


def _x(shape=(2, 8, 8, CIN), seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _make(name, strides=(1, 1), kernel_size=(3, 3), **kw):
  """Each block family, mapping CIN -> 32 channels (Inception/Fire by their branch widths)."""
  return {
      "dense": lambda: pwconv.DenseConv(32, kernel_size, strides, **kw),
      "bottleneck": lambda: pwconv.Bottleneck(32, 8, kernel_size, strides, **kw),
      "bottleneck_reduce": lambda: pwconv.Bottleneck(32, 8, kernel_size, strides, expand=False, **kw),
      "separable": lambda: pwconv.DepthwiseSeparable(32, kernel_size, strides, **kw),
      "inverted_residual": lambda: pwconv.InvertedResidual(32, 4, kernel_size, strides, **kw),
      "inverted_residual_se": lambda: pwconv.InvertedResidual(32, 4, kernel_size, strides,
                                                              se_ratio=0.25, **kw),
      "shuffle": lambda: pwconv.ShuffleUnit(48 if strides in ((2, 2), 2) else 32, groups=4,
                                            strides=strides, **kw),
      "mlpconv": lambda: pwconv.MLPConv(32, kernel_size, strides, **kw),
      "fire": lambda: pwconv.FireModule(4, 16, 16, **kw),
      "inception": lambda: pwconv.InceptionModule(8, 4, 12, 2, 4, 8, **kw),
  }[name]()


STRIDED = ("dense", "bottleneck", "bottleneck_reduce", "separable", "inverted_residual",
           "inverted_residual_se", "shuffle", "mlpconv")
ALL = STRIDED + ("fire", "inception")


def _out_channels(name, strides):
  return 48 if name == "shuffle" and strides == (2, 2) else 32


class ShapeTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[  # ShuffleNet's depthwise conv is always 3x3
      (name, strides, kernel_size) for name in STRIDED for strides in ((1, 1), (2, 2))
      for kernel_size in ((3, 3), (5, 5)) if name != "shuffle" or kernel_size == (3, 3)])
  def test_strided_blocks(self, name, strides, kernel_size):
    block = _make(name, strides, kernel_size)
    x = _x((2, 9, 8, CIN))
    variables = block.init(jax.random.key(1), x)
    y = self.variant(lambda v, x: block.apply(v, x))(variables, x)
    s = strides[0]
    chex.assert_shape(y, (2, -(-9 // s), -(-8 // s), _out_channels(name, strides)))
    chex.assert_tree_all_finite(y)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("fire", "inception")
  def test_unstrided_blocks(self, name):
    block = _make(name)
    x = _x()
    y = self.variant(lambda v, x: block.apply(v, x))(block.init(jax.random.key(1), x), x)
    chex.assert_shape(y, (2, 8, 8, 32))

  @parameterized.parameters(*STRIDED)
  def test_int_sizes_mean_square(self, name):
    kernel_size = 3 if name == "shuffle" else 5
    pair = _make(name, (2, 2), (kernel_size, kernel_size))
    ints = _make(name, 2, kernel_size)
    x = _x()
    variables = pair.init(jax.random.key(1), x)
    chex.assert_trees_all_equal(ints.apply(variables, x), pair.apply(variables, x))
    dense = ints.dense_equivalent(CIN)
    chex.assert_shape(dense.apply(dense.init(jax.random.key(1), x), x), pair.apply(variables, x).shape)

  @parameterized.parameters(*ALL)
  def test_bf16_compute_close_to_f32(self, name):
    x = _x()
    block32 = _make(name)
    block16 = _make(name, dtype=jnp.bfloat16)
    variables = block32.init(jax.random.key(1), x)
    y16 = block16.apply(variables, x)
    self.assertEqual(y16.dtype, jnp.bfloat16)
    for leaf in jax.tree.leaves(block16.init(jax.random.key(1), x)):
      self.assertEqual(leaf.dtype, jnp.float32)  # params stay float32
    y32 = block32.apply(variables, x)
    scale = float(jnp.max(jnp.abs(y32)))
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.04 * scale)

  @parameterized.parameters(*ALL)
  def test_train_updates_batch_stats(self, name):
    block = _make(name)
    x = _x()
    variables = block.init(jax.random.key(1), x)
    y, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_tree_all_finite(y)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    self.assertTrue(any(not np.allclose(a, b) for a, b in zip(before, after)))

  @parameterized.parameters(*[
      (name, norm, act) for i, name in enumerate(ALL) for norm, act in (
          (None, None),
          ((functools.partial(nn.GroupNorm, num_groups=2), nn.LayerNorm)[i % 2],
           (jax.nn.relu6, nn.swish, nn.gelu)[i % 3]))])
  def test_norm_and_act_options(self, name, norm, act):
    block = _make(name, norm=norm, act=act)
    x = _x()
    variables = block.init(jax.random.key(1), x)
    self.assertNotIn("batch_stats", variables)
    y = block.apply(variables, x)
    chex.assert_tree_all_finite(y)
    has_norm = any("_norm" in "/".join(map(str, p))
                   for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0])
    self.assertEqual(has_norm, norm is not None)


class CompositionTest(parameterized.TestCase):

  @parameterized.product(strides=((1, 1), (2, 2)), depth_multiplier=(1, 2),
                         kernel_size=((3, 3), (5, 5)))
  def test_separable_is_one_dense_conv(self, strides, depth_multiplier, kernel_size):
    """Without norm and activation, depthwise then pointwise is one conv with the composed kernel."""
    x = _x((2, 9, 9, 6))
    block = pwconv.DepthwiseSeparable(10, kernel_size, strides, depth_multiplier, norm=None, act=None,
                                      use_bias=False)
    params = block.init(jax.random.key(1), x)["params"]
    dw = params["depthwise"]["kernel"]        # (kh, kw, 1, 6·m)
    pw = params["pointwise"]["kernel"]        # (6·m, 10)
    m = depth_multiplier
    # W[i, j, c, f] = sum_k dw[i, j, 0, c·m + k] · pw[c·m + k, f]
    composed = jnp.einsum("ijck,ckf->ijcf", dw[:, :, 0].reshape(*kernel_size, 6, m),
                          pw.reshape(6, m, 10))
    dense = lax.conv_general_dilated(x, composed, strides, "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=lax.Precision.HIGHEST)
    chex.assert_trees_all_close(block.apply({"params": params}, x), dense, rtol=1e-4, atol=1e-4)

  def test_bottleneck_reduction_is_two_convs(self):
    x = _x((1, 6, 6, 8))
    block = pwconv.Bottleneck(4, 2, (5, 5), expand=False, residual=False, norm=None, act=None,
                              use_bias=False)
    p = block.init(jax.random.key(1), x)["params"]
    mid = jnp.einsum("nhwc,cf->nhwf", x, p["reduce"]["kernel"])
    expected = lax.conv_general_dilated(mid, p["conv"]["kernel"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(block.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-5)

  def test_shuffle_unit_stride2_concatenates_pooled_input(self):
    x = _x((1, 8, 8, CIN))
    block = pwconv.ShuffleUnit(48, groups=4, strides=(2, 2), act=None)
    y = block.apply(block.init(jax.random.key(1), x), x)
    pooled = nn.avg_pool(x, (3, 3), (2, 2), "SAME", count_include_pad=False)
    chex.assert_trees_all_close(y[..., 32:], pooled, rtol=1e-6, atol=1e-6)

  def test_mlpconv_adds_nonlinear_layers(self):
    x = _x((1, 6, 6, 4))
    for layers in (0, 1, 3):
      block = pwconv.MLPConv(8, pointwise_layers=layers, norm=None)
      params = block.init(jax.random.key(1), x)["params"]
      self.assertEqual(sorted(params), ["conv"] + [f"pointwise{i}" for i in range(layers)])
      # Every layer ends in a ReLU: scaling the input by -1 is not the same as scaling the output.
      y = block.apply({"params": params}, x)
      self.assertGreaterEqual(float(jnp.min(y)), 0.0)


class ResidualTest(parameterized.TestCase):

  def test_zero_init_last_makes_residual_blocks_start_as_identity(self):
    x = jax.nn.relu(_x((2, 8, 8, 32)))
    for block in (pwconv.Bottleneck(32, 8, zero_init_last=True),
                  pwconv.InvertedResidual(32, 4, zero_init_last=True),
                  pwconv.DepthwiseSeparable(32, residual=True, zero_init_last=True),
                  pwconv.ShuffleUnit(32, groups=4, zero_init_last=True)):
      variables = block.init(jax.random.key(1), x)
      chex.assert_trees_all_close(block.apply(variables, x), x, atol=1e-6)
      # ... and without the option they do not.
      plain = block.clone(zero_init_last=False)
      self.assertGreater(float(jnp.max(jnp.abs(plain.apply(plain.init(jax.random.key(1), x), x) - x))),
                         0.01)

  def test_zero_init_last_leaves_blocks_without_a_shortcut_alone(self):
    x = jax.nn.relu(_x((2, 8, 8, 32)))
    for block in (pwconv.DenseConv(32), pwconv.MLPConv(32, pointwise_layers=2),
                  pwconv.Bottleneck(32, 8, residual=False), pwconv.Bottleneck(32, 8, expand=False),
                  pwconv.InvertedResidual(48, 4), pwconv.DepthwiseSeparable(32),
                  pwconv.FireModule(8, 16, 16), pwconv.ShuffleUnit(64, groups=4, strides=2),
                  pwconv.InceptionModule(8, 8, 8, 4, 4, 4)):
      variables = block.init(jax.random.key(1), x)
      zeroed = block.clone(zero_init_last=True)
      chex.assert_trees_all_equal(zeroed.init(jax.random.key(1), x), variables)
    # So a network handed the knob for every block still sees its input.
    model = pwconv.models.SmallNet(block="inverted_residual", num_classes=4, zero_init_last=True)
    images = _x((2, 8, 8, 1))
    logits = model.apply(model.init(jax.random.key(0), images), images)
    self.assertGreater(float(jnp.max(jnp.abs(logits[0] - logits[1]))), 1e-4)

  def test_inverted_residual_default_shortcut(self):
    x = _x((1, 8, 8, 16))
    same = pwconv.InvertedResidual(16).init(jax.random.key(0), x)["params"]
    wider = pwconv.InvertedResidual(24).init(jax.random.key(0), x)["params"]
    forced = pwconv.InvertedResidual(24, residual=True).init(jax.random.key(0), x)["params"]
    self.assertNotIn("shortcut", same)      # identity shortcut
    self.assertNotIn("shortcut", wider)     # no shortcut: shapes differ
    chex.assert_shape(forced["shortcut"]["kernel"], (16, 24))   # projection on request

  def test_bottleneck_projection_shortcut_is_strided(self):
    x = _x((1, 8, 8, 16))
    block = pwconv.Bottleneck(64, 16, strides=(2, 2))
    variables = block.init(jax.random.key(0), x)
    chex.assert_shape(variables["params"]["shortcut"]["kernel"], (16, 64))
    chex.assert_shape(block.apply(variables, x), (1, 4, 4, 64))


class DenseEquivalentTest(parameterized.TestCase):

  @parameterized.parameters(*STRIDED)
  def test_same_input_output_and_stride(self, name):
    block = _make(name, (2, 2), (5, 5) if name != "shuffle" else (3, 3))
    dense = block.dense_equivalent(CIN)
    self.assertIsInstance(dense, pwconv.DenseConv)
    x = _x()
    y = block.apply(block.init(jax.random.key(0), x), x)
    yd = dense.apply(dense.init(jax.random.key(0), x), x)
    self.assertEqual(y.shape, yd.shape)

  def test_inception_naive_module(self):
    block = _make("inception")
    naive = block.dense_equivalent(CIN)
    self.assertTrue(naive.naive)
    x = _x()
    y = naive.apply(naive.init(jax.random.key(0), x), x)
    chex.assert_shape(y, (2, 8, 8, 8 + 12 + 4 + CIN))   # the pooled input is concatenated

  def test_squeeze_excite_stands_in_for_nothing(self):
    self.assertIsInstance(pwconv.SqueezeExcite().dense_equivalent(8), pwconv.Identity)

  def test_bad_in_features(self):
    with self.assertRaisesRegex(ValueError, "Bottleneck: in_features must be >= 1, got 0"):
      _make("bottleneck").dense_equivalent(0)


class SqueezeExciteTest(parameterized.TestCase):

  def test_rescales_channels_by_a_gate_in_0_1(self):
    x = jax.nn.relu(_x((2, 4, 4, 8))) + 0.1
    block = pwconv.SqueezeExcite(ratio=0.25)
    variables = block.init(jax.random.key(0), x)
    chex.assert_shape(variables["params"]["reduce"]["kernel"], (8, 2))
    y = block.apply(variables, x)
    gate = y / x
    # One gate value per (example, channel), shared by every pixel, strictly inside (0, 1).
    chex.assert_trees_all_close(gate, jnp.broadcast_to(gate[:, :1, :1], gate.shape), rtol=1e-5)
    self.assertTrue(bool(jnp.all((gate > 0) & (gate < 1))))


class BadInputTest(parameterized.TestCase):

  @parameterized.parameters(
      (lambda: pwconv.Bottleneck(0, 8), "Bottleneck: features must be >= 1, got 0"),
      (lambda: pwconv.Bottleneck(8, -1), "Bottleneck: reduced_features must be >= 1, got -1"),
      (lambda: pwconv.Bottleneck(8, 4, strides=(0, 1)), "Bottleneck: strides must be >= 1, got 0"),
      (lambda: pwconv.DepthwiseSeparable(8, depth_multiplier=0),
       "DepthwiseSeparable: depth_multiplier must be >= 1, got 0"),
      (lambda: pwconv.DepthwiseSeparable(8, padding="same"),
       r"DepthwiseSeparable: padding must be one of \['SAME', 'symmetric'\]"),
      (lambda: pwconv.InvertedResidual(8, expansion=0), "InvertedResidual: expansion must be >= 1"),
      (lambda: pwconv.InvertedResidual(8, se_ratio=1.5),
       r"InvertedResidual: se_ratio must be in \(0, 1\], got 1.5"),
      (lambda: pwconv.InceptionModule(8, 4, 8, 0, 4, 4), "InceptionModule: f5x5_reduce must be >= 1"),
      (lambda: pwconv.FireModule(0, 8, 8), "FireModule: squeeze must be >= 1, got 0"),
      (lambda: pwconv.ShuffleUnit(24, groups=0), "ShuffleUnit: groups must be >= 1, got 0"),
      (lambda: pwconv.ShuffleUnit(24, strides=(3, 3)),
       r"ShuffleUnit: strides must be \(1, 1\) or \(2, 2\)"),
      (lambda: pwconv.MLPConv(8, pointwise_layers=-1), "MLPConv: pointwise_layers must be >= 0"),
      (lambda: pwconv.SqueezeExcite(ratio=0), r"SqueezeExcite: ratio must be in \(0, 1\], got 0"),
      (lambda: pwconv.DenseConv(8, kernel_size=(3, 3, 3)), "DenseConv: kernel_size must be an int or"),
  )
  def test_bad_fields(self, make, message):
    with self.assertRaisesRegex((ValueError, TypeError), message):
      make()

  @parameterized.parameters(*ALL)
  def test_wrong_rank(self, name):
    block = _make(name)
    with self.assertRaisesRegex(ValueError, r": x must have rank 4 \(N, H, W, C\), got shape \(8, 8, 16\)"):
      block.init(jax.random.key(0), jnp.zeros((8, 8, CIN)))

  def test_shuffle_channel_checks(self):
    with self.assertRaisesRegex(ValueError, "ShuffleUnit: with strides .2, 2. features must exceed "
                                            "the input channels 16"):
      pwconv.ShuffleUnit(16, groups=4, strides=(2, 2)).init(jax.random.key(0), _x())
    with self.assertRaisesRegex(ValueError, "ShuffleUnit: groups=3 must divide the input channels 16"):
      pwconv.ShuffleUnit(48, groups=3).init(jax.random.key(0), _x())
    with self.assertRaisesRegex(ValueError, "ShuffleUnit: groups=3 must divide the main branch"):
      pwconv.ShuffleUnit(32, groups=3, group_first=False).init(jax.random.key(0), _x())


class NNXBridgeTest(parameterized.TestCase):

  @parameterized.parameters("bottleneck", "separable", "inverted_residual_se")
  def test_to_nnx_matches_linen(self, name):
    block = _make(name, (2, 2))
    x = _x()
    model = bridge.ToNNX(block, rngs=nnx.Rngs(0))
    bridge.lazy_init(model, x)
    y_nnx = model(x)
    variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                 "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
    chex.assert_trees_all_close(y_nnx, block.apply(variables, x), rtol=1e-6, atol=1e-6)
    chex.assert_shape(y_nnx, (2, 4, 4, 32))


class FidelityTest(parameterized.TestCase):
  """The paper-fidelity fixes of the faithful-models issue."""

  def _fire(self, x, residual=True):
    block = pwconv.FireModule(4, 8, 8, residual=residual, norm=None, use_bias=False)
    params = block.init(jax.random.key(1), x)["params"]
    squeezed = jax.nn.relu(jnp.einsum("nhwc,cf->nhwf", x, params["squeeze"]["kernel"]))
    expand3x3 = lax.conv_general_dilated(squeezed, params["expand3x3"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=lax.Precision.HIGHEST)
    expanded = jnp.concatenate(
        [jax.nn.relu(jnp.einsum("nhwc,cf->nhwf", squeezed, params["expand1x1"]["kernel"])),
         jax.nn.relu(expand3x3)], axis=-1)
    return block.apply({"params": params}, x), params, expanded

  def test_fire_simple_bypass_adds_the_input_after_the_activation(self):
    x = _x((2, 6, 6, 16))  # 16 = expand1x1 + expand3x3: SqueezeNet's simple (identity) bypass
    y, params, expanded = self._fire(x)
    self.assertNotIn("shortcut", params)
    chex.assert_trees_all_close(y, expanded + x, rtol=1e-5, atol=1e-5)
    self.assertLess(float(jnp.min(y)), -0.5)  # no activation after the sum

  def test_fire_complex_bypass_is_a_1x1_conv(self):
    x = _x((2, 6, 6, 12))
    y, params, expanded = self._fire(x)
    bypass = jnp.einsum("nhwc,cf->nhwf", x, params["shortcut"]["kernel"])
    chex.assert_trees_all_close(y, expanded + bypass, rtol=1e-5, atol=1e-5)

  def test_fire_without_bypass_ends_in_the_activation(self):
    x = _x((2, 6, 6, 16))
    y, _, expanded = self._fire(x, residual=False)
    chex.assert_trees_all_close(y, expanded, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(
      (lambda norm: pwconv.DenseConv(8, norm=norm), "DenseConv"),
      (lambda norm: pwconv.InvertedResidual(8, norm=norm), "InvertedResidual"),
      (lambda norm: pwconv.models.resnet50(norm=norm), "ResNet"),
      (lambda norm: pwconv.models.SmallNet("fire", norm=norm), "SmallNet"),
  )
  def test_norm_binding_use_running_average_is_refused(self, make, owner):
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    with self.assertRaisesRegex(TypeError, f"{owner}: norm must not bind use_running_average "
                                           r"\(the block sets it from train\)"):
      make(norm)

  def test_inception_5x5_branch_kernel(self):
    x = _x((1, 8, 8, CIN))
    block = pwconv.InceptionModule(8, 4, 12, 2, 4, 8, branch5x5_kernel_size=(3, 3))
    params = jax.eval_shape(functools.partial(block.init, jax.random.key(0)), x)["params"]
    chex.assert_shape(params["branch5x5"]["kernel"], (3, 3, 2, 4))
    self.assertEqual(pwconv.profile(block, x).macs, 64 * (CIN * (8 + 4 + 2 + 8) + 9 * 4 * 12
                                                          + 9 * 2 * 4))


class CostFormulaTest(parameterized.TestCase):
  """Each block's docstring cost formula, every term it states, against :func:`pwconv.profile`.

  Input (1, 8, 8, Cin=16); at stride 2 the output is 4x4. H·W = 64, Ho·Wo = 16 (or 64 at stride 1).
  """

  @parameterized.named_parameters(
      ("dense", pwconv.DenseConv(32, (3, 3), 2), 16, 16 * 9 * 16 * 32),
      # H·W·Cin·R + Ho·Wo·kh·kw·R·R + Ho·Wo·R·F + Ho·Wo·Cin·F (projection shortcut)
      ("bottleneck", pwconv.Bottleneck(32, 8, (3, 3), 2), 16,
       64 * 16 * 8 + 16 * 9 * 8 * 8 + 16 * 8 * 32 + 16 * 16 * 32),
      ("bottleneck_identity", pwconv.Bottleneck(16, 8), 16,
       64 * 16 * 8 + 64 * 9 * 8 * 8 + 64 * 8 * 16),
      # H·W·Cin·R + Ho·Wo·kh·kw·R·F
      ("bottleneck_reduce", pwconv.Bottleneck(32, 8, (5, 5), 2, expand=False), 16,
       64 * 16 * 8 + 16 * 25 * 8 * 32),
      # Ho·Wo·kh·kw·Cin·m + Ho·Wo·Cin·m·F
      ("separable", pwconv.DepthwiseSeparable(32, (3, 3), 2, depth_multiplier=2), 16,
       16 * 9 * 32 + 16 * 32 * 32),
      ("separable_projection", pwconv.DepthwiseSeparable(32, residual=True), 16,
       64 * 9 * 16 + 64 * 16 * 32 + 64 * 16 * 32),
      # H·W·Cin·E + Ho·Wo·kh·kw·E + Ho·Wo·E·F + 2·E·R, E = 64, R = int(16 · 0.25)
      ("inverted_residual_se", pwconv.InvertedResidual(24, 4, (3, 3), 2, se_ratio=0.25), 16,
       64 * 16 * 64 + 16 * 9 * 64 + 16 * 64 * 24 + 2 * 64 * 4),
      # t = 1: no expand; + Ho·Wo·Cin·F for the projection shortcut
      ("inverted_residual_projection", pwconv.InvertedResidual(24, 1, residual=True), 16,
       64 * 9 * 16 + 64 * 16 * 24 + 64 * 16 * 24),
      # H·W·(Cin·(f1x1 + f3x3_reduce + f5x5_reduce + pool_proj) + 9·f3x3_reduce·f3x3 + 25·...)
      ("inception", pwconv.InceptionModule(8, 4, 12, 2, 4, 8), 16,
       64 * (16 * (8 + 4 + 2 + 8) + 9 * 4 * 12 + 25 * 2 * 4)),
      # H·W·(Cin·S + S·expand1x1 + 9·S·expand3x3), + H·W·Cin·(e1 + e3) for the complex bypass
      ("fire", pwconv.FireModule(4, 16, 16), 16, 64 * (16 * 4 + 4 * 16 + 9 * 4 * 16)),
      ("fire_complex_bypass", pwconv.FireModule(4, 16, 16, residual=True), 16,
       64 * (16 * 4 + 4 * 16 + 9 * 4 * 16) + 64 * 16 * 32),
      # H·W·Cin·B/g + Ho·Wo·9·B + Ho·Wo·B·F'/g (+ H·W·Cin·F projection at stride 1), B = 8
      ("shuffle_projection", pwconv.ShuffleUnit(32, groups=4), 16,
       64 * 16 * 8 // 4 + 64 * 9 * 8 + 64 * 8 * 32 // 4 + 64 * 16 * 32),
      # stride 2: F' = 48 - 16, B = 12, no shortcut MACs (average pool)
      ("shuffle_stride2", pwconv.ShuffleUnit(48, groups=4, strides=2), 16,
       64 * 16 * 12 // 4 + 16 * 9 * 12 + 16 * 12 * 32 // 4),
      ("shuffle_ungrouped_first",
       pwconv.ShuffleUnit(48, groups=4, strides=2, group_first=False), 16,
       64 * 16 * 12 + 16 * 9 * 12 + 16 * 12 * 32 // 4),
      # Ho·Wo·kh·kw·Cin·F + L·Ho·Wo·F²
      ("mlpconv", pwconv.MLPConv(32, (3, 3), 2, pointwise_layers=2), 16,
       16 * 9 * 16 * 32 + 2 * 16 * 32 * 32),
      # 2·C·R
      ("squeeze_excite", pwconv.SqueezeExcite(ratio=0.25), 16, 2 * 16 * 4),
  )
  def test_docstring_formula(self, block, cin, macs):
    self.assertEqual(pwconv.profile(block, jax.ShapeDtypeStruct((1, 8, 8, cin), jnp.float32)).macs,
                     macs)



@pytest.mark.parametrize("make", [
    lambda: pwconv.Bottleneck(16, 4), lambda: pwconv.InvertedResidual(16, 2),
    lambda: pwconv.InvertedResidual(16, 2, se_ratio=0.25), lambda: pwconv.SqueezeExcite(),
    lambda: pwconv.FireModule(4, 8, 8, residual=True), lambda: pwconv.ShuffleUnit(16, groups=2),
    lambda: pwconv.DepthwiseSeparable(16, residual=True), lambda: pwconv.MBConv(16, 4),
    lambda: pwconv.FusedMBConv(16, 4), lambda: pwconv.ConvNeXtBlock(16),
    lambda: pwconv.GhostBottleneck(16, 32), lambda: pwconv.UniversalInvertedBottleneck(16, 32),
    lambda: pwconv.RepVGGBlock(16), lambda: pwconv.DenseConv(16)],
    ids=lambda make: type(make()).__name__)
def test_bf16_blocks_return_bf16_from_f32_inputs(make):
  # An identity shortcut used to promote a bf16 block's output back to the f32 input's dtype.
  block = make().clone(dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  variables = jax.eval_shape(lambda x: block.init(jax.random.key(0), x), x)
  assert jax.eval_shape(lambda v, x: block.apply(v, x), variables, x).dtype == jnp.bfloat16


if __name__ == "__main__":
  pytest.main([__file__])
