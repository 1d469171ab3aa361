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


@pytest.mark.parametrize("key", ["optimizer.learning_rate", "optimizer.weight_decay",
                                 "label_smoothing"])
def test_an_infinite_number_is_refused(key):
  config = smoke.get_config()
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = float("inf")
  with pytest.raises(ValueError, match=rf"^config.{key} must be "):
    config_check.check_config(config)


def test_an_infinite_learning_rate_names_finiteness():
  config = smoke.get_config()
  config.optimizer.learning_rate = float("inf")  # > 0, yet every update would be NaN
  with pytest.raises(ValueError, match=r"^config.optimizer.learning_rate must be a finite number, "
                                       r"got inf$"):
    config_check.check_config(config)


@pytest.mark.parametrize("seed", [2**32, 2**64 - 1])
def test_a_seed_beyond_32_bits_is_refused(seed):
  config = smoke.get_config()
  config.seed = seed  # 2**32 would be jax's key [0, 0]: seed 0 again
  with pytest.raises(ValueError, match=rf"^config.seed must be in \[0, 4294967295\] .*got {seed}$"):
    config_check.check_config(config)


def test_the_last_seed_must_fit_in_32_bits_too():
  config = smoke.get_config()
  config.seed, config.seeds = 2**32 - 2, 3
  with pytest.raises(ValueError, match=r"config.seed \+ config.seeds - 1 \(4294967296\) must be"):
    config_check.check_config(config)


def test_a_warmup_longer_than_the_run_is_cut_to_a_tenth_with_a_note(caplog):
  config = smoke.get_config()
  config.num_steps, config.optimizer.warmup_steps = 10, 20
  config_check.check_config(config)  # --config.num_steps=10 with the default warmup: not an error
  with caplog.at_level("WARNING"):
    resolved = config_check.resolve(config)
  assert resolved.optimizer.warmup_steps == 1 and config.optimizer.warmup_steps == 20
  assert "config.optimizer.warmup_steps (20) is not below config.num_steps (10): warming up over " \
         "1 steps instead" in caplog.text
  config.optimizer.warmup_steps = 9
  assert config_check.resolve(config) is config  # a warmup within the run is kept as it is
