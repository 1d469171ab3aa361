"""pwconv/blocks/rep.py, pwconv/models/repvgg.py and pwconv/reparam.py: RepVGG-A0 and MobileOne-S0
counted as timm's (train and deploy forms, exactly) and as the papers round them, timm's logits
through the committed fixtures, branch folding of every block form at strides 1 and 2 under both
padding conventions, BatchNorm folding for MobileNetV2, ResNet and SmallNet designs, the blocks'
MAC formulas, drop path, the SmallNet design and the errors."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from pwconv import models, weights
from pwconv.blocks import MobileOneBlock, RepVGGBlock
from pwconv.blocks.rep import centre_taps
from pwconv.models import SmallNet
from pwconv.reparam import reparameterize

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# tests/fixtures/manifest.json: how the reduced timm models were built (_rep_vgg_bcfg and
# _mobileone_bcfg with d=(1, 2, 2, 1) and width factors giving these widths, stem_chs=8).
REDUCED = {"repvgg_a0": {"depths": (1, 2, 2, 1), "widths": (8, 16, 32, 128), "stem_features": 8},
           "mobileone_s0": {"depths": (1, 2, 2, 1), "widths": (8, 32, 64, 128), "stem_features": 8}}
# timm 1.0.31, tests/fixtures/reference_counts.json: sum of parameters(), FlopCounterMode / 2, of
# the train form and after timm.utils.reparameterize_model.
TIMM_COUNTS = {("repvgg_a0", False): (9_108_968, 1_512_581_120),
               ("repvgg_a0", True): (8_309_384, 1_361_451_008),
               ("mobileone_s0", False): (5_293_272, 1_051_935_232),
               ("mobileone_s0", True): (2_078_504, 275_110_400)}


def _shape(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _random_variables(module, x, seed=0):
  """Variables in the module's shapes: norm scales and variances in [0.5, 1.5], the rest
  N(0, 0.2)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, jax.random.key(0)), x)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key in ("scale", "var")
                       else rng.normal(0.0, 0.2, s.shape)).astype(s.dtype), shapes)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _leaves(tree):
  return [("/".join(str(k.key) for k in p), v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _folds_exactly(module, x, seed=0, **kwargs):
  """reparameterize(module) computes what module computes (eval mode); returns the deploy form."""
  variables = _random_variables(module, x, seed)
  deploy, deploy_variables = reparameterize(module, variables, **kwargs)
  both = jax.jit(lambda v, dv, x: (module.apply(v, x), deploy.apply(dv, x)))
  want, got = both(variables, deploy_variables, x)
  assert got.shape == want.shape
  assert _rel(got, want) <= 1e-5
  return deploy, deploy_variables


@functools.cache
def _full_profile(name, deploy):
  return pwconv.profile(models.create(name, deploy=deploy), _shape(1, 224, 224, 3))


@pytest.mark.parametrize("name, deploy", list(TIMM_COUNTS))
def test_full_size_counts_equal_timm(name, deploy):
  with open(FIXTURES / "reference_counts.json") as f:
    ref = json.load(f)["models"][f"timm_{name}" + ("@deploy" if deploy else "")]
  p = _full_profile(name, deploy)
  assert (p.params, p.macs) == TIMM_COUNTS[name, deploy] == (ref["params"], ref["macs"])


def test_paper_figures_of_the_deploy_forms():
  # RepVGG Table 4: A0 8.30M params, 1.4 GFLOPs (multiply-adds); MobileOne Table 8: S0 2.1M, 275M.
  repvgg, mobileone = _full_profile("repvgg_a0", True), _full_profile("mobileone_s0", True)
  figures = models.PAPER_FIGURES
  assert round(repvgg.params / 1e6, 1) == figures["repvgg_a0"]["params"] / 1e6 == 8.3
  assert round(repvgg.macs / 1e9, 1) == figures["repvgg_a0"]["macs"] / 1e9 == 1.4
  assert round(mobileone.params / 1e6, 1) == figures["mobileone_s0"]["params"] / 1e6 == 2.1
  assert round(mobileone.macs / 1e6) == figures["mobileone_s0"]["macs"] / 1e6 == 275


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_fixture_logits_match_timm_in_both_forms(name):
  with open(FIXTURES / "manifest.json") as f:
    built = json.load(f)["fixtures"][f"timm_{name}"]["built"]
  assert built["kwargs"]["stem_chs"] == REDUCED[name]["stem_features"]
  assert "d=(1, 2, 2, 1)" in built["kwargs"]["blocks"]["python"]
  state = weights.load(FIXTURES / f"timm_{name}.safetensors")
  data = np.load(FIXTURES / f"timm_{name}.npz")
  module, variables = weights.from_timm(name, state, **REDUCED[name])
  assert (module.num_classes, module.padding, module.deploy) == (10, "symmetric", False)
  x = jnp.asarray(data["input"])
  logits = jax.jit(module.apply)(variables, x)
  assert logits.shape == data["logits"].shape == (2, 10)
  assert _rel(logits, data["logits"]) <= 1e-4
  deploy, deploy_variables = reparameterize(module, variables)
  assert deploy.deploy and "batch_stats" not in deploy_variables
  apply = jax.jit(deploy.apply)
  deploy_logits = apply(deploy_variables, x)
  assert _rel(deploy_logits, logits) <= 1e-5 and _rel(deploy_logits, data["logits"]) <= 1e-4
  # timm's deploy-form state dict (reparam_conv per block) loads into the deploy form.
  loaded, loaded_variables = weights.from_timm(name, _timm_state_dict(name, deploy_variables),
                                               deploy=True, **REDUCED[name])
  assert loaded.deploy and _rel(apply(loaded_variables, x), deploy_logits) <= 1e-6
  # The deploy form's counts are those of the network built in deploy form.
  reduced = models.create(name, num_classes=10, deploy=True, **REDUCED[name])
  p, q = pwconv.profile(deploy, _shape(1, 64, 64, 3)), pwconv.profile(reduced, _shape(1, 64, 64, 3))
  assert (p.params, p.macs) == (q.params, q.macs)
  assert p.params == sum(np.size(v) for v in jax.tree.leaves(deploy_variables["params"]))


def _timm_state_dict(name, variables):
  """pwconv variables in timm's names and PyTorch layouts (OIHW convs, (out, in) linears)."""
  _, ref = models.registry.find_reference("timm", name)
  names = ref.names(None, weights.layer_paths(variables))
  state = {}
  for path, value in _leaves(variables["params"]):
    layer, leaf = path.rsplit("/", 1)
    value = np.asarray(value)
    if leaf == "kernel":
      value = (value.transpose(3, 2, 0, 1) if value.ndim == 4 else
               value.T if layer == "classifier" else value.T[:, :, None, None])
    state[f"{names[layer]}.{weights.LEAF_NAMES[leaf]}"] = value
  return state


def test_timm_names_of_both_forms():
  _, ref = models.registry.find_reference("timm", "mobileone_s0")
  assert ref.kwargs == {"padding": "symmetric"} and ref.classifier == "head.fc.weight"
  for deploy in (False, True):
    module = models.create("mobileone_s0", deploy=deploy, **REDUCED["mobileone_s0"])
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    paths = weights.layer_paths(shapes)
    names = ref.names(module, paths)
    assert set(names) == set(paths)
  assert names["stem/conv"] == "stem.reparam_conv"
  assert names["stage2_block4/conv"] == "stages.1.3.reparam_conv"
  names = ref.names(None, ["stage2_block4/conv_kxk3_norm", "stage1_block1/conv_scale",
                           "stage1_block2/identity", "stage3_block2/conv_1x1_norm", "classifier"])
  assert names == {"stage2_block4/conv_kxk3_norm": "stages.1.3.conv_kxk.3.bn",
                   "stage1_block1/conv_scale": "stages.0.0.conv_scale.conv",
                   "stage1_block2/identity": "stages.0.1.identity",
                   "stage3_block2/conv_1x1_norm": "stages.2.1.conv_1x1.bn",
                   "classifier": "head.fc"}


# (block, input channels, input size): identity branch or not, strides 1 and 2, even and odd sizes
# (SAME pads a stride-2 3x3 conv (0, 1) at even sizes: the 1x1 branch must read the odd pixels),
# grouped, depthwise, pointwise and dense MobileOne, several kxk branches, 5x5 kernels.
BLOCKS = [
    (RepVGGBlock(16), 16, 8),
    (RepVGGBlock(24, strides=2), 16, 8),
    (RepVGGBlock(24, strides=2), 16, 9),
    (RepVGGBlock(16, (5, 5), groups=2), 16, 7),
    (RepVGGBlock(16, norm=None), 16, 6),
    (MobileOneBlock(16, depthwise=True, num_conv_branches=4), 16, 8),
    (MobileOneBlock(16, strides=2, depthwise=True, num_conv_branches=4), 16, 8),
    (MobileOneBlock(16, (1, 1), num_conv_branches=4), 16, 6),
    (MobileOneBlock(24, strides=2, num_conv_branches=3), 8, 8),
]
# Symmetric padding differs from SAME only for strided convs at even sizes.
STRIDED = [i for i, (block, _, hw) in enumerate(BLOCKS) if block.strides == 2 and hw % 2 == 0]


@pytest.mark.parametrize("index, padding", [(i, "SAME") for i in range(len(BLOCKS))]
                         + [(i, "symmetric") for i in STRIDED])
def test_blocks_fold_into_one_conv(index, padding):
  block, cin, hw = BLOCKS[index]
  block = block.clone(padding=padding)
  x = _x((2, hw, hw, cin), seed=index)
  deploy, variables = _folds_exactly(block, x, seed=index)
  assert deploy == block.clone(deploy=True, norm=None)
  assert deploy == block.dense_equivalent(cin).clone(norm=None)
  assert set(variables) == {"params"} and set(variables["params"]) == {"conv"}
  groups = cin if getattr(block, "depthwise", False) else getattr(block, "groups", 1)
  kh, kw = block.kernel_size
  kernel = (cin, block.features) if (kh, kw) == (1, 1) else (kh, kw, cin // groups, block.features)
  assert variables["params"]["conv"]["kernel"].shape == kernel
  assert variables["params"]["conv"]["bias"].shape == (block.features,)


def test_centre_taps_read_what_the_centre_of_the_kxk_conv_reads():
  x = _x((1, 8, 9, 2))
  assert centre_taps(x, (3, 3), (1, 1), "SAME") is x
  np.testing.assert_array_equal(centre_taps(x, (3, 3), (2, 2), "SAME"), x[:, 1::2, 0::2])
  np.testing.assert_array_equal(centre_taps(x, (3, 3), (2, 2), ((1, 1), (1, 1))), x[:, ::2, ::2])
  np.testing.assert_array_equal(centre_taps(x, (5, 5), (2, 2), "SAME"), x[:, 1::2, 0::2])
  # The conv whose kernel is a centre tap of 1 (and 0 elsewhere) returns them.
  kernel = jnp.zeros((3, 3, 2, 2)).at[1, 1].set(jnp.eye(2))
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_array_equal(centre_taps(x, (3, 3), (2, 2), "SAME"), y)


@pytest.mark.parametrize("kernel_size, strides, cin, features, hw", [
    ((3, 3), 1, 16, 16, 8), ((3, 3), 2, 16, 32, 8), ((5, 5), 1, 8, 16, 7)])
def test_repvgg_mac_formula(kernel_size, strides, cin, features, hw):
  block = RepVGGBlock(features, kernel_size, strides, groups=2)
  out = -(-hw // strides)
  area, taps, c = out * out, kernel_size[0] * kernel_size[1], cin * features // 2
  identity = cin == features and strides == 1
  p = pwconv.profile(block, _shape(1, hw, hw, cin))
  assert (p.macs, p.params) == (area * (taps + 1) * c, (taps + 1) * c + 4 * features
                                + 2 * features * identity)
  d = pwconv.profile(block.clone(deploy=True), _shape(1, hw, hw, cin))
  assert (d.macs, d.params) == (area * taps * c, taps * c + features)
  y = jax.eval_shape(block.init_with_output, jax.random.key(0), jnp.zeros((2, hw, hw, cin)))[0]
  assert y.shape == (2, out, out, features)


@pytest.mark.parametrize("depthwise, kernel_size, strides, cin, features, branches", [
    (True, (3, 3), 1, 16, 16, 4), (True, (3, 3), 2, 16, 16, 4), (False, (1, 1), 1, 16, 32, 4),
    (False, (1, 1), 1, 16, 16, 2), (False, (3, 3), 2, 3, 16, 1)])
def test_mobileone_mac_formula(depthwise, kernel_size, strides, cin, features, branches):
  block = MobileOneBlock(features, kernel_size, strides, depthwise=depthwise,
                         num_conv_branches=branches)
  hw = 8
  out = hw // strides
  area, taps = out * out, kernel_size[0] * kernel_size[1]
  c = features if depthwise else cin * features
  scale = int(kernel_size != (1, 1))
  identity = cin == features and strides == 1
  p = pwconv.profile(block, _shape(1, hw, hw, cin))
  assert p.macs == area * (branches * taps + scale) * c
  assert p.params == (branches * taps + scale) * c + 2 * features * (branches + scale + identity)
  d = pwconv.profile(block.dense_equivalent(cin), _shape(1, hw, hw, cin))
  assert (d.macs, d.params) == (area * taps * c, taps * c + features)
  assert pwconv.savings(block, (hw, hw, cin)).macs_ratio == pytest.approx(
      taps / (branches * taps + scale))
  y = jax.eval_shape(block.init_with_output, jax.random.key(0), jnp.zeros((2, hw, hw, cin)))[0]
  assert y.shape == (2, out, out, features)


@pytest.mark.parametrize("module, shape", [
    (models.MobileNetV2(width_multiplier=0.25, stem=32, blocks=models.MOBILENET_V2[:2],
                        last_features=64, num_classes=10, act=jax.nn.relu6), (2, 16, 16, 3)),
    (models.ResNet(stage_sizes=(1, 1), num_filters=8, num_classes=10, padding="symmetric",
                   use_bias=False), (2, 17, 17, 3)),
], ids=["mobilenet_v2", "resnet"])
def test_batch_norm_folds_into_the_convs_of_classic_networks(module, shape):
  deploy, variables = _folds_exactly(module, _x(shape))
  assert deploy.norm is None and "batch_stats" not in variables
  layers = weights.layer_paths(variables)
  assert not any(layer.endswith("_norm") for layer in layers)
  convs = [p for p in layers if p != "classifier"]
  assert all("bias" in _leaf(variables["params"], p) for p in convs)
  trained = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))["params"]
  norm_params = sum(np.size(v) for p, v in _leaves(trained) if "_norm/" in p)
  assert (pwconv.profile(deploy, _shape(*shape)).params
          == pwconv.profile(module, _shape(*shape)).params - norm_params // 2)


@pytest.mark.parametrize("block", ["separable", "fire", "inception", "shuffle", "repvgg"])
def test_smallnet_designs_fold(block):
  net = SmallNet(block=block, width=8, stages=2, depth=1, num_classes=10)
  deploy, variables = _folds_exactly(net, _x((2, 8, 8, 1 if block == "repvgg" else 3)))
  assert "batch_stats" not in variables
  if block == "repvgg":  # SmallNet's block is swapped for the design's deploy form
    assert deploy.spec.name == "repvgg" and deploy.block != "repvgg"
    assert pwconv.profile(deploy, _shape(1, 8, 8, 1)).macs == (
        64 * 9 * 8 + 64 * 9 * 8 * 8 + 16 * 9 * 8 * 16 + 16 * 10)


@pytest.mark.parametrize("width", [8, 16, 32])
@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
def test_smallnet_repvgg_design(width, shape):
  net = SmallNet(block="repvgg", width=width, num_classes=10)
  assert models.SMALLNET_BLOCKS["repvgg"].downsample == "stride"
  logits, variables = jax.eval_shape(net.init_with_output, jax.random.key(0), jnp.zeros(shape))
  assert logits.shape == (2, 10)
  block1 = variables["params"]["stage1_block1"]
  assert set(block1) == {"conv_kxk", "conv_kxk_norm", "conv_1x1", "conv_1x1_norm", "identity"}
  assert set(variables["params"]["stage2_block1"]) == set(block1) - {"identity"}  # stride 2
  assert block1["conv_kxk"]["kernel"].shape == (3, 3, width, width)


def test_drop_path():
  x = _x((4, 6, 6, 8))
  block = RepVGGBlock(8, drop_path_rate=0.0)
  dropped = block.clone(drop_path_rate=0.5)
  train = lambda module, v, **kw: module.apply(v, x, train=True, mutable=["batch_stats"], **kw)[0]

  @jax.jit
  def outputs(v, key):
    return (train(block, v), train(block, v, rngs={"dropout": key}),
            train(dropped, v, rngs={"dropout": key}), block.apply(v, x), dropped.apply(v, x))

  y0, y1, y2, e0, e1 = outputs(_random_variables(block, x), jax.random.key(1))
  # Rate 0 draws nothing (no "dropout" rng needed) and is the identity, bitwise, in training too.
  np.testing.assert_array_equal(y0, y1)
  assert not np.allclose(y2, y0)
  np.testing.assert_array_equal(e0, e1)
  # timm's linear schedule over the stage blocks, handed to each block; MobileOne counts both
  # blocks of each unit.
  for net, blocks in ((models.repvgg_a0(drop_path_rate=0.1, **REDUCED["repvgg_a0"]), 6),
                      (models.mobileone_s0(drop_path_rate=0.2, **REDUCED["mobileone_s0"]), 12)):
    rates = {}

    def record(next_fun, args, kwargs, context):
      if (context.method_name == "__call__"
          and isinstance(context.module, pwconv.blocks.RepBranches)):
        rates[context.module.name] = context.module.drop_path_rate
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert rates.pop("stem") == 0.0
    assert list(rates.values()) == pytest.approx(np.linspace(0, net.drop_path_rate, blocks))


class _PreNorm(pwconv.Block):
  """A norm on the block's input, before its conv: no conv precedes it to fold into."""

  @nn.compact
  def __call__(self, x, *, train=False):
    x = self.normalize(x, name="pre_norm", train=train)
    return self.conv_norm_act(x, self.pointwise_layer(4), name="conv", train=train)


class _SharedConv(pwconv.Block):
  """A conv whose output the norm and another layer read: folding would change the other."""

  @nn.compact
  def __call__(self, x, *, train=False):
    y = pwconv.PointwiseConv(4, name="conv")(x)
    other = pwconv.PointwiseConv(4, name="other")(y)
    return self.normalize(y, name="conv_norm", train=train) + other


class _Wrapper(nn.Module):
  """A module that holds a RepVGG block but no deploy field to hand it."""

  @nn.compact
  def __call__(self, x):
    return RepVGGBlock(8, name="block")(x)


def test_bad_inputs_are_named():
  x = _x((1, 8, 8, 8))
  with pytest.raises(ValueError, match="RepVGGBlock: kernel_size must be odd"):
    RepVGGBlock(8, (2, 2))
  with pytest.raises(ValueError, match="RepVGGBlock: groups=3 must divide the input channels 8"):
    jax.eval_shape(RepVGGBlock(9, groups=3).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="MobileOneBlock: the depthwise form needs features == the "
                                       "input channels 8, got features=16"):
    jax.eval_shape(MobileOneBlock(16, depthwise=True).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="MobileOneBlock: num_conv_branches must be >= 1, got 0"):
    MobileOneBlock(8, num_conv_branches=0)
  with pytest.raises(ValueError, match=r"RepVGGBlock: drop_path_rate must be in \[0, 1\)"):
    RepVGGBlock(8, drop_path_rate=1.0)
  with pytest.raises(TypeError, match="MobileOneBlock: deploy must be True or False"):
    MobileOneBlock(8, deploy="yes")
  with pytest.raises(ValueError, match="RepVGG: depths and widths must have one entry per stage"):
    models.repvgg_a0(depths=(1, 2))
  with pytest.raises(TypeError, match="MobileOne: widths must be a non-empty sequence of ints"):
    models.mobileone_s0(widths=())
  with pytest.raises(ValueError, match="SmallNet: kernel_size must be odd for block 'repvgg'"):
    SmallNet(block="repvgg", kernel_size=(2, 2))

  convnext_like = models.SmallNet(block="dense", norm=functools.partial(nn.LayerNorm))
  variables = _random_variables(convnext_like, _x((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="reparameterize: nothing to fold in SmallNet: no BatchNorm"):
    reparameterize(convnext_like, variables)
  already = RepVGGBlock(8, deploy=True)
  with pytest.raises(ValueError, match="reparameterize: nothing to fold in RepVGGBlock"):
    reparameterize(already, _random_variables(already, x))
  grouped = RepVGGBlock(8, norm=functools.partial(nn.GroupNorm, num_groups=2))
  with pytest.raises(ValueError, match="RepVGGBlock: cannot fold 'conv_kxk_norm': only BatchNorm"):
    reparameterize(grouped, _random_variables(grouped, x))
  prenorm = _PreNorm()
  with pytest.raises(ValueError, match="BatchNorm 'pre_norm' does not follow a conv"):
    reparameterize(prenorm, _random_variables(prenorm, x))
  shared = _SharedConv()
  with pytest.raises(ValueError, match=r"cannot fold BatchNorm 'conv_norm' into 'conv': the conv's "
                                       r"output is also read by \['other'\]"):
    reparameterize(shared, _random_variables(shared, x))
  wrapper = _Wrapper()
  with pytest.raises(ValueError, match="RepVGGBlock at 'block' would stay in train form: _Wrapper "
                                       "must hand a deploy field"):
    reparameterize(wrapper, _random_variables(wrapper, x))
  block = RepVGGBlock(8)
  variables = _random_variables(block, x)
  with pytest.raises(ValueError, match=r"reparameterize: the variables do not fit RepVGGBlock on "
                                       r"inputs of 3, 8, .* channels \(ScopeParamShapeError: .*"
                                       r"conv_kxk"):
    reparameterize(RepVGGBlock(16), variables)
  with pytest.raises(TypeError, match="reparameterize: variables must be a mapping with"):
    reparameterize(block, variables["params"])
  with pytest.raises(TypeError, match="reparameterize: module must be a flax linen Module"):
    reparameterize(variables, variables)
  # An input the variables cannot tell (any size works for a conv net) can be given.
  assert reparameterize(block, variables, input_shape=(1, 5, 5, 8))[0].deploy


class _ReadsConvOutputTwice(pwconv.Block):
  """conv -> norm, plus the conv's output added again: folding the norm would change the output."""

  @nn.compact
  def __call__(self, x, *, train=False):
    y = pwconv.PointwiseConv(8, use_bias=True, name="conv")(x)
    return self.normalize(y, name="conv_norm", train=train) + y


def test_a_fold_that_would_change_the_output_is_refused():
  block = _ReadsConvOutputTwice()
  x = jnp.ones((1, 6, 6, 4))
  variables = block.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.3, variables)  # a norm that is not the identity
  with pytest.raises(ValueError, match="reparameterize: the deploy form of _ReadsConvOutputTwice "
                                       "computes something else"):
    reparameterize(block, variables, input_shape=(1, 6, 6, 4))
