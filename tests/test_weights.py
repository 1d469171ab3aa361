"""pwconv/weights: reading weight files, mapping reference state dicts, the reference fixtures'
logits, and fine-tuning loaded weights with a new head."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import json
import pathlib
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from pwconv import models, weights
from pwconv.models import registry

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


def _divide(table, divisor):
  """A table of channel-count rows (nested tuples) with every count divided by ``divisor``."""
  if isinstance(table, int):
    return table // divisor
  return tuple(_divide(item, divisor) for item in table)


RESNET = {"stage_sizes": (2, 1, 1, 1), "widths": (8, 16, 24, 32)}
# Each reduced fixture: how the reference was built (manifest.json) and the pwconv size knobs that
# build the same network.
REDUCED = {
    "torchvision_mobilenet_v2": (
        "torchvision.models.mobilenet_v2(weights=None, width_mult=0.125, num_classes=10)",
        {"width_multiplier": 0.125}),
    "torchvision_resnet50": (
        "make_fixtures.tv_resnet_reduced(layers=(2, 1, 1, 1), planes=(8, 16, 24, 32), "
        "stem_width=16, num_classes=10)", {**RESNET, "stem_width": 16}),
    "torchvision_squeezenet1_0": (
        "make_fixtures.tv_squeezenet1_0_reduced(width_div=4, num_classes=10)",
        {"stem": 24, "fires": _divide(models.SQUEEZENET1_0, 4)}),
    "torchvision_googlenet": (
        "make_fixtures.tv_googlenet_reduced(width_div=8, num_classes=10)",
        {"stem": (8, 8, 24), "inceptions": _divide(models.GOOGLENET, 8)}),
    "timm_mobilenetv1_100": (
        "timm.models.efficientnet._gen_mobilenet_v1('mobilenetv1_100', channel_multiplier=0.125, "
        "depth_multiplier=0.5, num_classes=10)",
        {"width_multiplier": 0.125, "depth_multiplier": 0.5}),
    "timm_mobilenetv2_100": (
        "timm.models.efficientnet._gen_mobilenet_v2('mobilenetv2_100', channel_multiplier=0.125, "
        "depth_multiplier=0.5, num_classes=10)",
        {"width_multiplier": 0.125, "depth_multiplier": 0.5}),
    "timm_resnet50": (
        "timm.create_model('resnet50', pretrained=False, layers=(2, 1, 1, 1), "
        "channels=(8, 16, 24, 32), num_classes=10)", {**RESNET, "stem_width": 64}),
}


def _convert(key, state_dict, **kwargs):
  source, name = key.split("_", 1)
  convert = weights.from_torchvision if source == "torchvision" else weights.from_timm
  return convert(name, state_dict, **REDUCED[key][1], **kwargs)


@functools.cache
def _fixture(key):
  return weights.load(FIXTURES / f"{key}.safetensors"), dict(np.load(FIXTURES / f"{key}.npz"))


@functools.cache
def _loaded(key):
  return _convert(key, _fixture(key)[0])


def _rel_err(y, ref):
  return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("key", REDUCED)
def test_fixture_logits_match_the_reference(key):
  state_dict, data = _fixture(key)
  assert MANIFEST[key]["built"]["python"] == REDUCED[key][0]
  assert len(state_dict) == MANIFEST[key]["state_dict_tensors"]
  module, variables = _loaded(key)
  assert module.num_classes == 10  # read from the classifier's shape
  # The same tensors: the reference's parameters() (BatchNorm statistics are buffers).
  assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == MANIFEST[key]["params"]
  logits = jax.jit(module.apply)(variables, jnp.asarray(data["input"]))
  assert _rel_err(logits, data["logits"]) <= 1e-4


def test_padding_of_the_reference_matters():
  """SAME pads strided convs (0, 1) at even sizes where PyTorch pads (1, 1): the logits differ."""
  data = _fixture("torchvision_resnet50")[1]
  module, variables = _loaded("torchvision_resnet50")
  wrong = module.clone(padding="SAME")
  logits = jax.jit(wrong.apply)(variables, jnp.asarray(data["input"]))
  assert _rel_err(logits, data["logits"]) > 0.05


def test_googlenet_auxiliary_classifiers_are_dropped():
  state_dict = dict(_fixture("torchvision_googlenet")[0])
  aux = {"aux1.conv.conv.weight": np.zeros((16, 64, 1, 1), np.float32),
         "aux2.fc2.bias": np.zeros(10, np.float32)}
  _, variables = _convert("torchvision_googlenet", {**state_dict, **aux})
  chex.assert_trees_all_equal(variables, _loaded("torchvision_googlenet")[1])


# Errors: a state dict that does not fit is refused with the unused / missing / mismatched names.

@functools.cache
def _resnet_template():
  module, _ = _loaded("torchvision_resnet50")
  x = jnp.zeros((1, 64, 64, 3))
  template = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  _, ref = registry.find_reference("torchvision", "resnet50")
  return template, ref.names(module, weights.layer_paths(template))


def _assign(state_dict):
  template, names = _resnet_template()
  return weights.assign(template, state_dict, names, target="resnet")


def test_assign_reproduces_the_loaded_variables():
  chex.assert_trees_all_equal(_assign(_fixture("torchvision_resnet50")[0]),
                              _loaded("torchvision_resnet50")[1])


def test_removed_tensor_is_named():
  state_dict = dict(_fixture("torchvision_resnet50")[0])
  del state_dict["layer1.0.conv2.weight"]
  with pytest.raises(ValueError, match=r"pwconv resnet50 \(torchvision resnet50\): 1 missing: "
                                       r"params/stage1_block1/conv/kernel <- "
                                       r"'layer1.0.conv2.weight'$"):
    _convert("torchvision_resnet50", state_dict)


def test_removed_statistic_is_named():
  state_dict = dict(_fixture("torchvision_resnet50")[0])
  del state_dict["bn1.running_var"]
  with pytest.raises(ValueError, match=r"1 missing: batch_stats/stem/conv_norm/var <- "
                                       r"'bn1.running_var'"):
    _assign(state_dict)


def test_renamed_tensor_is_unused_and_missing():
  state_dict = dict(_fixture("torchvision_resnet50")[0])
  state_dict["fc.b"] = state_dict.pop("fc.bias")
  with pytest.raises(ValueError, match=r"1 unused tensors: fc.b\. 1 missing: "
                                       r"params/classifier/bias <- 'fc.bias'$"):
    _assign(state_dict)


def test_transposed_tensor_is_a_shape_mismatch():
  state_dict = dict(_fixture("torchvision_resnet50")[0])
  state_dict["layer2.0.conv1.weight"] = state_dict["layer2.0.conv1.weight"].transpose(1, 0, 2, 3)
  state_dict["fc.weight"] = state_dict["fc.weight"].T
  with pytest.raises(ValueError, match=r"2 shape mismatches: 'fc.weight' is \(128, 10\), "
                                       r"params/classifier/kernel \(128, 10\) needs \(10, 128\); "
                                       r"'layer2.0.conv1.weight' is \(32, 16, 1, 1\), "
                                       r"params/stage2_block1/reduce/kernel \(32, 16\) needs "
                                       r"\(16, 32, 1, 1\)$"):
    _assign(state_dict)


def test_many_errors_show_the_first_few():
  state_dict = {k: v for k, v in _fixture("torchvision_resnet50")[0].items()
                if not k.startswith("layer4.")}
  state_dict.update({f"extra{i}": np.zeros(1) for i in range(7)})
  with pytest.raises(ValueError) as info:
    _assign(state_dict)
  message = str(info.value)
  assert "7 unused tensors: extra0; extra1; extra2; extra3; extra4; ..." in message
  missing = sum(1 for k in _fixture("torchvision_resnet50")[0] if k.startswith("layer4.")
                and not k.endswith("num_batches_tracked"))
  assert f"{missing} missing: " in message and missing > 5


@pytest.mark.parametrize("call, error, message", [
    (lambda sd: weights.from_torchvision("resnet50", {"classifier.1.weight": np.zeros((10, 4))}),
     ValueError, r"from_torchvision: 'resnet50' state dict has no classifier weight 'fc.weight'"),
    (lambda sd: weights.from_timm("resnet51", sd), ValueError,
     r"weights: no pwconv network for timm model 'resnet51'; did you mean 'resnet50'"),
    (lambda sd: weights.from_torchvision("resnet50", list(sd.items())), TypeError,
     r"from_torchvision: state_dict must be a mapping of tensor names to arrays .*got list"),
    (lambda sd: weights.from_torchvision("resnet50", sd, num_classes=0), ValueError,
     r"from_torchvision: num_classes must be >= 1, got 0"),
])
def test_bad_calls_are_named(call, error, message):
  with pytest.raises(error, match=message):
    call(_fixture("torchvision_resnet50")[0])


# Fine-tuning: loaded weights with a new head train.

def test_fine_tune_with_a_new_head():
  key = "torchvision_resnet50"
  loaded = _loaded(key)[1]
  module, variables = _convert(key, _fixture(key)[0], num_classes=3)
  assert module.num_classes == 3
  chex.assert_shape(variables["params"]["classifier"]["kernel"], (128, 3))
  chex.assert_shape(variables["params"]["classifier"]["bias"], (3,))
  for collection in ("params", "batch_stats"):
    kept = {layer: v for layer, v in variables[collection].items() if layer != "classifier"}
    chex.assert_trees_all_equal(kept, {layer: v for layer, v in loaded[collection].items()
                                       if layer != "classifier"})

  x = jnp.asarray(_fixture(key)[1]["input"])
  labels = jnp.array([0, 2])
  optimizer = optax.sgd(0.1)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(p):
      logits, updates = module.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                     mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates["batch_stats"], loss, grads

  params = variables["params"]
  new_params, new_stats, loss, grads = step(params, variables["batch_stats"],
                                            optimizer.init(params))
  chex.assert_tree_all_finite((loss, grads))
  assert float(jnp.abs(grads["classifier"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["stem"]["conv"]["kernel"]).max()) > 0
  assert not np.allclose(new_params["stem"]["conv"]["kernel"], params["stem"]["conv"]["kernel"])
  assert not np.allclose(new_stats["stem"]["conv_norm"]["mean"],
                         variables["batch_stats"]["stem"]["conv_norm"]["mean"])


def test_same_num_classes_keeps_the_loaded_head():
  key = "torchvision_squeezenet1_0"
  _, variables = _convert(key, _fixture(key)[0], num_classes=10)
  chex.assert_trees_all_equal(variables, _loaded(key)[1])


# weights.load: .safetensors and PyTorch files, and the ways a file can be wrong.

def test_load_safetensors(tmp_path):
  tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.array(3, np.int64)}
  save_file(tensors, str(tmp_path / "w.safetensors"))
  loaded = weights.load(tmp_path / "w.safetensors")
  assert sorted(loaded) == ["a.num_batches_tracked", "a.weight"]
  chex.assert_trees_all_equal(loaded, tensors)
  fixture = weights.load(FIXTURES / "timm_resnet50.safetensors")
  assert len(fixture) == 122 and fixture["conv1.weight"].dtype == np.float16


def _corrupt(path):
  path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")


def _truncated(path):
  path.write_bytes((FIXTURES / "timm_resnet50.safetensors").read_bytes()[:50_000])


def _foreign(path):
  np.savez(open(path, "wb"), x=np.zeros(3))


@pytest.mark.parametrize("write", [_corrupt, _truncated, _foreign])
def test_load_refuses_broken_safetensors(tmp_path, write):
  path = tmp_path / "model.safetensors"
  write(path)
  with pytest.raises(ValueError, match=rf"weights.load: '{path}' is not a readable .safetensors "
                                       r"file \(corrupt, truncated or another format\)"):
    weights.load(path)


def test_load_refuses_unknown_missing_and_empty_files(tmp_path):
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(ValueError, match=r"w.npz' has extension '.npz'; expected one of "
                                       r"\['.safetensors', '.pth'"):
    weights.load(tmp_path / "w.npz")
  with pytest.raises(FileNotFoundError, match=r"weights.load: no such file: .*nothing.safetensors"):
    weights.load(tmp_path / "nothing.safetensors")
  save_file({}, str(tmp_path / "empty.safetensors"))
  with pytest.raises(ValueError, match=r"empty.safetensors' holds no tensors"):
    weights.load(tmp_path / "empty.safetensors")


class _RunsCode:
  """Pickles as a call to open(marker, "w"): unpickling it would create the marker file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return open, (self.marker, "w")


def test_load_pth(tmp_path):
  torch = pytest.importorskip("torch")
  state = {"conv.weight": torch.arange(8.0).reshape(2, 1, 2, 2),
           "fc.bias": torch.ones(3, dtype=torch.bfloat16)}
  torch.save(state, tmp_path / "plain.pth")
  loaded = weights.load(tmp_path / "plain.pth")
  np.testing.assert_array_equal(loaded["conv.weight"], np.arange(8.0).reshape(2, 1, 2, 2))
  assert str(loaded["fc.bias"].dtype) == "bfloat16"
  # A training checkpoint with the model under "state_dict", saved from DataParallel.
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
             tmp_path / "checkpoint.pt")
  assert list(weights.load(tmp_path / "checkpoint.pt")) == ["conv.weight", "fc.bias"]


def test_load_pth_refuses_a_pickle_that_runs_code(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "ran"
  # What a plain unpickle of the file would do:
  pickle.loads(pickle.dumps(_RunsCode(marker))).close()
  assert marker.exists()
  marker.unlink()
  torch.save({"fc.weight": torch.zeros(2, 2), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match=r"weights.load: refused '.*evil.pth': its pickle needs more "
                                       r"than tensors and plain containers"):
    weights.load(tmp_path / "evil.pth")
  assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a pytorch file", b"PK\x03\x04truncated zip"])
def test_load_pth_refuses_broken_files(tmp_path, content):
  pytest.importorskip("torch")
  path = tmp_path / "broken.pth"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r"weights.load: '.*broken.pth' is not a readable PyTorch "
                                       r"file"):
    weights.load(path)


def test_load_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  (tmp_path / "w.pth").write_bytes(b"x")
  with pytest.raises(ImportError, match=r"reading '.*w.pth' needs PyTorch \(pip install torch"):
    weights.load(tmp_path / "w.pth")


def test_state_dict_of_torch_tensors():
  torch = pytest.importorskip("torch")
  key = "timm_mobilenetv1_100"
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in _fixture(key)[0].items()}
  chex.assert_trees_all_equal(_convert(key, state_dict)[1], _loaded(key)[1])
