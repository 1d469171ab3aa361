"""The config check: one table of key checks, named config.<key>, and the models built as training
builds them (every runner error case, with its message, is in test_bad_inputs)."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments import config_check
from experiments import variants
from experiments.configs import smoke


def _record_builds(monkeypatch) -> list:
  """Makes variants.build_model record ``(args, model)`` of each call."""
  original, built = variants.build_model, []

  def build_model(*args):
    built.append((args, original(*args)))
    return built[-1][1]

  monkeypatch.setattr(variants, "build_model", build_model)
  return built


def test_every_variant_is_built_as_training_builds_it(monkeypatch):
  config = smoke.get_config()
  config.variants = ("dense", "separable")
  config.dtype, config.model.act, config.model.norm = "bfloat16", "relu6", "layer"
  built = _record_builds(monkeypatch)
  config_check.check_config(config)
  assert [args for args, _ in built] == [(config, "dense", 4), (config, "separable", 4)]
  for _, model in built:
    assert model.dtype == jnp.bfloat16 and model.act is jax.nn.relu6
    assert model.norm is variants.NORMS["layer"]


def test_the_classes_of_a_file_data_set_are_its_own(monkeypatch):
  config = smoke.get_config()
  config.dataset, config.data_dir, config.variants = "cifar10", "/nowhere", ("dense",)
  built = _record_builds(monkeypatch)
  config_check.check_config(config)
  assert [args[2] for args, _ in built] == [10]


def test_a_nan_number_is_refused():
  config = smoke.get_config()
  config.optimizer.learning_rate = float("nan")
  with pytest.raises(ValueError, match=r"^config.optimizer.learning_rate must be > 0.0, got nan$"):
    config_check.check_config(config)


@pytest.mark.parametrize("key", ["augment", "optimizer.nesterov"])
def test_a_boolean_key_refuses_a_string(key):
  settings = smoke.get_config().to_dict()
  node = settings
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = "no"  # a config file building its own ConfigDict is not type-checked on assignment
  with pytest.raises(TypeError, match=rf"^config.{key} must be True or False, got str 'no'$"):
    config_check.check_config(ml_collections.ConfigDict(settings))


def test_every_key_of_the_table_is_a_known_key():
  known = config_check.flatten(smoke.get_config().to_dict())
  assert set(config_check.KEYS) <= set(known)
