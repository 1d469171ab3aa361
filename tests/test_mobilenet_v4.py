"""MobileNetV4: the Universal Inverted Bottleneck's variants, costs, layer scale, drop path and
errors; mobilenet_v4_conv_small's counts against timm and the paper, its timm fixture; SmallNet's
uib."""

import functools
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from pwconv import models, weights
from pwconv.models.mobilenet_v4 import ConvLayer, UIBLayer

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CIN, F, E = 16, 24, 64  # the test block: 16 -> 24 channels, hidden 16·4 = 64
H = 8

# variant -> (start kernel, middle kernel)
VARIANTS = {"ib": (None, 3), "convnext": (5, None), "extra_dw": (5, 3), "ffn": (None, None)}


def _x(shape=(2, H, H, CIN), seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _uib(variant, strides=1, features=F, **kw):
  start, middle = VARIANTS[variant]
  return pwconv.UniversalInvertedBottleneck(features, 4.0, start_kernel_size=start,
                                            middle_kernel_size=middle, strides=strides, **kw)


def _variables(module, x, seed=0):
  """Random variables (positive variances) in the module's shapes, without compiling its init."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, jax.random.key(0)), x)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("var", "scale")
                       else rng.normal(0.0, 0.3, s.shape)).astype(s.dtype), shapes)


def _run(module, variables, x, train=False, rng=None):
  """module.apply, compiled (op-by-op dispatch compiles each op of a network alone: slower)."""
  def apply(v, x):
    if not train:
      return module.apply(v, x)
    rngs = {} if rng is None else {"dropout": rng}
    return module.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]
  return np.asarray(jax.jit(apply)(variables, x))


def _init(module, x):
  return jax.jit(module.init)(jax.random.key(0), x)


def _profile(module, shape):
  return pwconv.profile(module, jax.ShapeDtypeStruct(shape, jnp.float32))


# An FFN cannot stride (test_uib_errors_name_the_field).
@pytest.mark.parametrize("variant, strides", [(v, s) for v in VARIANTS for s in (1, 2)
                                              if (v, s) != ("ffn", 2)])
def test_uib_variants_shapes_and_mac_formula(variant, strides):
  start, middle = VARIANTS[variant]
  block = _uib(variant, strides)
  p = _profile(block, (1, H, H, CIN))
  ho = H // strides
  hs = ho if middle is None else H  # the start depthwise holds the stride only without a middle one
  macs = hs * hs * CIN * E + ho * ho * E * F
  params = CIN * E + E * F + 2 * (E + F)  # 1x1 kernels and their BatchNorm scales and biases
  if start:
    macs += hs * hs * start * start * CIN
    params += start * start * CIN + 2 * CIN
  if middle:
    macs += ho * ho * middle * middle * E
    params += middle * middle * E + 2 * E
  assert (p.macs, p.params) == (macs, params)
  rows = {row.path: row for row in p.rows}
  assert rows["project"].out_shape == (ho, ho, F)
  assert ("start_depthwise" in rows, "middle_depthwise" in rows) == (bool(start), bool(middle))
  y = jax.eval_shape(block.init_with_output, jax.random.key(0), _x())[0]
  chex.assert_shape(y, (2, ho, ho, F))


def test_uib_mac_formula_numbers():
  # ExtraDW 5x5 / 3x3, stride 2, 16 -> 24 at 8x8: start and expand at 8x8, middle and project 4x4.
  p = _profile(_uib("extra_dw", 2), (1, 8, 8, CIN))
  assert p.macs == 64 * 25 * 16 + 64 * 16 * 64 + 16 * 9 * 64 + 16 * 64 * 24 == 124_928


def test_uib_residual_only_when_shapes_match():
  x = _x()
  # With zero_init_last the branch starts at zero: a residual block is then its input.
  same = _uib("extra_dw", features=CIN, zero_init_last=True)
  np.testing.assert_array_equal(_run(same, _init(same, x), x), np.asarray(x))
  with_skip = _uib("extra_dw", features=CIN)
  v = _variables(with_skip, x)
  np.testing.assert_allclose(_run(with_skip, v, x) - _run(with_skip.clone(residual=False), v, x),
                             np.asarray(x), rtol=1e-5, atol=1e-5)
  # 16 -> 24 channels: no shortcut, whatever residual says (the timm fixture has stride-2 blocks
  # with Cin == F).
  wider = _uib("extra_dw")
  v = _variables(wider, x)
  np.testing.assert_array_equal(_run(wider, v, x), _run(wider.clone(residual=False), v, x))


def test_uib_hidden_width():
  x = jax.ShapeDtypeStruct((1, 4, 4, 10), jnp.float32)
  rows = {r.path: r for r in pwconv.profile(pwconv.UniversalInvertedBottleneck(8, 2.5), x).rows}
  assert rows["expand"].out_shape == (4, 4, 25)
  fixed = pwconv.UniversalInvertedBottleneck(8, 2.5, hidden_features=32)
  assert {r.path: r for r in pwconv.profile(fixed, x).rows}["expand"].out_shape == (4, 4, 32)


def test_uib_activations_where_timm_has_them():
  # The activation follows the expand (8x8x64) and the middle depthwise (4x4x64) only: the start
  # depthwise (8x8x16) and the projection (4x4x24) are linear.
  seen = []

  def act(v):
    seen.append(v.shape[1:])
    return nn.relu(v)

  jax.eval_shape(functools.partial(_uib("extra_dw", 2, act=act).init, jax.random.key(0)), _x())
  assert seen == [(H, H, E), (H // 2, H // 2, E)]


def test_uib_layer_scale():
  x = _x()
  plain = _uib("ib", features=CIN)
  scaled = _uib("ib", features=CIN, layer_scale_init=1e-5)
  init = jax.eval_shape(scaled.init, jax.random.key(0), x)
  assert init["params"]["layer_scale"]["gamma"].shape == (CIN,)
  gamma0 = _init(scaled, x)["params"]["layer_scale"]["gamma"]
  np.testing.assert_array_equal(np.asarray(gamma0), np.full((CIN,), 1e-5, np.float32))
  assert _profile(scaled, (1, H, H, CIN)).params == _profile(plain, (1, H, H, CIN)).params + CIN
  v = _variables(scaled, x)
  gamma = v["params"]["layer_scale"]["gamma"]
  plain_v = {**v, "params": {k: p for k, p in v["params"].items() if k != "layer_scale"}}
  branch = _run(plain, plain_v, x) - np.asarray(x)
  np.testing.assert_allclose(_run(scaled, v, x) - np.asarray(x), branch * np.asarray(gamma),
                             rtol=1e-5, atol=1e-5)


def test_uib_drop_path():
  x = _x((8, H, H, CIN))
  block = _uib("extra_dw", features=CIN, drop_path_rate=0.5)
  v = _variables(block, x)
  # Rate 0 is bitwise the identity, in training too (and draws no rng): the block computes
  # exactly its branch + x, the same program as the branch alone followed by the sum.
  zero = block.clone(drop_path_rate=0.0)
  y0 = _run(zero, v, x, train=True)
  no_skip = block.clone(residual=False)
  branch0 = jax.jit(lambda v, x: no_skip.apply(v, x, train=True, mutable=["batch_stats"])[0] + x)
  np.testing.assert_array_equal(y0, np.asarray(branch0(v, x)))
  np.testing.assert_array_equal(_run(zero, v, x), _run(block, v, x))  # eval: nothing dropped
  y1 = _run(block, v, x, train=True, rng=jax.random.key(3))
  branch = y0 - np.asarray(x)
  dropped = np.all(y1 == np.asarray(x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < 8
  np.testing.assert_allclose((y1 - np.asarray(x))[~dropped], 2 * branch[~dropped], rtol=1e-5,
                             atol=1e-5)


def test_uib_dense_equivalent():
  cases = {"ib": (3, 3), "convnext": (5, 5), "extra_dw": (7, 7), "ffn": (1, 1)}
  for variant, kernel in cases.items():
    dense = _uib(variant, 1 if variant == "ffn" else 2).dense_equivalent(CIN)
    assert isinstance(dense, pwconv.DenseConv)
    assert (dense.features, dense.kernel_size, dense.strides) == (
        F, kernel, (1, 1) if variant == "ffn" else (2, 2))
  # ExtraDW 5x5 / 3x3 at 8x8x16 -> 24, stride 1: 7x7 dense 8·8·49·16·24 MACs against the block's.
  savings = pwconv.savings(_uib("extra_dw"), (1, H, H, CIN))
  assert savings.dense.macs == 64 * 49 * CIN * F
  assert savings.block.macs == 64 * (25 * CIN + CIN * E + 9 * E + E * F)
  with pytest.raises(ValueError, match="UniversalInvertedBottleneck: in_features must be >= 1"):
    _uib("ib").dense_equivalent(0)


def test_uib_no_method_named_like_a_submodule():
  # flax's NNX bridge breaks on a method named like a submodule.
  block = _uib("extra_dw", layer_scale_init=0.5, features=CIN, drop_path_rate=0.1)
  p = _profile(block, (1, H, H, CIN))
  layers = {row.path.split("/")[0] for row in p.rows} | {"layer_scale", "drop_path"}
  assert {"start_depthwise", "middle_depthwise", "expand", "project"} <= layers
  assert not layers & set(dir(pwconv.UniversalInvertedBottleneck))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"features": 0}, ValueError, "UniversalInvertedBottleneck: features must be >= 1, got 0"),
    ({"expansion": 0.0}, ValueError, "UniversalInvertedBottleneck: expansion must be > 0, got 0.0"),
    ({"hidden_features": 0}, ValueError,
     "UniversalInvertedBottleneck: hidden_features must be >= 1, got 0"),
    ({"start_kernel_size": 0}, ValueError,
     "UniversalInvertedBottleneck: start_kernel_size must be >= 1, got 0"),
    ({"middle_kernel_size": "3"}, TypeError,
     "UniversalInvertedBottleneck: middle_kernel_size must be an int or a pair of ints"),
    ({"middle_kernel_size": None, "strides": 2}, ValueError,
     r"UniversalInvertedBottleneck: strides must be \(1, 1\) without a depthwise conv"),
    ({"layer_scale_init": "1e-5"}, TypeError,
     "UniversalInvertedBottleneck: layer_scale_init must be a number"),
    ({"drop_path_rate": 1.0}, ValueError,
     r"UniversalInvertedBottleneck: drop_path_rate must be in \[0, 1\), got 1.0"),
    ({"residual": None}, TypeError, "UniversalInvertedBottleneck: residual must be True or False"),
    ({"padding": "same"}, ValueError, "UniversalInvertedBottleneck: padding must be one of"),
])
def test_uib_errors_name_the_field(kwargs, error, message):
  kwargs = {"features": 8, **kwargs}
  with pytest.raises(error, match=message):
    pwconv.UniversalInvertedBottleneck(**kwargs)


# ---- mobilenet_v4_conv_small ------------------------------------------------------------------

@functools.cache
def _full_profile():
  return _profile(models.mobilenet_v4_conv_small(), (1, 224, 224, 3))


def test_conv_small_counts_equal_timm():
  # timm 1.0.31 mobilenetv4_conv_small: sum of parameters(), FlopCounterMode / 2 at 224x224.
  p = _full_profile()
  assert (p.params, p.macs) == (3_774_024, 186_005_568)


def test_conv_small_paper_figures():
  p, paper = _full_profile(), models.PAPER_FIGURES["mobilenet_v4_conv_small"]
  # MNv4-Conv-S: 0.2G MACs, 3.8M params.
  assert round(p.macs / 1e9, 1) == paper["macs"] / 1e9 == 0.2
  assert round(p.params / 1e6, 1) == paper["params"] / 1e6 == 3.8


def test_conv_small_structure():
  rows = {r.path: r for r in _full_profile().rows}
  # stage 3 opens with the ExtraDW 5x5/5x5 stride 2 (64 -> 192 -> 96), stride on the middle conv.
  assert rows["stage3_block1/start_depthwise"].out_shape == (28, 28, 64)
  assert rows["stage3_block1/expand"].out_shape == (28, 28, 192)
  assert rows["stage3_block1/middle_depthwise"].out_shape == (14, 14, 192)
  assert rows["stage3_block6/expand"].out_shape == (14, 14, 384)  # the ConvNeXt-like block
  assert "stage3_block6/middle_depthwise" not in rows
  assert rows["stage4_block4/expand"].out_shape == (7, 7, 384)  # expansion 3
  assert rows["stage5_block1/conv"].out_shape == (7, 7, 960)
  assert (rows["head/conv"].in_shape, rows["head/conv"].out_shape) == ((1, 1, 960), (1, 1, 1280))
  assert rows["head/conv"].params == 960 * 1280  # no bias: BatchNorm follows
  assert rows["classifier"].in_shape == (1280,)
  assert len(models.mobilenet_v4_conv_small().layers()) == 17


def test_conv_small_channel_multiplier_as_timm():
  # timm's _gen_mobilenet_v4("mobilenetv4_conv_small", m): params and MACs at 224x224.
  # (0.5: 2,238,952 / 64,741,408; the fixture checks the fixed stem below 1 numerically.)
  p = _profile(models.mobilenet_v4_conv_small(channel_multiplier=1.25), (1, 224, 224, 3))
  assert (p.params, p.macs) == (4_762_400, 284_119_120)


def test_conv_small_timm_fixture_logits():
  state_dict = weights.load(FIXTURES / "timm_mobilenetv4_conv_small.safetensors")
  data = np.load(FIXTURES / "timm_mobilenetv4_conv_small.npz")
  module, variables = weights.from_timm("mobilenetv4_conv_small", state_dict,
                                        channel_multiplier=0.1)
  assert module.padding == "symmetric" and module.num_classes == 10
  logits = _run(module, variables, jnp.asarray(data["input"]))
  ref = data["logits"]
  assert np.abs(logits - ref).max() / np.abs(ref).max() <= 1e-4
  assert (logits.argmax(1) == ref.argmax(1)).all()


def test_conv_small_drop_path_schedule():
  # timm: block i of the 17 (stem excluded, conv layers counted) gets rate·i/17; only UIBs use it.
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, pwconv.UniversalInvertedBottleneck):
      rates[context.module.name] = context.module.drop_path_rate
    return next_fun(*args, **kwargs)

  model = models.mobilenet_v4_conv_small(drop_path_rate=0.34)
  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.init, jax.random.key(0)),
                   jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert len(rates) == 12
  assert rates["stage3_block1"] == pytest.approx(0.34 * 4 / 17)
  assert rates["stage4_block6"] == pytest.approx(0.34 * 15 / 17)


def test_conv_small_layer_scale_reaches_every_uib():
  model = models.mobilenet_v4_conv_small(layer_scale_init=1e-5)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  scaled = [k for k, layer in v["params"].items() if "layer_scale" in layer]
  assert len(scaled) == 12 and v["params"]["stage4_block1"]["layer_scale"]["gamma"].shape == (128,)


def test_conv_small_from_timm_names_every_tensor():
  # A tensor renamed in the state dict is refused, naming it.
  state_dict = dict(weights.load(FIXTURES / "timm_mobilenetv4_conv_small.safetensors"))
  state_dict["blocks.2.0.dw_begin.conv.weight"] = state_dict.pop("blocks.2.0.dw_start.conv.weight")
  with pytest.raises(ValueError, match=r"blocks\.2\.0\.dw_begin\.conv\.weight"):
    weights.from_timm("mobilenetv4_conv_small", state_dict, channel_multiplier=0.1)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"channel_multiplier": 0.0}, ValueError, "MobileNetV4: channel_multiplier must be > 0"),
    ({"drop_path_rate": -0.1}, ValueError, r"MobileNetV4: drop_path_rate must be in \[0, 1\)"),
    ({"layer_scale_init": "no"}, TypeError, "MobileNetV4: layer_scale_init must be a number"),
    ({"stages": (((3, 2, 32),),)}, TypeError,
     "MobileNetV4: stages must hold ConvLayer and UIBLayer"),
    ({"num_classes": 0}, ValueError, "MobileNetV4: num_classes must be >= 1, got 0"),
])
def test_conv_small_errors_name_the_field(kwargs, error, message):
  with pytest.raises(error, match=message):
    models.mobilenet_v4_conv_small(**kwargs)


def test_custom_stages():
  net = models.MobileNetV4(num_classes=3, stem=8, head_features=32, stages=(
      (ConvLayer(3, 2, 8),), (UIBLayer(3, None, 2, 2, 16), UIBLayer(None, None, 1, 2, 16))))
  p = _profile(net, (1, 32, 32, 3))
  rows = {r.path: r for r in p.rows}
  assert rows["stage2_block1/start_depthwise"].out_shape == (4, 4, 8)  # ConvNeXt-like: stride first
  assert rows["stage2_block2/expand"].out_shape == (4, 4, 32)  # FFN
  assert rows["classifier"].in_shape == (32,)


# ---- SmallNet ---------------------------------------------------------------------------------

def test_smallnet_uib_trains():
  model = models.SmallNet("uib", width=8)
  x = _x((2, 8, 8, 1))
  y = _run(model, _variables(model, x), x, train=True)
  assert y.shape == (2, 10) and np.all(np.isfinite(y))


@pytest.mark.parametrize("width", [8, 32])
@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
def test_smallnet_uib(width, shape):
  model = models.SmallNet("uib", width=width)
  rows = {r.path: r for r in _profile(model, (1,) + shape[1:]).rows}
  assert rows["classifier"].out_shape == (10,)
  h = shape[1]
  # stage 2 opens with a stride-2 ExtraDW: start at h x h, middle (the stride) to h/2.
  assert rows["stage2_block1/start_depthwise"].out_shape == (h, h, width)
  assert rows["stage2_block1/middle_depthwise"].out_shape == (h // 2, h // 2, width * 4)
  assert rows["stage2_block2/project"].out_shape == (h // 2, h // 2, 2 * width)
  assert models.create("smallnet_uib").spec.downsample == "stride"


def test_smallnet_uib_takes_the_runner_knobs():
  model = models.SmallNet("uib", norm=nn.LayerNorm, act=nn.gelu, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(variables) == {"params"}
  y = jax.eval_shape(functools.partial(model.apply, train=True), variables, x)
  assert (y.shape, y.dtype) == ((2, 10), jnp.bfloat16)
