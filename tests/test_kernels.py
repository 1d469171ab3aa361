"""pwconv.kernels: every depthwise implementation against the "xla" reference, values and gradients,
and the registry's dispatch.

Pallas runs in interpret mode here (CPU), so its cases are few and small.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl.testing import parameterized  # noqa: E402
from jax import export  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from pwconv import kernels  # noqa: E402
from pwconv import ops  # noqa: E402
from pwconv.kernels import pallas_depthwise  # noqa: E402
from pwconv.kernels import shifted  # noqa: E402

# (name, x shape, kernel (kh, kw), multiplier, strides, padding, dilation). Together they cover
# SAME / VALID / int / asymmetric / oversize padding, strides 1, 2, 3, (1, 2), (2, 1), dilation 1,
# 2, (2, 1), (1, 2), multipliers 1-3, kernels 1x1, 2x2, 3x3, 5x5, 3x5, odd and even maps, and
# batches that do not fill whole weight-gradient fold groups (10, 17).
CASES = (
    ("3x3_same", (2, 8, 8, 4), (3, 3), 1, 1, "SAME", 1),
    ("3x3_valid_s2", (2, 9, 7, 3), (3, 3), 1, 2, "VALID", 1),
    ("5x5_int_s3_m2", (1, 11, 10, 2), (5, 5), 2, 3, 1, 1),
    ("3x5_asym_s12_d21_m3", (2, 7, 9, 2), (3, 5), 3, (1, 2), ((0, 2), (3, 1)), (2, 1)),
    ("1x1_oversize_s2_m2", (1, 5, 6, 3), (1, 1), 2, 2, ((5, 6), (4, 7)), 1),
    ("3x3_same_d2", (1, 10, 9, 3), (3, 3), 1, 1, "SAME", 2),
    ("5x5_same_s2_d21", (2, 12, 11, 2), (5, 5), 1, 2, "SAME", (2, 1)),
    ("3x3_oversize_s3_d2_m3", (1, 8, 8, 2), (3, 3), 3, 3, ((4, 3), (2, 5)), 2),
    ("3x5_valid_d2_m2", (2, 9, 12, 3), (3, 5), 2, 1, "VALID", 2),
    ("2x2_same_s2", (1, 6, 6, 2), (2, 2), 1, 2, "SAME", 1),
    ("3x3_int2_s21_d12", (3, 6, 8, 4), (3, 3), 1, (2, 1), 2, (1, 2)),
    ("3x3_same_batch10", (10, 5, 6, 2), (3, 3), 1, 1, "SAME", 1),
    ("5x5_same_batch17_m2", (17, 5, 6, 2), (5, 5), 2, 1, "SAME", 1),
)
CASE = {case[0]: case[1:] for case in CASES}
BF16_CASES = ("3x3_same", "5x5_int_s3_m2", "3x5_asym_s12_d21_m3", "3x3_oversize_s3_d2_m3")
PALLAS_CASES = ("3x3_same", "3x5_asym_s12_d21_m3", "1x1_oversize_s2_m2", "3x3_oversize_s3_d2_m3",
                "5x5_same_s2_d21")

# Tolerances relative to the largest reference magnitude: f32 results agree to rounding, bf16
# results (inputs, outputs and XLA's own bf16 arithmetic) to a few bf16 ulps.
RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def _inputs(name, dtype=jnp.float32):
  shape, kernel_hw, multiplier, strides, padding, dilation = CASE[name]
  x = jax.random.normal(jax.random.key(0), shape, dtype)
  kernel = jax.random.normal(jax.random.key(1), (*kernel_hw, 1, shape[-1] * multiplier), dtype)
  return x, kernel, dict(strides=strides, padding=padding, dilation=dilation)


def _explicit(x, kernel, conv_args):
  """The registry's positional arguments (strides, padding, dilation) for ``conv_args``."""
  strides = ops.validate.int_pair("test", "strides", conv_args["strides"])
  dilation = ops.validate.int_pair("test", "dilation", conv_args["dilation"])
  padding = ops.conv_padding("test", conv_args["padding"], x.shape[1:3], kernel.shape[:2], strides,
                             dilation)
  return strides, padding, dilation


def _assert_close(actual, expected, rtol):
  """Elementwise within ``rtol`` times the largest |expected| (dtype and shape must match)."""
  chex.assert_equal(actual.dtype, expected.dtype)
  scale = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
  chex.assert_trees_all_close(actual.astype(jnp.float32), expected.astype(jnp.float32),
                              rtol=rtol, atol=rtol * scale)


def _check_against_reference(impl, name, dtype):
  """``impl`` and "xla" through ``ops.depthwise_conv``: outputs, then the gradients of a random
  weighting of the output with respect to x and the kernel."""
  x, kernel, conv_args = _inputs(name, dtype)

  def conv(impl):
    return jax.jit(lambda x, k: ops.depthwise_conv(x, k, impl=impl, **conv_args))

  expected = conv("xla")(x, kernel)
  actual = conv(impl)(x, kernel)
  chex.assert_shape(actual, expected.shape)
  _assert_close(actual, expected, RTOL[dtype])

  weights = jax.random.normal(jax.random.key(2), expected.shape, jnp.float32)

  def grads(impl):
    loss = lambda x, k: jnp.sum(conv(impl)(x, k).astype(jnp.float32) * weights)  # noqa: E731
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

  for got, want in zip(grads(impl), grads("xla")):
    _assert_close(got, want, RTOL[dtype])


class ShiftedTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in CASE])
  def test_f32_values_and_gradients(self, name):
    _check_against_reference("shifted", name, jnp.float32)

  @parameterized.named_parameters(*[(name, name) for name in BF16_CASES])
  def test_bf16_values_and_gradients(self, name):
    _check_against_reference("shifted", name, jnp.bfloat16)

  @parameterized.named_parameters(*[(name, name) for name in
                                    ("3x3_same", "3x5_asym_s12_d21_m3", "3x3_oversize_s3_d2_m3")])
  def test_check_grads(self, name):
    """Finite differences; the op is bilinear, so a central difference with a large step is exact
    up to rounding, and the step of 1e-2 keeps f32 rounding noise (about 0.5% at the default
    1e-4, for the reference too) far below the tolerance."""
    x, kernel, conv_args = _inputs(name)
    args = _explicit(x, kernel, conv_args)
    check_grads(lambda x, k: shifted.depthwise_conv(x, k, *args), (x, kernel), order=1,
                modes=("rev",), eps=1e-2)

  def test_backward_has_no_convolution(self):
    x, kernel, conv_args = _inputs("3x5_asym_s12_d21_m3")
    args = _explicit(x, kernel, conv_args)
    grad = jax.grad(lambda x, k: jnp.sum(shifted.depthwise_conv(x, k, *args)), argnums=(0, 1))
    self.assertNotIn("conv_general_dilated", str(jax.make_jaxpr(grad)(x, kernel)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_vmap_values_and_gradients(self):
    x, kernel, conv_args = _inputs("3x5_asym_s12_d21_m3")
    args = _explicit(x, kernel, conv_args)
    xs = jnp.stack([x, 2 * x, -x])

    def grads(impl):
      loss = lambda xs, k: jnp.sum(jax.vmap(lambda x: impl(x, k, *args))(xs) ** 2)  # noqa: E731
      return self.variant(jax.grad(loss, argnums=(0, 1)))(xs, kernel)

    chex.assert_trees_all_close(grads(shifted.depthwise_conv), grads(kernels.get("xla")),
                                rtol=1e-5, atol=1e-3)


class PallasTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in PALLAS_CASES])
  def test_f32_values_and_gradients(self, name):
    _check_against_reference("pallas", name, jnp.float32)

  def test_bf16_values_and_gradients(self):
    _check_against_reference("pallas", "3x5_asym_s12_d21_m3", jnp.bfloat16)

  @parameterized.named_parameters(*[(name, name) for name in PALLAS_CASES])
  def test_tpu_body_values(self, name):
    x, kernel, conv_args = _inputs(name)
    args = _explicit(x, kernel, conv_args)
    y = pallas_depthwise.tpu_depthwise(x, kernel, *args, interpret=True)
    _assert_close(y, kernels.get("xla")(x, kernel, *args), RTOL[jnp.float32])

  def test_vmap(self):
    x, kernel, conv_args = _inputs("1x1_oversize_s2_m2")
    args = _explicit(x, kernel, conv_args)
    xs = jnp.stack([x, -x])
    y = jax.jit(jax.vmap(lambda x: pallas_depthwise.depthwise_conv(x, kernel, *args)))(xs)
    _assert_close(y, jax.vmap(lambda x: kernels.get("xla")(x, kernel, *args))(xs), 1e-5)

  @parameterized.parameters(("cuda", pallas_depthwise.gpu_depthwise),
                            ("tpu", pallas_depthwise.tpu_depthwise))
  def test_lowers_for_device(self, platform, body):
    """The Triton and Mosaic bodies pass Pallas lowering for their platform (their own compilers,
    which need the device, are not run)."""
    x, kernel, conv_args = _inputs("3x5_asym_s12_d21_m3", jnp.bfloat16)
    args = _explicit(x, kernel, conv_args)
    exported = export.export(
        jax.jit(lambda x, k: body(x, k, *args)), platforms=[platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(x, kernel)
    self.assertIn("custom_call", exported.mlir_module())


class DispatchTest(parameterized.TestCase):

  @parameterized.parameters(("shifted", "pwconv_shifted_depthwise", "conv_general_dilated"),
                            ("pallas", "pwconv_pallas_depthwise", "conv_general_dilated"),
                            ("xla", "conv_general_dilated", "pwconv_shifted_depthwise"))
  def test_ops_dispatch_on_cpu(self, impl, present, absent):
    x, kernel, conv_args = _inputs("3x3_same")
    jaxpr = str(jax.make_jaxpr(lambda x, k: ops.depthwise_conv(x, k, impl=impl, **conv_args))(
        x, kernel))
    self.assertIn(present, jaxpr)
    self.assertNotIn(absent, jaxpr)

  def test_reference_only_runs_xla(self):
    x, kernel, conv_args = _inputs("3x3_same")
    with kernels.reference_only():
      self.assertEqual(kernels.resolve("auto"), "xla")
      self.assertEqual(kernels.resolve("shifted"), "xla")
      jaxpr = str(jax.make_jaxpr(lambda x, k: ops.depthwise_conv(x, k, **conv_args))(x, kernel))
    self.assertIn("conv_general_dilated", jaxpr)
    self.assertNotIn("pwconv_shifted_depthwise", jaxpr)

  def test_auto_by_backend(self):
    self.assertEqual(kernels.resolve("auto", "cpu"), "shifted")
    self.assertEqual(kernels.resolve("auto", "gpu"), "xla")
    self.assertEqual(kernels.resolve("auto", "tpu"), "xla")
    self.assertIn("pallas", kernels.names())

  def test_auto_keeps_xla_for_large_kernels(self):
    # The shifted sum unrolls its taps: past 81 (9x9) XLA's conv is the faster choice on CPU.
    self.assertEqual(kernels.resolve("auto", "cpu", taps=81), "shifted")
    self.assertEqual(kernels.resolve("auto", "cpu", taps=15 * 15), "xla")
    x, kernel = jnp.ones((1, 16, 16, 2)), jnp.ones((11, 11, 1, 2))
    jaxpr = str(jax.make_jaxpr(lambda x, k: ops.depthwise_conv(x, k))(x, kernel))
    self.assertIn("conv_general_dilated", jaxpr)
    self.assertNotIn("pwconv_shifted_depthwise", jaxpr)


class PlatformTest(parameterized.TestCase):
  """"auto" is chosen per platform at lowering, not on the tracing host."""

  def _export(self, platforms):
    x, kernel, conv_args = _inputs("3x3_same")
    fn = jax.jit(lambda x, k: ops.depthwise_conv(x, k, **conv_args))
    return export.export(fn, platforms=platforms)(x, kernel).mlir_module()

  def test_each_platform_gets_its_choice(self):
    cpu, cuda = self._export(("cpu",)), self._export(("cuda",))
    self.assertNotIn("stablehlo.convolution", cpu)  # the shifted multiply-adds
    self.assertIn("stablehlo.slice", cpu)
    self.assertIn("stablehlo.convolution", cuda)  # XLA's conv, not the CPU kernel
    self.assertNotIn("stablehlo.slice", cuda)

  def test_one_export_for_several_platforms_holds_both(self):
    module = self._export(("cpu", "cuda", "tpu"))
    self.assertIn("stablehlo.convolution", module)
    self.assertIn("stablehlo.slice", module)
    self.assertIn("stablehlo.case", module)


class TransformTest(parameterized.TestCase):
  """Every impl under forward mode, higher order and vmap equals the reference's derivatives."""

  @parameterized.parameters("shifted", "pallas", "auto")
  def test_forward_mode_and_higher_order(self, impl):
    x, kernel, conv_args = _inputs("3x3_valid_s2" if impl != "pallas" else "3x3_same")
    f = lambda impl: (lambda x, k: ops.depthwise_conv(x, k, impl=impl, **conv_args))
    tangents = (jnp.cos(x), jnp.sin(kernel))
    rtol = RTOL[jnp.float32]
    for a, b in zip(jax.jvp(f(impl), (x, kernel), tangents), jax.jvp(f("xla"), (x, kernel), tangents)):
      _assert_close(a, b, rtol)
    loss = lambda impl: (lambda x, k: jnp.sum(f(impl)(x, k) ** 2))
    # jvp of grad (a Hessian-vector product) and jacfwd in the kernel.
    hvp = lambda impl: jax.jvp(jax.grad(loss(impl), argnums=1), (x, kernel), tangents)[1]
    _assert_close(hvp(impl), hvp("xla"), 1e-4)
    jac = lambda impl: jax.jacfwd(lambda k: f(impl)(x[:1], k).sum(axis=(0, 1, 2)))(kernel)
    _assert_close(jac(impl), jac("xla"), rtol)

  @parameterized.parameters("shifted", "auto")
  def test_per_example_gradients(self, impl):
    x, kernel, conv_args = _inputs("5x5_int_s3_m2")
    xs = jnp.stack([x, 2 * x, -x])
    grad = lambda impl: jax.vmap(jax.grad(
        lambda x, k: jnp.sum(ops.depthwise_conv(x, k, impl=impl, **conv_args) ** 2), argnums=1),
        in_axes=(0, None))
    _assert_close(grad(impl)(xs, kernel), grad("xla")(xs, kernel), 1e-4)
    # A vmapped kernel (one per example) falls back to vmap of the plain forward.
    kernels_ = jnp.stack([kernel, -kernel, 0.5 * kernel])
    ys = jax.vmap(lambda k: ops.depthwise_conv(x, k, impl=impl, **conv_args))(kernels_)
    ref = jax.vmap(lambda k: ops.depthwise_conv(x, k, impl="xla", **conv_args))(kernels_)
    _assert_close(ys, ref, RTOL[jnp.float32])

  def test_through_a_block(self):
    import pwconv

    block = pwconv.InvertedResidual(8, 2, strides=(2, 2))
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 8))
    variables = block.init(jax.random.key(0), x)
    out, tangent = jax.jvp(lambda x: block.apply(variables, x), (x,), (jnp.ones_like(x),))
    xla = block.clone(depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl="xla"))
    ref_out, ref_tangent = jax.jvp(lambda x: xla.apply(variables, x), (x,), (jnp.ones_like(x),))
    _assert_close(out, ref_out, RTOL[jnp.float32])
    _assert_close(tangent, ref_tangent, 1e-4)
