"""pwconv/models.py: paper networks' params and MACs against the published figures, forward shapes,
activations, and SmallNet's block families, costs and argument errors."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import json
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from pwconv import models

PAPER_MODELS = ("mobilenet_v1", "mobilenet_v2", "squeezenet1_0", "googlenet", "resnet50")


@functools.cache
def _profile(name, resolution=224, **kwargs):
  model = getattr(models, name)(**kwargs)
  return pwconv.profile(model, jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32))


def _layer_sums(profile):
  """{top-level layer name: (params, macs)} summed over the rows below it that have either."""
  sums = {}
  for row in profile.rows:
    if not (row.params or row.macs):
      continue
    params, macs = sums.get(row.path.split("/")[0], (0, 0))
    sums[row.path.split("/")[0]] = (params + row.params, macs + row.macs)
  return sums


def _variables(model, x, seed=0):
  """Random variables in the model's shapes without compiling its initialisers (slow on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if path[-1].key == "var"
                       else rng.normal(0.0, 0.1, s.shape).astype(s.dtype)), shapes)


# Exact counts at 224x224 (params; MACs per image, padded taps counted).
@pytest.mark.parametrize("name, params, macs", [
    ("mobilenet_v1", 4_231_976, 568_740_352),
    ("mobilenet_v2", 3_504_872, 300_774_272),
    ("squeezenet1_0", 1_248_424, 818_924_576),
    ("googlenet", 6_998_552, 1_582_671_872),
    ("resnet50", 25_557_032, 4_089_184_256),
])
def test_paper_model_exact_counts(name, params, macs):
  p = _profile(name)
  assert (p.params, p.macs) == (params, macs)


def test_mobilenet_v1_matches_paper():
  p = _profile("mobilenet_v1")
  published = models.PAPER_FIGURES["mobilenet_v1"]
  # 568.7M MACs and 4,231,976 params (BatchNorm scale/bias included) print as 569M and 4.2M.
  assert round(p.macs / 1e6) == published["macs"] / 1e6 == 569
  assert round(p.params / 1e5) == published["params"] / 1e5 == 42


def test_mobilenet_v1_macs_layer_by_layer():
  size, cin = 112, 32
  macs = size * size * 3 * 3 * 3 * cin  # conv 3x3/2 32
  for cout, stride in models.MOBILENET_V1:
    size //= stride
    macs += size * size * (3 * 3 * cin + cin * cout)  # depthwise 3x3 + pointwise 1x1
    cin = cout
  macs += cin * 1000  # FC
  assert macs == _profile("mobilenet_v1").macs == 568_740_352


# Howard et al. 2017, Table 6 (width multiplier) and 7 (resolution): MACs and params in millions.
@pytest.mark.parametrize("width_multiplier, resolution, macs, params", [
    (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5), (1.0, 160, 290, 4.2),
])
def test_mobilenet_v1_tables_6_and_7(width_multiplier, resolution, macs, params):
  p = _profile("mobilenet_v1", resolution, width_multiplier=width_multiplier)
  assert abs(p.macs / 1e6 - macs) < 1  # the paper rounds some figures and truncates others
  assert round(p.params / 1e6, 1) == params


def test_mobilenet_v2_matches_paper():
  p = _profile("mobilenet_v2")
  # torchvision's exact count, with BatchNorm scale and bias. The paper's 3.4M is TF-slim's 3.47M
  # truncated, which counts the conv and FC weights alone. 300.77M MACs: the paper and TF-slim print
  # 300M, truncating as TF-slim's 582.2M -> 582 below.
  assert p.params == 3_504_872
  assert int(p.macs / 1e6) == models.PAPER_FIGURES["mobilenet_v2"]["macs"] / 1e6 == 300
  assert _profile("mobilenet_v2", norm=None, use_bias=False).params == 3_470_760


# The TF-slim reference release (research/slim/nets/mobilenet/README.md): MACs in millions,
# truncated.
@pytest.mark.parametrize("width_multiplier, resolution, macs", [
    (1.4, 224, 582), (0.35, 224, 59), (1.0, 128, 99),
])
def test_mobilenet_v2_reference_release(width_multiplier, resolution, macs):
  p = _profile("mobilenet_v2", resolution, width_multiplier=width_multiplier)
  assert int(p.macs / 1e6) == macs


def test_squeezenet_matches_paper():
  p = _profile("squeezenet1_0")
  assert p.params == models.PAPER_FIGURES["squeezenet1_0"]["params"] == 1_248_424
  assert round(p.macs / 1e7) == 82  # torchvision's 0.82 G; the paper gives no MAC count


def test_googlenet_rows_match_table_1():
  sums = _layer_sums(_profile("googlenet"))
  table = models.PAPER_FIGURES["googlenet"]["rows"]
  assert list(sums) == list(table)
  assert sums["inception_3a"][1] == 128_049_152  # 28·28·(192·64 + 192·96 + 9·96·128 + ...)
  assert sums["inception_3a"][0] == 163_696  # Table 1 prints 159K
  assert sums["conv1"][1] == 112 * 112 * 7 * 7 * 3 * 64  # Table 1 misprints 34M
  assert sums["inception_5a"][1] == 51_079_168  # Table 1 misprints 54M
  for name, row in table.items():
    if name not in ("conv1", "inception_5a"):
      assert abs(sums[name][1] - row["macs"]) < 1e6, name


def test_googlenet_inception_rows_follow_the_block_formula():
  sums = _layer_sums(_profile("googlenet"))
  size, cin = 28, 192
  for stage, group in enumerate(models.GOOGLENET, start=3):
    for letter, (f1, r3, f3, r5, f5, pp) in zip("abcde", group):
      macs = size * size * (cin * (f1 + r3 + r5 + pp) + 9 * r3 * f3 + 25 * r5 * f5)
      assert sums[f"inception_{stage}{letter}"][1] == macs
      cin = f1 + f3 + f5 + pp
    size //= 2


def test_googlenet_total_against_paper():
  p = _profile("googlenet")
  # "About 1.5 billion multiply-adds" is Table 1's ops column summed (1,502M); with its conv1 and 5a
  # misprints corrected (+84M, -3M) the column gives 1.58G, this module's count. Params: 7.0M
  # against the column's 6.8M (Table 1's params entries are 2-10% below their rows' own formula).
  corrected = 1_502e6 - 34e6 + 118e6 - 54e6 + 51e6
  assert abs(p.macs - corrected) < 1e6
  assert round(p.macs / 1e8) == 16  # 1.6G, not the paper's 1.5G
  assert round(p.params / 1e5) == 70


def test_resnet50_matches_torchvision():
  p = _profile("resnet50")
  assert p.params == models.PAPER_FIGURES["resnet50"]["params"] == 25_557_032
  assert round(p.macs / 1e9, 1) == models.PAPER_FIGURES["resnet50"]["macs"] / 1e9 == 4.1


def test_resnet50_macs_block_by_block():
  macs = 112 * 112 * 7 * 7 * 3 * 64  # stem
  size, cin = 56, 64
  for i, blocks in enumerate((3, 4, 6, 3)):
    width = 64 * 2**i
    for j in range(blocks):
      out = size // 2 if i > 0 and j == 0 else size
      macs += size * size * cin * width  # 1x1 reduce
      macs += out * out * (9 * width * width + width * 4 * width)  # strided 3x3, 1x1 expand
      if j == 0:
        macs += out * out * cin * 4 * width  # projection shortcut
      size, cin = out, 4 * width
  macs += cin * 1000
  assert macs == _profile("resnet50").macs


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_model_forward_shape(name):
  model = getattr(models, name)(num_classes=7)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  y = jax.jit(model.apply)(_variables(model, x), x)
  chex.assert_shape(y, (2, 7))
  chex.assert_tree_all_finite(y)


# Activations per forward pass: MobileNetV1 stem + 13 x 2; MobileNetV2 stem + 1 (t = 1: no expand) +
# 16 x 2 (expand, depthwise; the projection is linear) + last conv; SqueezeNet conv1 + 8 fires x 3 +
# conv10; GoogLeNet conv1 + conv2's 2 + 9 inceptions x 6; ResNet-50 stem + 16 x 3.
@pytest.mark.parametrize("name, count", [
    ("mobilenet_v1", 27), ("mobilenet_v2", 35), ("squeezenet1_0", 26), ("googlenet", 57),
    ("resnet50", 49),
])
def test_paper_model_activations(name, count):
  calls = []

  def act(x):
    calls.append(x.shape)
    return jax.nn.relu(x)

  model = getattr(models, name)(act=act)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  calls.clear()
  jax.eval_shape(model.apply, variables, x)
  assert len(calls) == count


def test_paper_models_pass_knobs_to_blocks():
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  model = models.mobilenet_v1(num_classes=5, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.bfloat16
  # SqueezeNet without norms has a bias on every conv; with BatchNorm, a scale and a bias instead
  # (conv10, the classifier, keeps its bias and gets no norm).
  plain = _profile("squeezenet1_0", 64)
  with_bn = pwconv.profile(models.squeezenet1_0(norm=pwconv.batch_norm), x)
  assert with_bn.params - plain.params == 96 + sum(
      sum(fire) for group in models.SQUEEZENET1_0 for fire in group)


def test_make_divisible_as_reference():
  values = (32 * 0.35, 18, 1280, 3, 24 * 1.4)
  assert [models.make_divisible(v) for v in values] == [16, 24, 1280, 8, 32]


def test_max_pool_ceil_sizes_as_squeezenet():
  x = jnp.zeros((1, 109, 109, 1))
  sizes = []
  for _ in range(3):
    x = models.max_pool_ceil(x)
    sizes.append(x.shape[1])
  assert sizes == [54, 27, 13]


@pytest.mark.parametrize("block", models.SMALLNET_BLOCKS)
@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
def test_smallnet_every_block(block, shape):
  model = models.SmallNet(block)
  x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
  variables = _variables(model, x)
  assert set(variables) == {"params", "batch_stats"}
  y = model.apply(variables, x)
  chex.assert_shape(y, (2, 10))
  chex.assert_tree_all_finite(y)
  y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_tree_all_finite(y_train)
  changed = jax.tree.map(lambda old, new: bool(np.any(old != new)),
                         variables["batch_stats"], updates["batch_stats"])
  assert jax.tree.leaves(changed) and all(jax.tree.leaves(changed))


def test_smallnet_runner_knobs_reach_every_block():
  # The runner's other choices: LayerNorm (no batch statistics), GELU, bfloat16 computation.
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  for block in models.SMALLNET_BLOCKS:
    model = models.SmallNet(block, norm=nn.LayerNorm, act=nn.gelu, dtype=jnp.bfloat16)
    variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x)
    assert set(variables) == {"params"}, block
    y = jax.eval_shape(functools.partial(model.apply, train=True), variables, x)
    assert (y.shape, y.dtype) == ((2, 10), jnp.bfloat16), block


def test_smallnet_costs():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  dense = pwconv.profile(models.SmallNet("dense"), x)
  # stem 3 -> 32, two 3x3 32 -> 32 at 32x32, 3x3 32 -> 64 and 64 -> 64 at 16x16, Dense 64 -> 10.
  assert dense.macs == (1024 * 9 * (3 * 32 + 2 * 32 * 32) + 256 * 9 * (32 * 64 + 64 * 64)
                        + 64 * 10) == 33_915_520
  separable = pwconv.profile(models.SmallNet("separable"), x)
  assert separable.macs < dense.macs / 6
  mlpconv = pwconv.profile(models.SmallNet("mlpconv"), x)
  # One extra 1x1 + act per block: 2 blocks at 32x32x32, 2 at 16x16x64.
  assert mlpconv.macs - dense.macs == 2 * 1024 * 32 * 32 + 2 * 256 * 64 * 64


def test_smallnet_inception_branches_add_up_to_width():
  # width 12: 1x1 3, 3x3 7, 5x5 1, pool proj 1 in stage 1; 6, 12, 3, 3 in stage 2.
  x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
  rows = {row.path: row for row in pwconv.profile(models.SmallNet("inception", width=12), x).rows}
  assert rows["stage1_block2/branch3x3"].out_shape == (8, 8, 7)
  assert rows["stage2_block2/branch3x3"].out_shape == (4, 4, 12)
  assert rows["classifier"].in_shape == (24,)


@pytest.mark.parametrize("kwargs, message", [
    ({"block": "foo"}, r"SmallNet: block must be one of \[.*'separable'.*\], got 'foo'"),
    ({"width": 0}, "SmallNet: width must be >= 1, got 0"),
    ({"depth": 0}, "SmallNet: depth must be >= 1, got 0"),
    ({"stages": -1}, "SmallNet: stages must be >= 1, got -1"),
    ({"reduction": 0.0}, r"SmallNet: reduction must be in \(0, 1\], got 0.0"),
    ({"block": "inception", "width": 4},
     "SmallNet: width must be >= 8 for block 'inception', got 4"),
    ({"block": "shuffle", "groups": 3}, "SmallNet: groups must divide width=32"),
])
def test_smallnet_errors_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.SmallNet(**kwargs)


@pytest.mark.parametrize("factory, kwargs, message", [
    (models.mobilenet_v1, {"width_multiplier": 0.0}, "MobileNetV1: width_multiplier must be > 0"),
    (models.resnet50, {"num_classes": 0}, "ResNet: num_classes must be >= 1, got 0"),
    (models.googlenet, {"dropout_rate": 1.0}, r"GoogLeNet: dropout_rate must be in \[0, 1\)"),
])
def test_paper_model_errors(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**kwargs)


# The reference variants and size knobs of the faithful-models issue.

def test_googlenet_torchvision_counts_as_torchvision():
  p = _profile("googlenet_torchvision")
  # torchvision.models.googlenet: sum of parameters() and FlopCounterMode / 2 (its docs: 6.6M,
  # 1.50 GFLOPS, which are MACs). 3x3 convs in the "5x5" branches and BatchNorm scale/bias.
  assert (p.params, p.macs) == (6_624_904, 1_498_376_192)
  assert round(p.macs / 1e7) == models.PAPER_FIGURES["googlenet_torchvision"]["macs"] / 1e7 == 150
  rows = {row.path: row for row in p.rows}
  assert rows["inception_3a/branch5x5"].macs == 28 * 28 * 3 * 3 * 16 * 32
  # ceil-mode pools: 112 -> 56 -> (conv2) 56 -> 28 -> 14 -> 2x2/2 -> 7.
  assert [rows[f"inception_{name}/branch1x1"].in_shape[0] for name in ("3a", "4a", "5a")] == [
      28, 14, 7]


def test_reference_counts_are_the_paper_models_counts():
  """The full-size reference counts the fixture generator measured (reference_counts.json) are those
  of the pwconv presets (the references' kwargs change padding and activations, not counts)."""
  counts = json.loads((pathlib.Path(__file__).parent / "fixtures" / "reference_counts.json")
                      .read_text())["models"]
  for key, name in (("torchvision_mobilenet_v2", "mobilenet_v2"), ("timm_mobilenetv2_100",
                                                                   "mobilenet_v2"),
                    ("timm_mobilenetv1_100", "mobilenet_v1"), ("torchvision_resnet50", "resnet50"),
                    ("timm_resnet50", "resnet50"), ("torchvision_squeezenet1_0", "squeezenet1_0"),
                    ("torchvision_googlenet", "googlenet_torchvision")):
    p = _profile(name)
    assert (p.params, p.macs) == (counts[key]["params"], counts[key]["macs"]), key


@pytest.mark.parametrize("preset, epsilon", [
    (models.mobilenet_v1, "1e-5"), (models.mobilenet_v2, "1e-5"), (models.resnet50, "1e-5"),
    (models.squeezenet1_0, "1e-5"), (models.googlenet, "1e-5"),
    (models.googlenet_torchvision, "1e-3"),
])
def test_presets_state_their_batch_norm(preset, epsilon):
  assert "momentum 0.9" in preset.__doc__ and f"epsilon {epsilon}" in preset.__doc__
  norm = preset().norm or pwconv.batch_norm
  assert (norm.keywords["momentum"], norm.keywords["epsilon"]) == (0.9, float(epsilon))


def test_depth_multiplier_as_timm():
  """ceil(n·d) layers per stage: timm's mobilenetv1_100 and mobilenetv2_100 at depth 0.5."""
  v1 = models.mobilenet_v1(width_multiplier=0.125, depth_multiplier=0.5).layout()
  assert [(filters, stride) for filters, stride, _, _ in v1] == [
      (8, 1), (16, 2), (32, 2), (64, 2), (64, 1), (64, 1), (128, 2)]
  assert [(stage, i) for _, _, stage, i in v1][3:6] == [(3, 0), (3, 1), (3, 2)]
  v2 = models.mobilenet_v2(depth_multiplier=0.5).layout()
  assert [sum(1 for *_, row, _ in v2 if row == r) for r in range(7)] == [1, 1, 2, 2, 2, 2, 1]
  assert [s for _, _, s, _, _ in v2] == [1, 2, 2, 1, 2, 1, 1, 1, 2, 1, 1]
  # Depth 1 is the paper's table, layer for layer.
  assert [(f, s) for f, s, _, _ in models.mobilenet_v1().layout()] == list(models.MOBILENET_V1)
  p = pwconv.profile(models.mobilenet_v1(depth_multiplier=0.5),
                     jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert p.params < _profile("mobilenet_v1").params


def test_resnet_stage_widths_and_stem_width():
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  model = models.ResNet(stage_sizes=(2, 1, 1, 1), widths=(8, 16, 24, 32), stem_width=16,
                        num_classes=10)
  rows = {row.path: row for row in pwconv.profile(model, x).rows}
  assert rows["stem/conv"].out_shape == (32, 32, 16)
  assert rows["stage3_block1/expand"].out_shape == (4, 4, 96)  # 4 x 24
  assert rows["classifier"].in_shape == (128,)
  default = pwconv.profile(models.ResNet(stage_sizes=(1, 1), num_classes=10), x)
  explicit = pwconv.profile(models.ResNet(stage_sizes=(1, 1), widths=(64, 128), stem_width=64,
                                          num_classes=10), x)
  assert (default.params, default.macs) == (explicit.params, explicit.macs)


@pytest.mark.parametrize("factory, kwargs, error, message", [
    (models.mobilenet_v1, {"depth_multiplier": 0}, ValueError,
     "MobileNetV1: depth_multiplier must be > 0, got 0"),
    (models.mobilenet_v2, {"depth_multiplier": "half"}, TypeError,
     "MobileNetV2: depth_multiplier must be a number"),
    (models.resnet50, {"widths": (64, 128)}, ValueError,
     r"ResNet: widths must give one width per stage \(4\), got \(64, 128\)"),
    (models.resnet50, {"widths": (64, 128, 0, 512)}, ValueError,
     "ResNet: widths must be >= 1, got 0"),
    (models.resnet50, {"stem_width": 0}, ValueError, "ResNet: stem_width must be >= 1, got 0"),
    (models.googlenet, {"pool_windows": (3, 3)}, ValueError,
     r"GoogLeNet: pool_windows must give one window per max pool \(4: the stem's"),
    (models.googlenet, {"ceil_mode": "yes"}, TypeError,
     "GoogLeNet: ceil_mode must be True or False"),
    (models.googlenet, {"branch5x5_kernel_size": (3, 0)}, ValueError,
     "GoogLeNet: branch5x5_kernel_size must be >= 1, got 0"),
])
def test_reference_knob_errors(factory, kwargs, error, message):
  with pytest.raises(error, match=message):
    factory(**kwargs)


@functools.cache
def _init_logits_std(name):
  """Std of the logits of a freshly initialised network (its own initialisers, RBG keys, which
  compile faster than threefry)."""
  model = getattr(models, name)()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  logits = jax.jit(lambda key: model.apply(model.init(key, x), x))(jax.random.key(0, impl="rbg"))
  return float(jnp.std(logits))


@pytest.mark.parametrize("name", ["squeezenet1_0", "googlenet"])
def test_norm_free_networks_keep_their_signal_at_init(name):
  # Flax's default lecun normal init gave 0.011; He fan-out gave GoogLeNet ~1e2 (its 1x1
  # reductions from Cin to Cout << Cin multiply the variance by Cin / Cout); blocks without norms
  # use He fan-in, which keeps the forward signal's scale.
  assert 0.3 < _init_logits_std(name) < 3


@pytest.mark.parametrize("block", ["dense", "bottleneck", "separable", "inverted_residual", "fire",
                                   "inception", "shuffle", "mlpconv"])
def test_smallnet_stage_changes_as_each_paper(block):
  """No classic design needs a projection shortcut: stride-2 first blocks or a max pool change the
  stage, as each design's paper does."""
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  rows = pwconv.profile(models.SmallNet(block), x).rows
  assert not any("shortcut" in row.path for row in rows)
  first = [row for row in rows if row.path.startswith("stage2_block1/")]
  assert first[0].in_shape[:2] == ((8, 8) if models.SMALLNET_BLOCKS[block].downsample == "pool"
                                   else (16, 16))
  assert first[-1].out_shape[:2] == (8, 8)


def test_smallnet_shuffle_stride2_units_concatenate():
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  rows = {row.path: row for row in pwconv.profile(models.SmallNet("shuffle"), x).rows}
  # Stage 2 (64 features) from 32 channels: the grouped 1x1 makes 64 - 32, the pooled input 32.
  assert rows["stage2_block1/expand"].out_shape == (8, 8, 32)
  assert rows["stage2_block2/reduce"].in_shape == (8, 8, 64)


@pytest.mark.parametrize("block", ["mbconv", "fused_mbconv", "uib", "convnext", "repvgg"])
def test_smallnet_drop_path_rises_linearly_over_the_blocks(block):
  net = models.SmallNet(block, width=8, stages=2, depth=2, drop_path_rate=0.3)
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, pwconv.DropPath):
      rates[context.module.path[0]] = context.module.rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(net.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  # Block k of 4 gets 0.3·k/3; a block without a shortcut (a stride-2 first block) has no branch
  # to drop.
  expected = {"stage1_block1": 0.0, "stage1_block2": 0.1, "stage2_block1": 0.2, "stage2_block2": 0.3}
  assert {"stage1_block2", "stage2_block2"} <= set(rates)
  assert rates == pytest.approx({k: expected[k] for k in rates})
