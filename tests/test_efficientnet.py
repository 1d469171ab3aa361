"""MBConv / Fused-MBConv blocks and the MobileNetV3 / EfficientNet networks: exact counts against
timm, the papers' figures, timm fixture logits, block shapes and MAC formulas, SE sizing, hard
activations, drop path and bad inputs."""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import bridge

import pwconv
from pwconv import models, weights
from pwconv.blocks import FusedMBConv, MBConv, hard_sigmoid, hard_swish
from pwconv.models import efficientnet

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"

# pwconv name -> (timm name, params, MACs at 224x224): sum of timm's parameters() and
# FlopCounterMode/2 of the full-size model (tests/fixtures/reference_counts.json).
TIMM = {
    "mobilenet_v3_large": ("mobilenetv3_large_100", 5_483_032, 216_589_760),
    "mobilenet_v3_small": ("mobilenetv3_small_100", 2_542_856, 56_510_400),
    "efficientnet_b0": ("efficientnet_b0", 5_288_548, 385_814_752),
    "efficientnet_v2_rw_t": ("efficientnetv2_rw_t", 13_649_388, 1_912_879_840),
    "efficientnet_v2_b0": ("tf_efficientnetv2_b0", 7_139_704, 718_086_176),
}
# The reduced fixtures' size knobs (manifest.json's kwargs), by timm name.
REDUCED = {
    "mobilenetv3_large_100": {"channel_multiplier": 0.1, "depth_multiplier": 0.5},
    "mobilenetv3_small_100": {"channel_multiplier": 0.1, "depth_multiplier": 0.5},
    "efficientnet_b0": {"channel_multiplier": 0.125, "depth_multiplier": 0.5},
    "efficientnetv2_rw_t": {"channel_multiplier": 0.125, "depth_multiplier": 0.3},
    "tf_efficientnetv2_b0": {"channel_multiplier": 0.125, "depth_multiplier": 0.25},
}


@functools.cache
def _profile(name):
  return pwconv.profile(models.create(name), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _shapes(module, shape):
  """(variable shapes, output shape) of ``module`` on ``shape``, abstractly."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return variables, jax.eval_shape(module.apply, variables, x).shape


@pytest.mark.parametrize("name", list(TIMM))
def test_full_size_counts_equal_timm(name):
  timm_name, params, macs = TIMM[name]
  counts = json.loads((FIXTURES / "reference_counts.json").read_text())["models"]
  assert (counts[f"timm_{timm_name}"]["params"], counts[f"timm_{timm_name}"]["macs"]) == (params,
                                                                                         macs)
  p = _profile(name)
  assert (p.params, p.macs) == (params, macs)


def test_paper_figures_with_the_papers_rounding():
  figures = models.PAPER_FIGURES
  large, small, b0, rw_t = (_profile(n) for n in ("mobilenet_v3_large", "mobilenet_v3_small",
                                                  "efficientnet_b0", "efficientnet_v2_rw_t"))
  # MobileNetV3 (Table 3/4) truncates: 5.48M -> 5.4M, 2.54M -> 2.5M, 56.5M MAdds -> 56M.
  assert int(large.params / 1e5) / 10 == figures["mobilenet_v3_large"]["params"] / 1e6 == 5.4
  assert int(small.params / 1e5) / 10 == figures["mobilenet_v3_small"]["params"] / 1e6 == 2.5
  assert int(small.macs / 1e6) == figures["mobilenet_v3_small"]["macs"] / 1e6 == 56
  # Large's 219M is 1.1% above the released network's 216.6M (timm and torchvision alike).
  assert abs(large.macs / figures["mobilenet_v3_large"]["macs"] - 1) < 0.012
  # EfficientNet-B0 (Table 2): 5.3M params, 0.39B FLOPs (multiply-adds), rounded.
  assert round(b0.params / 1e5) / 10 == figures["efficientnet_b0"]["params"] / 1e6 == 5.3
  assert round(b0.macs / 1e7) / 100 == figures["efficientnet_b0"]["macs"] / 1e9 == 0.39
  # timm's model card for efficientnetv2_rw_t: 13.6M params, 1.9 GMACs.
  assert round(rw_t.params / 1e5) / 10 == figures["efficientnet_v2_rw_t"]["params"] / 1e6 == 13.6
  assert round(rw_t.macs / 1e8) / 10 == figures["efficientnet_v2_rw_t"]["macs"] / 1e9 == 1.9


@pytest.mark.parametrize("timm_name", list(REDUCED))
def test_fixture_logits_match_timm(timm_name):
  key = f"timm_{timm_name}"
  built = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"][key]["built"]["kwargs"]
  assert {k: built[k] for k in REDUCED[timm_name]} == REDUCED[timm_name]
  data = np.load(FIXTURES / f"{key}.npz")
  module, variables = weights.from_timm(timm_name, weights.load(FIXTURES / f"{key}.safetensors"),
                                        **REDUCED[timm_name])
  logits = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(data["input"])), np.float64)
  ref = data["logits"]
  assert logits.shape == ref.shape == (2, 10)
  assert np.abs(logits - ref).max() / np.abs(ref).max() <= 1e-4


def test_timm_names_follow_the_block_kinds():
  names = efficientnet.timm_names(models.create("mobilenet_v3_small"), [])
  assert names["stage1_block1/depthwise"] == "blocks.0.0.conv_dw"  # "ds": no expand
  assert names["stage1_block1/project_norm"] == "blocks.0.0.bn2"
  assert names["stage2_block2/expand"] == "blocks.1.1.conv_pw"
  assert names["stage3_block1/se/reduce"] == "blocks.2.0.se.conv_reduce"
  assert names["stage6_block1/conv_norm"] == "blocks.5.0.bn1"  # the final "cn" 1x1
  assert names["head"] == "conv_head"
  v2 = efficientnet.timm_names(models.create("efficientnet_v2_rw_t"), [])
  assert v2["stage2_block1/expand"] == "blocks.1.0.conv_exp"
  assert v2["stage2_block1/project_norm"] == "blocks.1.0.bn2"
  assert v2["head/conv_norm"] == "bn2"


@pytest.mark.parametrize("repeats, multiplier, expected", [
    # timm's _scale_stage_depth on the same inputs.
    ([1, 1, 2], 0.5, [1, 1, 1]), ([4], 0.9, [4]), ([15], 0.9, [14]), ([1, 1], 0.5, [1, 1]),
    ([3], 0.3, [1]), ([9], 0.9, [9]), ([2], 0.25, [1]), ([2, 3], 2.0, [4, 6]),
])
def test_scale_depth_as_timm(repeats, multiplier, expected):
  assert efficientnet.scale_depth(repeats, multiplier) == expected


def test_plan_widths_strides_and_drop_path_schedule():
  net = models.efficientnet_b0(drop_path_rate=0.2)
  plan = net.plan()
  assert len(plan) == 16
  assert [b.features for b in plan[:4]] == [16, 24, 24, 40]
  assert [b.stride for b in plan[:4]] == [1, 2, 1, 2]
  # timm: drop_path_rate · block_idx / block_count, counted over the whole network.
  assert [b.drop_path_rate for b in plan] == [0.2 * i / 16 for i in range(16)]
  # Width 0.1 keeps MobileNetV3's 16-channel stem (timm's fix_stem) and its 1280 head.
  small = models.mobilenet_v3_large(channel_multiplier=0.1)
  assert (small.stem_width(), small.head_width(), small.plan()[0].features) == (16, 1280, 8)
  assert models.efficientnet_b0(channel_multiplier=0.125).head_width() == 160


def test_hard_activations_are_pytorchs():
  x = jnp.array([-5.0, -3.0, -1.5, 0.0, 1.0, 3.0, 4.5])
  np.testing.assert_allclose(hard_sigmoid(x), [0, 0, 0.25, 0.5, 4 / 6, 1, 1], atol=1e-7)
  np.testing.assert_allclose(hard_swish(x), [0, 0, -0.375, 0, 4 / 6, 3, 4.5], atol=1e-7)
  np.testing.assert_allclose(hard_swish(x), x * jnp.clip(x + 3, 0, 6) / 6, atol=1e-7)


def _block_macs(block, shape):
  return pwconv.profile(block, jax.ShapeDtypeStruct(shape, jnp.float32)).macs


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("se_ratio", [None, 0.25])
def test_mbconv_shapes_and_mac_formula(strides, se_ratio):
  h, w, cin, f, t, k = 10, 9, 16, 16, 4.5, 5
  block = MBConv(f, t, (k, k), (strides, strides), se_ratio=se_ratio)
  variables, out_shape = _shapes(block, (2, h, w, cin))
  ho, wo = -(-h // strides), -(-w // strides)
  assert out_shape == (2, ho, wo, f)
  e, r = round(cin * t), round(round(cin * t) * (se_ratio or 0) / t)
  assert variables["params"]["expand"]["kernel"].shape == (cin, e)
  assert ("se" in variables["params"]) == (se_ratio is not None)
  macs = h * w * cin * e + ho * wo * k * k * e + 2 * e * r + ho * wo * e * f
  assert _block_macs(block, (1, h, w, cin)) == macs
  # The shortcut exists exactly at stride 1 (equal channels): drop path is only built there.
  assert block.has_shortcut(cin) == (strides == 1)


def test_mbconv_without_expansion_is_the_depthwise_separable_block():
  block = MBConv(24, 1, (3, 3), se_ratio=0.25)
  params = _shapes(block, (1, 8, 8, 16))[0]["params"]
  assert sorted(params) == ["depthwise", "depthwise_norm", "project", "project_norm", "se"]
  assert params["se"]["reduce"]["kernel"].shape == (16, 4)  # round(16 · 0.25)
  assert _block_macs(block, (1, 8, 8, 16)) == 64 * 9 * 16 + 2 * 16 * 4 + 64 * 16 * 24


def test_se_sizing_from_input_or_hidden_width():
  # EfficientNet: from the block input, round(E · se_ratio / t) = round(24 · 0.25) = 6.
  eff = _shapes(MBConv(40, 6, se_ratio=0.25), (1, 8, 8, 24))[0]["params"]["se"]
  assert eff["reduce"]["kernel"].shape == (144, 6)
  # MobileNetV3: make_divisible(E · 0.25) of the hidden width, 72 -> 24 (timm's blocks.2.0.se).
  mnv3 = _shapes(MBConv(40, 3, se_ratio=0.25, se_from="hidden", se_round=models.make_divisible,
                       round_hidden=models.make_divisible), (1, 8, 8, 24))[0]["params"]["se"]
  assert mnv3["reduce"]["kernel"].shape == (72, 24)
  assert mnv3["expand"]["bias"].shape == (72,)


def test_mobilenet_v3_se_gate_and_act():
  block = MBConv(16, 4, se_ratio=0.25, se_from="hidden", se_act=nn.relu, se_gate=hard_sigmoid,
                 act=hard_swish)
  x = _x((1, 6, 6, 16))
  variables = block.init(jax.random.key(0), x)
  _, state = block.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  hidden = state["intermediates"]["depthwise_norm"]["__call__"][0]
  se = variables["params"]["se"]
  s = jnp.mean(hard_swish(hidden), axis=(1, 2), keepdims=True)
  s = nn.relu(s @ se["reduce"]["kernel"] + se["reduce"]["bias"])
  s = hard_sigmoid(s @ se["expand"]["kernel"] + se["expand"]["bias"])
  excited = state["intermediates"]["se"]["__call__"][0]
  np.testing.assert_allclose(excited, hard_swish(hidden) * s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("expansion", [1, 4])
def test_fused_mbconv_shapes_and_mac_formula(strides, expansion):
  h, w, cin, f, k = 8, 8, 16, 16, 3
  block = FusedMBConv(f, expansion, (k, k), (strides, strides))
  variables, out_shape = _shapes(block, (2, h, w, cin))
  params = variables["params"]
  ho = h // strides
  if expansion == 1:  # one kxk conv Cin -> F
    assert sorted(params) == ["conv", "conv_norm"]
    macs = ho * ho * k * k * cin * f
  else:
    e = cin * expansion
    assert params["expand"]["kernel"].shape == (k, k, cin, e)
    macs = ho * ho * k * k * cin * e + ho * ho * e * f
  assert _block_macs(block, (1, h, w, cin)) == macs
  assert out_shape == (2, ho, ho, f)


def test_fused_mbconv_costs_more_macs_than_mbconv_at_the_same_width():
  shape = (1, 28, 28, 64)
  fused, mb = _block_macs(FusedMBConv(64, 4), shape), _block_macs(MBConv(64, 4), shape)
  assert fused == 784 * (9 * 64 * 256 + 256 * 64)
  assert mb == 784 * (64 * 256 + 9 * 256 + 256 * 64)
  assert round(mb / fused, 2) == 0.21  # the bench's theory x for this case


@pytest.mark.parametrize("block", [MBConv(32, 4, (5, 5), (2, 2), se_ratio=0.25),
                                   FusedMBConv(32, 4, (3, 3), (2, 2))])
def test_dense_equivalent_is_the_kxk_conv(block):
  dense = block.dense_equivalent(16)
  assert isinstance(dense, pwconv.DenseConv)
  assert (dense.features, tuple(dense.kernel_size), tuple(dense.strides)) == (
      32, tuple(block.kernel_size), (2, 2))
  assert _block_macs(dense, (1, 8, 8, 16)) == 16 * block.kernel_size[0] ** 2 * 16 * 32


def test_projection_shortcut_when_residual_forced():
  block = MBConv(24, 4, strides=(2, 2), residual=True)
  params = _shapes(block, (1, 8, 8, 16))[0]["params"]
  assert params["shortcut"]["kernel"].shape == (16, 24)
  assert _block_macs(block, (1, 8, 8, 16)) == (64 * 16 * 64 + 16 * 9 * 64 + 16 * 64 * 24
                                               + 16 * 16 * 24)


@pytest.mark.parametrize("cls", [MBConv, FusedMBConv])
def test_drop_path(cls):
  x = _x((8, 6, 6, 16))
  block = cls(16, 4)
  variables = block.init(jax.random.key(0), x)
  train = functools.partial(block.apply, variables, x, train=True, mutable=["batch_stats"])
  # Rate 0: the identity on the branch, bitwise, and no random numbers are drawn.
  y0, state = block.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                          capture_intermediates=True)
  branch = state["intermediates"]["project_norm"]["__call__"][0]
  np.testing.assert_array_equal(y0, branch + x)
  np.testing.assert_array_equal(train()[0], y0)
  # Rate 0.5 drops whole examples' branches while training, and nothing in eval.
  dropped = block.clone(drop_path_rate=0.5)
  y, _ = dropped.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(3)})
  kept = [bool(jnp.allclose(y[i], 2 * branch[i] + x[i], atol=1e-5)) for i in range(8)]
  gone = [bool(jnp.array_equal(y[i], x[i])) for i in range(8)]
  assert all(k != g for k, g in zip(kept, gone)) and any(gone) and any(kept)
  np.testing.assert_array_equal(dropped.apply(variables, x), block.apply(variables, x))


def test_network_drop_path_changes_only_training_output():
  stages = ((efficientnet.BlockDef(3, 3, 1, 2, 8, 0.25),),)
  net = efficientnet.EfficientNet(num_classes=4, stem_features=8, stages=stages, head_features=8)
  x = _x((4, 16, 16, 3))
  variables = net.init(jax.random.key(0), x)
  rate0 = net.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  rated = net.clone(drop_path_rate=0.5)
  rngs = {"dropout": jax.random.key(1)}
  assert not np.allclose(rated.apply(variables, x, train=True, mutable=["batch_stats"],
                                     rngs=rngs)[0], rate0)
  np.testing.assert_array_equal(rated.apply(variables, x), net.apply(variables, x))


@pytest.mark.parametrize("block", ["mbconv", "fused_mbconv"])
@pytest.mark.parametrize("shape, width", [((2, 8, 8, 1), 8), ((2, 32, 32, 3), 16)])
def test_smallnet_designs(block, shape, width):
  net = models.SmallNet(block=block, width=width)
  if shape[-1] == 1:  # digits: run it
    logits = net.apply(net.init(jax.random.key(0), _x(shape)), _x(shape))
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
  assert _shapes(net, shape)[1] == (2, 10)
  p = pwconv.profile(net, jax.ShapeDtypeStruct((1, *shape[1:]), jnp.float32))
  stage2 = [r for r in p.rows if r.path.startswith("stage2_block1/")]
  assert stage2[-1].out_shape[:2] == (shape[1] // 2, shape[2] // 2)  # downsample="stride"
  assert ("stage1_block1/se/reduce" in {r.path for r in p.rows}) == (block == "mbconv")
  assert f"smallnet_{block}" in models.list_models("smallnet_*")


@pytest.mark.parametrize("make, message", [
    (lambda: MBConv(16, 0), "MBConv: expansion must be > 0, got 0"),
    (lambda: MBConv(0), "MBConv: features must be >= 1, got 0"),
    (lambda: MBConv(16, se_ratio=1.5), r"MBConv: se_ratio must be in \(0, 1\], got 1.5"),
    (lambda: MBConv(16, se_from="output"), "MBConv: se_from must be one of"),
    (lambda: MBConv(16, se_gate="sigmoid"), "MBConv: se_gate must be a callable"),
    (lambda: MBConv(16, drop_path_rate=1.0), r"MBConv: drop_path_rate must be in \[0, 1\)"),
    (lambda: MBConv(16, residual="yes"), "MBConv: residual must be True, False or None"),
    (lambda: FusedMBConv(16, 1, se_ratio=0.25), "FusedMBConv: se_ratio needs expansion != 1"),
    (lambda: FusedMBConv(16, strides=(0, 1)), "FusedMBConv: strides must be >= 1"),
    (lambda: models.efficientnet_b0(channel_multiplier=0), "EfficientNet: channel_multiplier"),
    (lambda: models.mobilenet_v3_small(drop_path_rate=-0.1), "MobileNetV3: drop_path_rate"),
    (lambda: models.efficientnet_b0(stages=()), "EfficientNet: stages must be a non-empty"),
    (lambda: models.efficientnet_b0(stages=((efficientnet.BlockDef(1, 3, 3, 6, 16),),)),
     r"EfficientNet: stages\[0\]: stride must be 1 or 2, got 3"),
    (lambda: models.efficientnet_b0(stages=(((1, 3, 1, 6, 16),),)),
     r"EfficientNet: stages\[0\] must hold BlockDef rows"),
    (lambda: models.efficientnet_b0(se_from="block"), "EfficientNet: se_from must be one of"),
])
def test_bad_arguments_name_the_module_and_field(make, message):
  with pytest.raises((ValueError, TypeError), match=message):
    make()


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="MBConv: x must have rank 4"):
    MBConv(16).init(jax.random.key(0), jnp.zeros((8, 8, 16)))


@pytest.mark.parametrize("block", [MBConv(16, 4, se_ratio=0.25, drop_path_rate=0.1),
                                   FusedMBConv(24, 4, strides=(2, 2), se_ratio=0.25)])
def test_blocks_through_the_nnx_bridge(block):
  x = _x((2, 8, 8, 16))
  model = bridge.ToNNX(block, rngs=nnx.Rngs(0))
  bridge.lazy_init(model, x)
  variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
               "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
  np.testing.assert_allclose(model(x), block.apply(variables, x), rtol=1e-6, atol=1e-6)
