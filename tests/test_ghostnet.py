"""pwconv/blocks/ghost.py and pwconv/models/ghostnet.py: GhostNet counted as timm's (exactly) and as
the paper rounds it, timm's logits through the committed fixture, the Ghost module's channel split
and MAC formula, the Ghost bottleneck at strides 1 and 2 with and without SE, argument errors, and
SmallNet's ghost design."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import json
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from pwconv import models, weights
from pwconv.blocks import DenseConv, GhostBottleneck, GhostModule
from pwconv.models import GhostNet, SmallNet

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _shape(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


@functools.cache
def _full_profile(width):
  return pwconv.profile(models.ghostnet(width=width), _shape(1, 224, 224, 3))


def _profile(width=1.0):
  return _full_profile(float(width))


def _rows(profile):
  return {row.path: row for row in profile.rows}


def _random_variables(module, x, seed=0):
  """Random variables in the module's shapes, without compiling its initialisers (slow on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, jax.random.key(0)), x)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("scale", "var")
                       else rng.normal(0.0, 0.3, s.shape)).astype(s.dtype), shapes)


def _ghost_costs(cin, features, ratio, dw, area):
  """(MACs, params) of a Ghost module: 1x1 to M = ceil(F/s), depthwise d x d to M·(s-1), two BNs."""
  m = math.ceil(features / ratio)
  kernel_params = cin * m + dw * dw * m * (ratio - 1)  # stride 1: one MAC per weight per pixel
  return area * kernel_params, kernel_params + 2 * ratio * m


# timm 1.0.31: sum of parameters(); MACs = FlopCounterMode / 2 (ghostnet_100 in
# tests/fixtures/reference_counts.json; ghostnet_050 measured the same way).
@pytest.mark.parametrize("width, params, macs", [
    (1.0, 5_182_508, 141_150_512), (0.5, 2_587_292, 42_328_152)])
def test_counts_equal_timm(width, params, macs):
  p = _profile(width)
  assert (p.params, p.macs) == (params, macs)


def test_counts_equal_reference_counts_file():
  counts = json.loads((FIXTURES / "reference_counts.json").read_text())["models"]
  counts = counts["timm_ghostnet_100"]
  p = _profile()
  assert (p.params, p.macs) == (counts["params"], counts["macs"])


def test_paper_figures():
  # Table 7: GhostNet 1.0x 141M FLOPs (multiply-adds) and 5.2M params; 0.5x: 42M and 2.6M.
  p, figures = _profile(), models.PAPER_FIGURES["ghostnet"]
  assert round(p.macs / 1e6) == figures["macs"] / 1e6 == 141
  assert round(p.params / 1e5) == figures["params"] / 1e5 == 52
  half = _profile(0.5)
  assert (round(half.macs / 1e6), round(half.params / 1e5)) == (42, 26)


def test_layers_of_the_full_network():
  rows = _rows(_profile())
  assert rows["stem/conv"].macs == 112 * 112 * 9 * 3 * 16
  # block4: 5x5/2, exp 72, out 40, SE R = make_divisible(72/4, 4) = 20 with biased 1x1 convs.
  assert rows["block4/se/reduce"].params == 72 * 20 + 20
  assert rows["block4/se/expand"].params == 20 * 72 + 72
  assert rows["block4/depthwise"].macs == 28 * 28 * 25 * 72
  assert rows["block4/shortcut_depthwise"].macs == 28 * 28 * 25 * 24
  assert rows["block4/shortcut"].macs == 28 * 28 * 24 * 40
  assert "block3/shortcut" not in rows and "block3/se/reduce" not in rows  # identity, no SE
  assert rows["block10/shortcut"].macs == 14 * 14 * 80 * 112  # stride-1 projection (80 -> 112)
  assert rows["last/conv"].macs == 7 * 7 * 160 * 960
  assert (rows["head"].macs, rows["head"].params) == (960 * 1280, 960 * 1280 + 1280)
  assert (rows["classifier"].macs, rows["classifier"].params) == (1280 * 1000, 1280 * 1000 + 1000)
  assert sum(path.endswith("/ghost1/primary") for path in rows) == 16


def test_fixture_logits_match_timm():
  built = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]["timm_ghostnet_100"]
  reduced = {k: built["built"]["kwargs"][k] for k in ("width", "head_features")}
  assert reduced == {"width": 0.1, "head_features": 64}
  state = weights.load(FIXTURES / "timm_ghostnet_100.safetensors")
  data = np.load(FIXTURES / "timm_ghostnet_100.npz")
  # The reference depthwise implementation compiles fastest; every impl computes the same function.
  module, variables = weights.from_timm(
      "ghostnet_100", state, **reduced,
      depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl="xla"))
  assert (module.width, module.num_classes, module.padding) == (0.1, 10, "symmetric")
  logits = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(data["input"])), np.float64)
  ref = data["logits"]
  assert logits.shape == ref.shape == (2, 10)
  assert np.abs(logits - ref).max() / np.abs(ref).max() <= 1e-4

  # Every layer has a timm name: stem conv + BN, 16 bottlenecks x 8 (two Ghost modules), 7 SEs x 2,
  # 5 projection shortcuts x 4, 4 strided depthwise + BN, last conv + BN, head, classifier.
  paths = weights.layer_paths(variables)
  _, ref = models.registry.find_reference("timm", "ghostnet_100")
  names = ref.names(module, paths)
  assert set(names) == set(paths) and len(paths) == 2 + 16 * 8 + 7 * 2 + 5 * 4 + 4 * 2 + 2 + 2
  assert names["block7/ghost1/cheap"] == "blocks.6.0.ghost1.cheap_operation.0"
  assert names["block11/ghost2/primary_norm"] == "blocks.6.4.ghost2.primary_conv.1"
  assert names["block12/depthwise_norm"] == "blocks.7.0.bn_dw"
  assert names["block16/se/expand"] == "blocks.8.3.se.conv_expand"
  assert names["block2/shortcut_depthwise"] == "blocks.1.0.shortcut.0"
  assert names["block2/shortcut_norm"] == "blocks.1.0.shortcut.3"
  assert names["last/conv_norm"] == "blocks.9.0.bn1" and names["head"] == "conv_head"
  assert ref.kwargs == {"padding": "symmetric"} and ref.classifier == "classifier.weight"

  del state["blocks.3.0.se.conv_reduce.bias"]
  with pytest.raises(ValueError, match=r"block4/se/reduce/bias <- 'blocks.3.0.se.conv_reduce.b"):
    weights.from_timm("ghostnet_100", state, **reduced)


@pytest.mark.parametrize("cin, features, ratio, dw", [
    (16, 16, 2, 3), (8, 11, 2, 3), (5, 11, 3, 3), (6, 7, 4, 5), (3, 1, 2, 3), (9, 12, 3, 1)])
def test_ghost_module_split_and_mac_formula(cin, features, ratio, dw):
  module = GhostModule(features, ratio=ratio, dw_size=dw)
  p = pwconv.profile(module, _shape(1, 6, 5, cin))
  assert (p.macs, p.params) == _ghost_costs(cin, features, ratio, dw, 30)
  rows = _rows(p)
  m = math.ceil(features / ratio)
  assert module.primary_features == m
  assert rows["primary"].out_shape == (6, 5, m)
  assert rows["cheap"].out_shape == (6, 5, m * (ratio - 1))
  y, _ = jax.eval_shape(module.init_with_output, jax.random.key(0), jnp.zeros((2, 6, 5, cin)))
  assert y.shape == (2, 6, 5, features)
  dense = module.dense_equivalent(cin)
  assert isinstance(dense, DenseConv) and dense.kernel_size == (1, 1)
  assert pwconv.profile(dense, _shape(1, 6, 5, cin)).macs == 30 * cin * features


def test_ghost_module_concatenates_primary_then_cheap_channels():
  # No norm, no act: y = [x·P, depthwise(x·P)][:F], depthwise output channel c·(s-1) + j filtering
  # primary channel c (PyTorch's grouped-conv order, which timm's weights assume).
  module = GhostModule(7, ratio=3, norm=None, act=None, use_bias=False)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 4, 4, 5)).astype(np.float32)
  primary = rng.normal(size=(5, 3)).astype(np.float32)
  cheap = rng.normal(size=(3, 3, 1, 6)).astype(np.float32)
  params = {"primary": {"kernel": primary}, "cheap": {"kernel": cheap}}
  y = jax.jit(module.apply)({"params": params}, x)
  p = x @ primary
  padded = np.pad(p, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ghosts = np.zeros((1, 4, 4, 6), np.float32)
  for o in range(6):
    for i, j in np.ndindex(3, 3):
      ghosts[..., o] += cheap[i, j, 0, o] * padded[:, i:i + 4, j:j + 4, o // 2]
  np.testing.assert_allclose(np.asarray(y), np.concatenate([p, ghosts], -1)[..., :7], rtol=1e-5,
                             atol=1e-5)


def test_ghost_module_activation_and_linear():
  x = -jnp.ones((1, 3, 3, 4))
  kernels = {"primary": {"kernel": jnp.ones((4, 2))}, "cheap": {"kernel": jnp.ones((3, 3, 1, 2))}}
  relu = jax.jit(GhostModule(4, norm=None, use_bias=False).apply)({"params": kernels}, x)
  linear = jax.jit(GhostModule(4, norm=None, use_bias=False, linear=True).apply)(
      {"params": kernels}, x)
  assert float(relu.min()) == 0.0 and float(linear[0, 1, 1, 0]) == -4.0
  assert float(linear[0, 1, 1, 2]) == -36.0  # 3x3 taps of -4: the cheap conv is linear too


@pytest.mark.parametrize("cin, features, hidden, kernel, strides, se, hw, out_hw", [
    (16, 16, 48, 3, 1, None, 8, 8), (16, 16, 48, 3, 1, 12, 8, 8), (16, 24, 48, 3, 2, None, 8, 4),
    (16, 24, 40, 5, 2, 12, 9, 5), (12, 20, 30, 3, 1, 8, 7, 7), (8, 9, 13, 3, 2, None, 6, 3)])
def test_bottleneck_shape_and_mac_formula(cin, features, hidden, kernel, strides, se, hw, out_hw):
  block = GhostBottleneck(features, hidden, kernel, strides, se_features=se)
  p = pwconv.profile(block, _shape(1, hw, hw, cin))
  area, out_area = hw * hw, out_hw * out_hw
  ghost1 = _ghost_costs(cin, hidden, 2, 3, area)
  ghost2 = _ghost_costs(hidden, features, 2, 3, out_area)
  macs, params = ghost1[0] + ghost2[0], ghost1[1] + ghost2[1]
  if strides == 2:
    macs, params = macs + out_area * kernel**2 * hidden, params + kernel**2 * hidden + 2 * hidden
  if se:
    macs, params = macs + 2 * hidden * se, params + 2 * hidden * se + se + hidden
  projection = strides == 2 or cin != features
  if projection:
    macs += out_area * (kernel**2 * cin + cin * features)
    params += kernel**2 * cin + 2 * cin + cin * features + 2 * features
  assert (p.macs, p.params) == (macs, params)
  rows = _rows(p)
  assert ("shortcut" in rows, "depthwise" in rows, "se/reduce" in rows) == (
      projection, strides == 2, se is not None)
  y, _ = jax.eval_shape(block.init_with_output, jax.random.key(0), jnp.zeros((2, hw, hw, cin)))
  assert y.shape == (2, out_hw, out_hw, features)
  dense = block.dense_equivalent(cin)
  assert (dense.features, dense.kernel_size) == (features, (kernel, kernel))
  assert dense.strides == (strides, strides)
  assert pwconv.profile(dense, _shape(1, hw, hw, cin)).macs == out_area * kernel**2 * cin * features


def test_bottleneck_se_gate_is_hard_sigmoid():
  # PyTorch's nn.Hardsigmoid: relu6(x + 3) / 6.
  x = jnp.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0])
  np.testing.assert_allclose(jax.nn.hard_sigmoid(x), [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-7)
  # A zero reduce conv leaves SE's gate at hard_sigmoid(expand bias) = 0.75 for a bias of 1.5
  # (sigmoid: 0.82); without norms the second Ghost module is linear, so the branch scales by 0.75.
  block = GhostBottleneck(8, 16, se_features=4, norm=None, use_bias=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 5, 8)), jnp.float32)
  variables = _random_variables(block, x)
  se = variables["params"]["se"]
  chex.assert_shape((se["reduce"]["kernel"], se["reduce"]["bias"], se["expand"]["bias"]),
                    [(16, 4), (4,), (16,)])
  gated = {**variables["params"], "se": {
      "reduce": {"kernel": jnp.zeros((16, 4)), "bias": jnp.zeros(4)},
      "expand": {"kernel": se["expand"]["kernel"], "bias": jnp.full((16,), 1.5)}}}
  plain = {k: v for k, v in variables["params"].items() if k != "se"}
  with_se = jax.jit(block.apply)({"params": gated}, x) - x
  without = jax.jit(block.clone(se_features=None).apply)({"params": plain}, x) - x
  np.testing.assert_allclose(np.asarray(with_se), 0.75 * np.asarray(without), rtol=1e-5, atol=1e-6)


def test_zero_init_last_starts_as_the_identity():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 8)), jnp.float32)
  # Initialised op by op with the reference depthwise conv: faster than compiling the initialiser.
  xla = functools.partial(pwconv.DepthwiseConv, impl="xla")
  block = GhostBottleneck(8, 16, se_features=4, zero_init_last=True, depthwise_conv=xla)
  variables = block.init(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(block.apply(variables, x)), np.asarray(x))
  params = variables["params"]
  assert float(params["ghost1"]["primary_norm"]["scale"].min()) == 1.0
  assert float(jnp.abs(params["ghost2"]["cheap_norm"]["scale"]).max()) == 0.0
  alone = GhostModule(8, zero_init_last=True, depthwise_conv=xla).init(jax.random.key(0), x)
  alone = alone["params"]
  assert float(alone["primary_norm"]["scale"].min()) == 1.0  # no shortcut: the knob is ignored


@pytest.mark.parametrize("make, message", [
    (lambda: GhostModule(8, ratio=1), "GhostModule: ratio must be >= 2, got 1"),
    (lambda: GhostModule(0), "GhostModule: features must be >= 1, got 0"),
    (lambda: GhostModule(8, ratio=2.5), "GhostModule: ratio must be an int"),
    (lambda: GhostModule(8, dw_size=0), "GhostModule: dw_size must be >= 1, got 0"),
    (lambda: GhostModule(8, linear="no"), "GhostModule: linear must be True or False"),
    (lambda: GhostBottleneck(8, 0), "GhostBottleneck: hidden_features must be >= 1, got 0"),
    (lambda: GhostBottleneck(8, 16, strides=0), "GhostBottleneck: strides must be >= 1, got 0"),
    (lambda: GhostBottleneck(8, 16, se_features=0), "GhostBottleneck: se_features must be >= 1"),
    (lambda: GhostBottleneck(8, 16, ratio=1), "GhostBottleneck: ratio must be >= 2, got 1"),
    (lambda: GhostBottleneck(8, 16, padding="same"), "GhostBottleneck: padding must be one of"),
    (lambda: models.ghostnet(width=0), "GhostNet: width must be > 0"),
    (lambda: models.ghostnet(num_classes=0), "GhostNet: num_classes must be >= 1, got 0"),
    (lambda: models.ghostnet(dropout_rate=1.0), r"GhostNet: dropout_rate must be in \[0, 1\)"),
    (lambda: models.ghostnet(blocks=()), "GhostNet: blocks must be a non-empty sequence of groups of rows"),
    (lambda: models.ghostnet(blocks=(((3, 16, 16, 1),),)), r"GhostNet: each row of blocks must be"),
    (lambda: models.ghostnet(blocks=(((3, 16, 16, 2, 1),),)),
     r"GhostNet: se_ratio must be in \[0, 1\], got 2"),
    (lambda: SmallNet(block="ghost", expansion=0), "SmallNet: expansion must be >= 1, got 0"),
])
def test_bad_arguments_are_named(make, message):
  with pytest.raises((TypeError, ValueError), match=message):
    make()


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="GhostBottleneck: x must"):
    GhostBottleneck(8, 16).init(jax.random.key(0), jnp.zeros((4, 4, 8)))


def test_registry_and_exports():
  assert models.list_models("*ghost*") == ["ghostnet", "smallnet_ghost"]
  assert isinstance(models.create("ghostnet", num_classes=5), GhostNet)
  assert pwconv.GhostModule is GhostModule and pwconv.GhostBottleneck is GhostBottleneck
  net = models.ghostnet()
  assert (net.stem, net.head_features, net.dropout_rate, net.width) == (16, 1280, 0.2, 1.0)
  assert not hasattr(net, "drop_path_rate")  # timm's GhostNet has no stochastic depth


@pytest.mark.parametrize("width, shape", [
    (8, (2, 8, 8, 1)), (16, (2, 32, 32, 3)), (32, (1, 8, 8, 1))])
def test_smallnet_ghost(width, shape):
  net = SmallNet(block="ghost", width=width, num_classes=10)
  p = pwconv.profile(net, _shape(1, *shape[1:]))
  rows = _rows(p)
  # Stage 2's first block halves H, W and doubles the width: a depthwise/2 + 1x1 shortcut.
  hw = shape[1] // 2
  assert rows["stage2_block1/shortcut"].macs == hw * hw * width * 2 * width
  assert "stage1_block2/shortcut" not in rows
  assert rows["stage1_block1/ghost1/primary"].out_shape == (shape[1], shape[2], 2 * width)
  if width == 8:
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    variables = _random_variables(net, x)
    y, updates = jax.jit(functools.partial(net.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    chex.assert_shape(y, (shape[0], 10))
    chex.assert_tree_all_finite(y)
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])
