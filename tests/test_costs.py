"""profile() and savings(): exact counts, both conventions, XLA agreement, attribution and errors."""

import functools
import json

import flax.linen as nn
from flax import nnx
from flax.nnx import bridge
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

import pwconv
from pwconv import kernels
from pwconv import ops


def _impl(impl):
  """The depthwise factory that runs ``impl``."""
  return functools.partial(pwconv.DepthwiseConv, impl=impl)


XLA = _impl("xla")

SEED_INPUT = (1, 28, 28, 128)


def _spec(shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _seed_bottleneck(**kw):
  return pwconv.Bottleneck(features=64, reduced_features=32, kernel_size=(5, 5), expand=False,
                           residual=False, **kw)


class SeedExampleTest(parameterized.TestCase):

  def test_to_the_mac(self):
    s = pwconv.savings(_seed_bottleneck(), SEED_INPUT)
    self.assertEqual(s.dense.macs, 28 * 28 * 64 * 5 * 5 * 128)
    self.assertEqual(s.dense.macs, 160_563_200)
    self.assertEqual(s.block.macs, 3_211_264 + 40_140_800)
    self.assertEqual(s.block.macs, 43_352_064)
    self.assertEqual(round(s.macs_ratio, 2), 3.70)
    self.assertEqual(s.block.flops, 2 * 43_352_064)
    # Conv weights plus the BatchNorm scale and bias of each conv.
    self.assertEqual(s.block.params, 128 * 32 + 25 * 32 * 64 + 2 * (32 + 64))
    self.assertEqual(s.dense.params, 25 * 128 * 64 + 2 * 64)

  def test_table_prints_the_comparison(self):
    table = pwconv.savings(_seed_bottleneck(), SEED_INPUT).table()
    self.assertIn("160,563,200 (160.6M)", table)
    self.assertIn("43,352,064 (43.4M)", table)
    self.assertIn("3.70x", table)
    self.assertRegex(table, r"conv\s+Conv 5x5\s+28x28x64\s+51,200\s+40.1M\s+92.6%")
    self.assertRegex(table, r"reduce\s+PointwiseConv 1x1\s+28x28x32\s+4,096\s+3.2M\s+7.4%")

  def test_separable_version(self):
    s = pwconv.savings(pwconv.DepthwiseSeparable(64, (5, 5)), SEED_INPUT)
    self.assertEqual(s.block.macs, 28 * 28 * 25 * 128 + 28 * 28 * 128 * 64)
    self.assertEqual(round(s.macs_ratio), 18)
    # MobileNet eq. 5: the ratio is 1 / (1/N + 1/k^2).
    self.assertAlmostEqual(s.macs_ratio, 1 / (1 / 64 + 1 / 25))

  def test_three_dimensional_input_shape_means_batch_one(self):
    self.assertEqual(pwconv.savings(_seed_bottleneck(), SEED_INPUT[1:]).block.macs, 43_352_064)


class ConventionTest(parameterized.TestCase):

  def test_padded_taps(self):
    """A 3x3 SAME conv on 4x4: 16 outputs · 9 taps, of which 36 fall on padding."""
    p = pwconv.profile(nn.Conv(1, (3, 3), use_bias=False), _spec((1, 4, 4, 1)))
    self.assertEqual(p.macs, 16 * 9)
    # Per axis, the valid (output, tap) pairs are 4·3 - 2 = 10; in 2-D 10·10 = 100.
    self.assertEqual(p.exact_macs, 100)

  @parameterized.parameters(((1, 1), 1, "SAME"), ((2, 2), 1, "SAME"), ((1, 1), 2, "SAME"),
                            ((2, 1), 3, ((3, 0), (1, 4))), ((1, 1), 1, "VALID"))
  def test_exact_depthwise_by_brute_force(self, strides, dilation, padding):
    x = _spec((1, 7, 6, 2))
    fn = lambda x, k: ops.depthwise_conv(x, k, strides=strides, padding=padding, dilation=dilation)
    p = pwconv.profile(fn, x, _spec((3, 3, 1, 2)))
    # Count valid taps by running the conv on ones with a ones kernel: each output sums its real taps.
    ones = ops.depthwise_conv(jnp.ones(x.shape), jnp.ones((3, 3, 1, 2)), strides=strides,
                              padding=padding, dilation=dilation, impl="xla")
    self.assertEqual(p.exact_macs, int(ones.sum()))
    self.assertEqual(p.macs, ones.size * 9)
    self.assertEqual(p.params, 3 * 3 * 2)

  def test_per_example(self):
    one = pwconv.profile(_seed_bottleneck(), _spec(SEED_INPUT))
    eight = pwconv.profile(_seed_bottleneck(), _spec((8, *SEED_INPUT[1:])))
    self.assertEqual((one.macs, one.exact_macs, one.params), (eight.macs, eight.exact_macs, eight.params))

  def test_arrays_and_specs_agree(self):
    block = pwconv.InvertedResidual(16)
    x = jnp.zeros((2, 8, 8, 16))
    self.assertEqual(pwconv.profile(block, x), pwconv.profile(block, _spec(x.shape)))

  def test_same_counts_whatever_impl(self):
    counts = {impl: pwconv.profile(pwconv.DepthwiseSeparable(32, strides=(2, 2), depthwise_conv=_impl(impl)),
                                   _spec((1, 15, 15, 16)))
              for impl in kernels.names()}
    self.assertGreater(len(counts), 1)
    reference = counts["xla"]
    for impl, p in counts.items():
      self.assertEqual((p.macs, p.exact_macs, p.params), (reference.macs, reference.exact_macs,
                                                          reference.params), impl)


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


# Blocks built without bias, norm and activation; the second number is the non-MAC FLOPs of the whole
# batch (the residual add of a stride-1 shuffle unit) that XLA may also count, which profile() leaves
# out. XLA:CPU counts the add or not depending on whether it fuses it into the matmul.
XLA_BLOCKS = {
    "dense_5x5_s2": (pwconv.DenseConv(24, (5, 5), (2, 2)), 0),
    "bottleneck_reduce": (pwconv.Bottleneck(24, 8, (5, 5), (2, 2), expand=False, residual=False), 0),
    "bottleneck_expand": (pwconv.Bottleneck(24, 8, (3, 3), (1, 1), residual=False,
                                            dilation=(2, 2)), 0),
    "separable": (pwconv.DepthwiseSeparable(24, (3, 5), (2, 1), depth_multiplier=2, depthwise_conv=XLA), 0),
    "separable_dilated": (pwconv.DepthwiseSeparable(24, dilation=(2, 3), depthwise_conv=XLA), 0),
    "inverted_residual": (pwconv.InvertedResidual(24, 3, (5, 5), (2, 2), depthwise_conv=XLA), 0),
    "shuffle": (pwconv.ShuffleUnit(16, groups=4, depthwise_conv=XLA), 2 * 9 * 10 * 16),
    "mlpconv": (pwconv.MLPConv(24, (3, 3), (2, 2), pointwise_layers=2), 0),
    "fire": (pwconv.FireModule(4, 12, 12), 0),
}


class XLAAgreementTest(parameterized.TestCase):

  @parameterized.parameters(*XLA_BLOCKS)
  def test_exact_macs_equal_cost_analysis(self, name):
    block, other_flops = XLA_BLOCKS[name]
    block = block.clone(norm=None, act=None, use_bias=False)
    x = jnp.ones((2, 9, 10, 16))
    variables = block.init(jax.random.key(0), x)
    flops = _xla_flops(lambda v, x: block.apply(v, x), variables, x)
    p = pwconv.profile(block, x)
    # flops = 2 FLOPs per MAC · batch of 2 · exact MACs per example (+ the uncounted add, if counted).
    self.assertIn(flops - 4 * p.exact_macs, {0, other_flops})
    self.assertGreaterEqual(p.macs, p.exact_macs)

  def test_dense_layer(self):
    dense = nn.Dense(7, use_bias=False)
    x = jnp.ones((3, 20))
    p = pwconv.profile(dense, x)
    self.assertEqual(p.macs, 20 * 7)
    self.assertEqual(2 * p.exact_macs * 3, _xla_flops(lambda v, x: dense.apply(v, x),
                                                      dense.init(jax.random.key(0), x), x))


class FlaxLayersCountedTheSameTest(parameterized.TestCase):

  def test_pointwise_vs_nn_conv_1x1(self):
    x = _spec((1, 14, 14, 32))
    ours = pwconv.profile(pwconv.PointwiseConv(48, groups=4), x)
    theirs = pwconv.profile(nn.Conv(48, (1, 1), feature_group_count=4, use_bias=False), x)
    self.assertEqual((ours.params, ours.macs, ours.exact_macs),
                     (theirs.params, theirs.macs, theirs.exact_macs))
    self.assertEqual(ours.macs, 14 * 14 * 32 * 48 // 4)

  def test_depthwise_vs_nn_conv_groups(self):
    x = _spec((1, 14, 14, 32))
    ours = pwconv.profile(pwconv.DepthwiseConv((5, 5), (2, 2), depth_multiplier=2, use_bias=True), x)
    theirs = pwconv.profile(nn.Conv(64, (5, 5), (2, 2), feature_group_count=32), x)
    self.assertEqual((ours.params, ours.macs, ours.exact_macs),
                     (theirs.params, theirs.macs, theirs.exact_macs))

  def test_user_model_mixing_flax_and_pwconv(self):
    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.Conv(16, (3, 3), name="stem")(x)
        x = pwconv.DepthwiseSeparable(32, name="block")(x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))

    p = pwconv.profile(Net(), _spec((1, 8, 8, 3)))
    by_path = {r.path: r for r in p.rows}
    self.assertEqual(by_path["stem"].macs, 64 * 9 * 3 * 16)
    self.assertEqual(by_path["stem"].params, 9 * 3 * 16 + 16)
    self.assertEqual(by_path["block/depthwise"].macs, 64 * 9 * 16)
    self.assertEqual(by_path["block/depthwise"].op, "DepthwiseConv 3x3 depthwise")
    self.assertEqual(by_path["block/pointwise"].macs, 64 * 16 * 32)
    self.assertEqual(by_path["block/pointwise_norm"].params, 64)
    self.assertEqual(by_path["head"].macs, 32 * 10)
    self.assertEqual(by_path["head"].out_shape, (10,))
    self.assertEqual(p.macs, sum(r.macs for r in p.rows))
    self.assertEqual(p.params, sum(r.params for r in p.rows))
    # BatchNorm running statistics are not parameters.
    self.assertEqual(p.params, 9 * 3 * 16 + 16 + 9 * 16 + 2 * 16 + 16 * 32 + 2 * 32 + 32 * 10 + 10)
    self.assertEqual([r.path for r in p.rows],
                     ["stem", "block/depthwise", "block/depthwise_norm", "block/pointwise",
                      "block/pointwise_norm", "block", "head", ""])
    # The block's own row is its activations' traffic; the root's, the global mean pool.
    self.assertEqual((by_path["block"].macs, by_path[""].macs), (0, 0))


class ControlFlowTest(parameterized.TestCase):

  def test_jit_and_scan_inside(self):
    kernel = _spec((8, 8))

    def fn(x, k):
      x = jax.jit(lambda x: ops.pointwise_conv(x, k))(x)
      x, _ = jax.lax.scan(lambda c, _: (ops.pointwise_conv(c, k), None), x, None, length=3)
      return x

    p = pwconv.profile(fn, _spec((2, 4, 4, 8)), kernel)
    self.assertEqual(p.macs, 4 * 16 * 8 * 8)
    self.assertEqual(p.params, 64)


  def test_while_loop_with_convs_is_refused_and_without_is_fine(self):
    x, k = _spec((2, 8, 8, 16)), _spec((16, 16))

    def repeated(x, k):  # a trip count tracing cannot know
      return jax.lax.while_loop(lambda c: jnp.sum(c[0]) < 4.0,
                                lambda c: (ops.pointwise_conv(c[0], k), c[1] + 1), (x, 0))[0]

    with self.assertRaisesRegex(ValueError, r"profile: a lax.while_loop .* contains convolutions or "
                                            r"matmuls"):
      pwconv.profile(repeated, x, k)

    def counted(x, k):  # only elementwise work in the loop: nothing to count there
      y = jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 2.0, c[1] + 1), (x, 0))[0]
      return ops.pointwise_conv(y, k)

    self.assertEqual(pwconv.profile(counted, x, k).macs, 8 * 8 * 16 * 16)

  def test_training_mode_counts_as_inference(self):
    block = pwconv.InvertedResidual(16, 4, se_ratio=0.25)
    spec = _spec((2, 8, 8, 16))
    train, infer = pwconv.profile(block, spec, train=True), pwconv.profile(block, spec)
    self.assertEqual((train.macs, train.params), (infer.macs, infer.params))
    model = pwconv.models.mobilenet_v2(width_multiplier=0.25, dropout_rate=0.2, num_classes=10)
    self.assertEqual(pwconv.profile(model, _spec((1, 32, 32, 3)), train=True).macs,
                     pwconv.profile(model, _spec((1, 32, 32, 3))).macs)


class JitCacheTest(parameterized.TestCase):

  def test_profile_of_a_jitted_function_neither_reads_nor_poisons_its_cache(self):
    x, k = jnp.ones((1, 10, 10, 2)), jnp.ones((3, 3, 1, 2))
    ran_first = jax.jit(lambda x, k: ops.depthwise_conv(x, k))
    ran_first(x, k)  # cached with the fast path, which has no conv equation to count
    self.assertEqual(pwconv.profile(ran_first, x, k).macs, 100 * 9 * 2)
    profiled_first = jax.jit(lambda x, k: ops.depthwise_conv(x, k))
    self.assertEqual(pwconv.profile(profiled_first, x, k).macs, 100 * 9 * 2)
    # ... and it still runs the implementation "auto" picks, not the counting reference.
    uses_conv = "convolution" in profiled_first.lower(x, k).as_text()
    self.assertEqual(uses_conv, kernels.resolve("auto") == "xla")


class OutputTest(parameterized.TestCase):

  def test_to_dict_is_json(self):
    d = json.loads(json.dumps(pwconv.savings(_seed_bottleneck(), SEED_INPUT).to_dict()))
    self.assertEqual(d["block"]["macs"], 43_352_064)
    self.assertEqual(d["dense"]["flops"], 2 * 160_563_200)
    self.assertEqual(d["block"]["rows"][0]["out_shape"], [28, 28, 32])
    self.assertAlmostEqual(d["macs_ratio"], 160_563_200 / 43_352_064)

  def test_human(self):
    self.assertEqual(pwconv.costs.human(160_563_200), "160.6M")
    self.assertEqual(pwconv.costs.human(4_089_184_256), "4.1G")
    self.assertEqual(pwconv.costs.human(512), "512")

  def test_squeeze_excite_ratio_is_zero(self):
    s = pwconv.savings(pwconv.SqueezeExcite(), (1, 4, 4, 16))
    self.assertEqual(s.block.macs, 2 * 16 * 4)
    self.assertEqual(s.dense.macs, 0)
    self.assertEqual(s.macs_ratio, 0.0)


class _TwoPointwise(nn.Module):
  """x -> 1x1 to 16 -> 1x1 to 8: its backward needs x and the intermediate, nothing else."""

  @nn.compact
  def __call__(self, x):
    return pwconv.PointwiseConv(8, name="second")(pwconv.PointwiseConv(16, name="first")(x))


class MemoryTest(parameterized.TestCase):
  """bytes (least forward traffic) and activation_bytes (kept for backward), hand-computed."""

  def test_pointwise_reads_input_and_weights_writes_output(self):
    p = pwconv.profile(pwconv.PointwiseConv(32), _spec((1, 8, 8, 16)))
    (row,) = p.rows
    self.assertEqual((row.bytes, row.weight_bytes, row.kind), (4 * (64 * 16 + 64 * 32 + 16 * 32),
                                                               4 * 16 * 32, "dot"))
    self.assertEqual(p.bytes, row.bytes)
    # The backward needs the input (the kernel is a parameter, not counted).
    self.assertEqual(p.activation_bytes, 4 * 64 * 16)

  def test_bfloat16_compute(self):
    p = pwconv.profile(pwconv.PointwiseConv(32, dtype=jnp.bfloat16), _spec((1, 8, 8, 16)))
    # An f32 input and f32 kernel are read, a bf16 output written; the bf16 copy of x is kept.
    self.assertEqual(p.bytes, 4 * 64 * 16 + 4 * 16 * 32 + 2 * 64 * 32)
    self.assertEqual(p.activation_bytes, 2 * 64 * 16)
    self.assertEqual(p.dtype, "bfloat16")

  def test_strided_depthwise(self):
    p = pwconv.profile(pwconv.DepthwiseConv((3, 3), (2, 2), impl="xla"), _spec((1, 9, 9, 8)))
    self.assertEqual(p.bytes, 4 * (81 * 8 + 25 * 8 + 9 * 8))
    self.assertEqual(p.rows[0].kind, "depthwise:xla")

  def test_grouped_pointwise_weights(self):
    p = pwconv.profile(pwconv.PointwiseConv(32, groups=4), _spec((2, 4, 4, 16)))
    # Per example: input and output; the (16 / 4) x 32 kernel is read once (counted at batch 1).
    self.assertEqual(p.bytes, 4 * (16 * 16 + 16 * 32) + 4 * 4 * 32)
    self.assertEqual(p.rows[0].weight_bytes, 4 * 4 * 32)

  def test_concat_is_the_blocks_own_row(self):
    fire = pwconv.FireModule(2, 4, 4, norm=None, act=None)
    rows = {r.path: r for r in pwconv.profile(fire, _spec((1, 6, 6, 8))).rows}
    hw = 36
    # squeeze: reads x and its kernel + bias, writes its output (read by both expands).
    self.assertEqual(rows["squeeze"].bytes, 4 * (hw * 8 + 8 * 2 + 2 + hw * 2))
    # The concatenation reads both expand outputs and writes the block's output.
    self.assertEqual(rows[""].bytes, 4 * (hw * 4 + hw * 4 + hw * 8))
    self.assertEqual(rows[""].kind, "memory")

  def test_residual_add(self):
    block = pwconv.DepthwiseSeparable(8, residual=True, norm=None, act=None)
    rows = {r.path: r for r in pwconv.profile(block, _spec((1, 6, 6, 8))).rows}
    # The add reads the pointwise output and the input, and writes the sum.
    self.assertEqual(rows[""].bytes, 4 * 3 * 36 * 8)

  def test_activation_bytes_of_a_chain(self):
    p = pwconv.profile(_TwoPointwise(), _spec((4, 5, 5, 12)))
    # Per example: x (12 channels) for the first kernel's gradient, the 16-channel intermediate for
    # the second's.
    self.assertEqual(p.activation_bytes, 4 * 25 * (12 + 16))
    rows = {r.path: r for r in p.rows}
    self.assertEqual(rows["first"].activation_bytes, 4 * 25 * 16)  # made by "first"

  def test_activation_bytes_do_not_depend_on_the_batch(self):
    # Batch statistics and values computed from parameters alone (bf16 copies of kernels) are not
    # per-example memory: the same count at every batch size.
    for block in (pwconv.DenseConv(16), pwconv.models.SmallNet("separable", dtype=jnp.bfloat16)):
      counts = {pwconv.profile(block, _spec((b, 8, 8, 16 if isinstance(block, pwconv.DenseConv)
                                              else 1))).activation_bytes for b in (1, 3, 16)}
      self.assertEqual(len(counts), 1, counts)

  def test_function_profiles_count_operands(self):
    p = pwconv.profile(lambda x, k: ops.pointwise_conv(x, k), _spec((2, 3, 3, 4)), _spec((4, 6)))
    self.assertEqual(p.bytes, 4 * (9 * 4 + 9 * 6) + 4 * 24)

  def test_table_shows_bytes(self):
    text = pwconv.profile(pwconv.PointwiseConv(32), _spec((1, 8, 8, 16))).table()
    self.assertIn("bytes", text)
    self.assertIn("14.0 KiB", text)


class NNXTest(parameterized.TestCase):
  """Native flax.nnx modules, and NNX modules holding pwconv blocks through nnx.bridge.ToNNX."""

  def test_native_nnx_module(self):
    class Net(nnx.Module):
      def __init__(self, rngs):
        self.conv = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

      def __call__(self, x):
        return self.head(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))

    p = pwconv.profile(Net(nnx.Rngs(0)), _spec((1, 8, 8, 3)))
    rows = {r.path: r for r in p.rows}
    self.assertEqual(p.params, 9 * 3 * 16 + 16 + 2 * 16 + 16 * 10 + 10)
    self.assertEqual((rows["conv"].macs, rows["conv"].params, rows["conv"].op),
                     (64 * 9 * 3 * 16, 9 * 3 * 16 + 16, "Conv 3x3"))
    self.assertEqual((rows["head"].macs, rows["head"].out_shape), (16 * 10, (10,)))
    self.assertEqual(rows["bn"].params, 32)
    self.assertEqual([r.path for r in p.rows], ["", "conv", "bn", "head"])

  def test_bridged_pwconv_blocks_count_as_in_linen(self):
    class Mixed(nnx.Module):
      def __init__(self, rngs):
        self.block = bridge.ToNNX(pwconv.DepthwiseSeparable(32), rngs=rngs)

      def __call__(self, x):
        return self.block(x)

    model = Mixed(nnx.Rngs(0))
    x = jnp.ones((1, 8, 8, 16))
    bridge.lazy_init(model.block, x)
    ours = pwconv.profile(model, _spec(x.shape))
    linen = pwconv.profile(pwconv.DepthwiseSeparable(32), _spec(x.shape))
    self.assertEqual((ours.params, ours.macs, ours.exact_macs),
                     (linen.params, linen.macs, linen.exact_macs))
    rows = {r.path: r for r in ours.rows}
    self.assertEqual(rows["block/pointwise"].macs, 64 * 16 * 32)


class BadInputTest(parameterized.TestCase):

  def test_profile_errors(self):
    with self.assertRaisesRegex(ValueError, "profile: needs at least one example input"):
      pwconv.profile(pwconv.PointwiseConv(4))
    with self.assertRaisesRegex(ValueError, "profile: the first example input must be an array"):
      pwconv.profile(pwconv.PointwiseConv(4), 3.0)
    with self.assertRaisesRegex(TypeError, "profile: module_or_fn must be a flax.linen or flax.nnx Module"):
      pwconv.profile("conv", _spec((1, 2, 2, 2)))

  @parameterized.parameters(((28, 28),), ((1, 0, 28, 3),), ((1, 28, 28, 3.0),), ((2, 1, 4, 4, 4),))
  def test_savings_bad_shape(self, shape):
    with self.assertRaisesRegex(ValueError, r"savings: input_shape must be \(N, H, W, C\)"):
      pwconv.savings(_seed_bottleneck(), shape)

  def test_savings_needs_a_block(self):
    with self.assertRaisesRegex(TypeError, "savings: block must be a pwconv block"):
      pwconv.savings(nn.Conv(4, (3, 3)), SEED_INPUT)


if __name__ == "__main__":
  pytest.main([__file__])
