"""pwconv/blocks/convnext.py and pwconv/models/convnext.py: ConvNeXt-Tiny counted as timm's
(exactly) and as the paper rounds it, timm's logits through the committed fixture, the block's
shapes, MAC formula, GELU, layer scale, drop path and argument errors, and the SmallNet design."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import json
import math
import pathlib

import chex
import flax.linen as nn
import jax
from flax import nnx
from flax.nnx import bridge
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from pwconv import blocks, models, weights
from pwconv.blocks import ConvNeXtBlock
from pwconv.models import ConvNeXt, SmallNet
from pwconv.models.convnext import drop_path_rates

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# tests/fixtures/manifest.json: how the reduced timm model was built.
REDUCED = {"depths": (2, 1, 2, 1), "dims": (16, 24, 32, 48)}


def _shape(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


@functools.cache
def _tiny_profile():
  return pwconv.profile(models.convnext_tiny(), _shape(1, 224, 224, 3))


def _rows(profile):
  return {row.path: row for row in profile.rows}


def _random_variables(module, x, seed=0):
  """Random variables in the module's shapes (layer scales, norm scales and variances in [0.5, 1.5],
  so every branch counts)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, jax.random.key(0)), x)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("gamma", "scale", "var")
                       else rng.normal(0.0, 0.2, s.shape)).astype(s.dtype), shapes)


def test_convnext_tiny_counts_equal_timm():
  # timm 1.0.31 convnext_tiny: sum of parameters(); FlopCounterMode / 2 (convs 292,965,120 + the
  # nn.Linear matmuls 4,162,566,144), tests/fixtures/reference_counts.json.
  p = _tiny_profile()
  assert (p.params, p.macs) == (28_589_128, 4_455_531_264)
  rows = _rows(p)
  assert rows["stem/conv"].macs == 56 * 56 * 4 * 4 * 3 * 96
  assert rows["stage2_block1/downsample"].macs == 28 * 28 * 2 * 2 * 96 * 192 == 57_802_752
  assert rows["stage4_block3/expand"].macs == 7 * 7 * 768 * 3072
  assert rows["head/fc"].macs == 768 * 1000
  linear = sum(r.macs for r in p.rows if r.path.endswith(("/expand", "/project", "/fc")))
  assert linear == 4_162_566_144


def test_convnext_tiny_paper_figures():
  p = _tiny_profile()
  figures = models.PAPER_FIGURES["convnext_tiny"]
  assert round(p.macs / 1e9, 1) == figures["macs"] / 1e9 == 4.5
  assert round(p.params / 1e6, 1) == figures["params"] / 1e6 == 28.6


def test_fixture_logits_match_timm():
  with open(FIXTURES / "manifest.json") as f:
    built = json.load(f)["fixtures"]["timm_convnext_tiny"]["built"]["kwargs"]
  assert {k: tuple(built[k]) for k in REDUCED} == REDUCED
  state = weights.load(FIXTURES / "timm_convnext_tiny.safetensors")
  data = np.load(FIXTURES / "timm_convnext_tiny.npz")
  module, variables = weights.from_timm("convnext_tiny", state, **REDUCED)
  assert (module.depths, module.dims, module.num_classes) == ((2, 1, 2, 1), (16, 24, 32, 48), 10)
  logits = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(data["input"])), np.float64)
  ref = data["logits"]
  assert logits.shape == ref.shape == (2, 10)
  assert np.abs(logits - ref).max() / np.abs(ref).max() <= 1e-4
  del state["stages.1.downsample.1.bias"]
  with pytest.raises(ValueError, match=r"stage2_block1/downsample/bias <- 'stages.1.downsample.1"):
    weights.from_timm("convnext_tiny", state, **REDUCED)


def test_timm_names_cover_the_tiny_network():
  module = models.convnext_tiny()
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  paths = weights.layer_paths(shapes)
  _, ref = models.registry.find_reference("timm", "convnext_tiny")
  names = ref.names(module, paths)
  assert set(names) == set(paths) and len(paths) == 2 + 18 * 5 + 3 * 2 + 2
  assert names["stage3_block9/layer_scale"] == "stages.2.blocks.8"
  assert names["stage4_block1/downsample_norm"] == "stages.3.downsample.0"
  assert names["stage1_block2/project"] == "stages.0.blocks.1.mlp.fc2"
  assert ref.kwargs == {"padding": "symmetric"} and ref.classifier == "head.fc.weight"


@pytest.mark.parametrize("cin, features, strides, hw, out_hw", [
    (16, 16, 1, 9, 9), (16, 32, 2, 9, 4), (16, 32, 2, 8, 4), (8, 16, 1, 7, 7)])
def test_block_shape_and_mac_formula(cin, features, strides, hw, out_hw):
  block = ConvNeXtBlock(features, strides=strides)
  p = pwconv.profile(block, _shape(1, hw, hw, cin))
  e, s, area = 4 * features, strides, out_hw * out_hw
  downsample = cin != features or strides != 1
  macs = area * 49 * features + 2 * area * features * e + downsample * area * s * s * cin * features
  params = (49 * features + 2 * features * e + 2 * features + e + 2 * features + features
            + downsample * (s * s * cin * features + features + 2 * cin))
  assert (p.macs, p.params) == (macs, params)
  y, _ = jax.eval_shape(block.init_with_output, jax.random.key(0), jnp.zeros((2, hw, hw, cin)))
  assert y.shape == (2, out_hw, out_hw, features)
  dense = block.dense_equivalent(cin)
  assert (dense.features, dense.kernel_size) == (features, (7, 7))
  assert dense.strides == (strides, strides)
  dense_hw = -(-hw // strides)  # "SAME": ceil(H / s)
  assert pwconv.profile(dense, _shape(1, hw, hw, cin)).macs == dense_hw**2 * 49 * cin * features


def test_gelu_is_exact_erf():
  x = jnp.linspace(-4.0, 4.0, 81)
  exact = np.array([v * (1 + math.erf(v / math.sqrt(2))) / 2 for v in np.asarray(x, np.float64)])
  np.testing.assert_allclose(blocks.gelu(x), exact, atol=1e-6)
  assert float(jnp.abs(nn.gelu(x) - exact).max()) > 1e-4  # flax's default is the tanh form
  assert ConvNeXtBlock(8).act is blocks.gelu and models.convnext_tiny().act is blocks.gelu


def _init(block, x):
  return jax.jit(block.init)(jax.random.key(0), x)


def _structure(block, x):
  return jax.eval_shape(block.init, jax.random.key(0), x)


def test_block_defaults_layer_norm_and_layer_scale():
  x = jnp.ones((1, 4, 4, 8))
  params = _init(ConvNeXtBlock(8), x)["params"]
  np.testing.assert_array_equal(params["layer_scale"]["gamma"], np.full(8, 1e-6, np.float32))
  assert set(params["depthwise_norm"]) == {"scale", "bias"}  # LayerNorm, no batch statistics
  assert blocks.layer_norm.keywords["epsilon"] == 1e-6
  assert all("bias" in params[name] for name in ("depthwise", "expand", "project"))
  zeroed = _init(ConvNeXtBlock(8, zero_init_last=True), x)["params"]
  np.testing.assert_array_equal(zeroed["layer_scale"]["gamma"], np.zeros(8))
  plain = _init(ConvNeXtBlock(8, layer_scale_init=None, zero_init_last=True), x)["params"]
  assert "layer_scale" not in plain
  np.testing.assert_array_equal(plain["project"]["kernel"], np.zeros((32, 8)))
  unbiased = _structure(ConvNeXtBlock(8, use_bias=None), x)["params"]
  assert "bias" not in unbiased["depthwise"] and "bias" in unbiased["expand"]


def test_block_takes_the_network_norm():
  block = ConvNeXtBlock(8, strides=2, norm=pwconv.batch_norm)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
  variables = _random_variables(block, x)
  assert set(variables["batch_stats"]) == {"downsample_norm", "depthwise_norm"}
  y, updates = jax.jit(functools.partial(block.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  chex.assert_shape(y, (2, 3, 3, 8))
  assert not np.allclose(updates["batch_stats"]["depthwise_norm"]["mean"],
                         variables["batch_stats"]["depthwise_norm"]["mean"])
  assert "depthwise_norm" not in _structure(ConvNeXtBlock(8, norm=None), x)["params"]


def test_block_through_the_nnx_bridge():
  block = ConvNeXtBlock(16, kernel_size=3, strides=2)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
  model = bridge.ToNNX(block, rngs=nnx.Rngs(0))
  bridge.lazy_init(model, x)
  y = model(x)
  variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
  chex.assert_shape(y, (2, 4, 4, 16))
  chex.assert_trees_all_close(y, block.apply(variables, x), rtol=1e-6, atol=1e-6)


def test_drop_path():
  x = jax.random.normal(jax.random.key(1), (16, 5, 5, 8))
  variables = _random_variables(ConvNeXtBlock(8), x)
  apply = jax.jit(lambda rate, train, x: ConvNeXtBlock(8, drop_path_rate=rate).apply(
      variables, x, train=train, rngs={"dropout": jax.random.key(2)}), static_argnums=(0, 1))
  chex.assert_trees_all_equal(apply(0.0, True, x), apply(0.0, False, x))  # rate 0: bitwise identity
  branch = apply(0.5, False, x) - x
  assert float(jnp.abs(branch).max(axis=(1, 2, 3)).min()) > 0.1
  y = apply(0.5, True, x)
  dropped = np.asarray(jnp.all(y == x, axis=(1, 2, 3)))
  assert 0 < dropped.sum() < 16
  np.testing.assert_allclose(y[~dropped], (x + 2 * branch)[~dropped], rtol=1e-5, atol=1e-5)


def test_network_drop_path_schedule_is_timms():
  # timm: torch.linspace(0, rate, sum(depths)), block k of the network getting the k-th value.
  np.testing.assert_allclose(drop_path_rates(0.1, 18)[:4], [0, 0.1 / 17, 0.2 / 17, 0.3 / 17])
  assert drop_path_rates(0.2, 1) == [0.0] and drop_path_rates(0.3, 4)[-1] == 0.3
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, ConvNeXtBlock):
      seen[context.module.name] = context.module.drop_path_rate
    return next_fun(*args, **kwargs)

  net = ConvNeXt(num_classes=3, depths=(2, 1, 2), dims=(8, 8, 16), drop_path_rate=0.4)
  with nn.intercept_methods(record):
    jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert seen == pytest.approx({"stage1_block1": 0.0, "stage1_block2": 0.1, "stage2_block1": 0.2,
                                "stage3_block1": 0.3, "stage3_block2": 0.4})


def test_network_drop_path_zero_is_identity_in_training():
  net = ConvNeXt(num_classes=3, depths=(1, 1), dims=(8, 16))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = _random_variables(net, x)
  apply = jax.jit(lambda train: net.apply(variables, x, train=train,
                                          rngs={"dropout": jax.random.key(3)}), static_argnums=0)
  train = apply(True)
  chex.assert_trees_all_equal(train, apply(False))
  chex.assert_shape(train, (2, 3))


@pytest.mark.parametrize("width, shape", [(8, (2, 8, 8, 1)), (32, (2, 32, 32, 3))])
def test_smallnet_convnext(width, shape):
  net = SmallNet(block="convnext", width=width, num_classes=10)
  assert models.SMALLNET_BLOCKS["convnext"].downsample == "stride"
  p = pwconv.profile(net, _shape(1, *shape[1:]))
  rows = _rows(p)
  h = shape[1] // 2
  assert rows["stage2_block1/downsample"].macs == h * h * 4 * width * 2 * width
  assert rows["stage2_block2/expand"].macs == h * h * 2 * width * 8 * width
  assert "stage1_block1/downsample" not in rows
  assert rows["stage2_block1/project"].out_shape == (h, h, 2 * width)
  x = jax.random.normal(jax.random.key(0), shape)
  logits = jax.jit(net.apply)(_random_variables(net, x), x)
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("make, message", [
    (lambda: ConvNeXtBlock(0), "ConvNeXtBlock: features must be >= 1"),
    (lambda: ConvNeXtBlock(8, kernel_size=(7,)), "ConvNeXtBlock: kernel_size must be"),
    (lambda: ConvNeXtBlock(8, expansion=0), r"ConvNeXtBlock: expansion must be > 0"),
    (lambda: ConvNeXtBlock(8, expansion=0.01), "ConvNeXtBlock: expansion·features must be >= 1"),
    (lambda: ConvNeXtBlock(8, layer_scale_init="1e-6"),
     "ConvNeXtBlock: layer_scale_init must be a number"),
    (lambda: ConvNeXtBlock(8, drop_path_rate=1.0), r"ConvNeXtBlock: drop_path_rate must be in"),
    (lambda: ConvNeXtBlock(8, padding="valid"), "ConvNeXtBlock: padding must be one of"),
    (lambda: ConvNeXt(depths=(1, 1), dims=(8,)), "ConvNeXt: depths and dims must have one entry"),
    (lambda: ConvNeXt(depths=(), dims=()), "ConvNeXt: depths must be a non-empty sequence"),
    (lambda: ConvNeXt(depths=(1, 0), dims=(8, 8)), "ConvNeXt: depths must be >= 1"),
    (lambda: ConvNeXt(depths=(1,), dims=(8.0,)), "ConvNeXt: dims must be an int"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), patch_size=0), "ConvNeXt: patch_size must be >= 1"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), drop_path_rate=-0.1),
     "ConvNeXt: drop_path_rate must be in"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), kernel_size=0), "ConvNeXt: kernel_size must be"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), expansion=-1), "ConvNeXt: expansion must be > 0"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), layer_scale_init="x"),
     "ConvNeXt: layer_scale_init must be"),
    (lambda: ConvNeXt(depths=(1,), dims=(8,), num_classes=0), "ConvNeXt: num_classes must be"),
    (lambda: models.NormHead(0), "NormHead: features must be >= 1"),
])
def test_bad_arguments_named(make, message):
  with pytest.raises((TypeError, ValueError), match=message):
    make()


def test_input_smaller_than_the_downsample_window_named():
  with pytest.raises(ValueError, match=r"ConvNeXtBlock: x of shape \(1, 1, 1, 8\) is smaller than"):
    jax.eval_shape(ConvNeXtBlock(16, strides=2).init, jax.random.key(0), jnp.zeros((1, 1, 1, 8)))
  with pytest.raises(ValueError, match="ConvNeXtBlock: x must have rank 4"):
    jax.eval_shape(ConvNeXtBlock(16).init, jax.random.key(0), jnp.zeros((4, 4, 8)))
