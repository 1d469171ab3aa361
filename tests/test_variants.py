"""Every name the runner takes builds, initialises and profiles at the data's size; a network that
cannot take the images is one clear error; seeds name their runs."""

import math

import jax
import jax.numpy as jnp
import pytest

from experiments import measure
from experiments import variants
from experiments.configs import smoke
from pwconv import models


def _config(**overrides):
  config = smoke.get_config()
  config.update(overrides)
  return config


def test_names_are_the_smallnet_designs_then_the_registry():
  names = variants.names()
  assert names[:len(models.SMALLNET_BLOCKS)] == tuple(models.SMALLNET_BLOCKS)
  assert {"mobilenet_v2", "resnet50", "efficientnet_b0", "convnext_tiny", "mbconv",
          "uib"} <= set(names)
  assert set(models.list_models()) <= set(names)


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_creates_inits_and_profiles_on_32x32_cifar_images(name):
  config = _config(dtype="float32")
  model = variants.build_model(config, name, 10)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  profile = measure.profile(model, (32, 32, 3), variant=name, dataset="cifar10")
  assert tuple(profile.rows[-1].out_shape) == (10,)  # the logits, per example
  assert profile.params == sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
  assert profile.macs > 0


def test_a_smallnet_design_takes_the_config_a_registered_network_its_papers():
  config = _config(dtype="bfloat16")
  config.model.width = 12
  small = variants.build_model(config, "separable", 4)
  assert (small.width, small.num_classes, small.dtype) == (12, 4, jnp.bfloat16)
  paper = variants.build_model(config, "mobilenet_v2", 4)
  assert (type(paper).__name__, paper.num_classes, paper.dtype) == ("MobileNetV2", 4, jnp.bfloat16)
  assert paper.blocks == models.MOBILENET_V2


@pytest.mark.parametrize("name,need", [("squeezenet1_0", 32), ("googlenet_torchvision", 16)])
def test_a_network_too_deep_for_the_images_is_one_clear_error(name, need):
  model = variants.build_model(_config(), name, 10)
  with pytest.raises(ValueError) as e:
    measure.profile(model, (8, 8, 1), variant=name, dataset="digits")
  message = str(e.value)
  assert message.startswith(f"config.variants: {name!r} cannot take the 8x8x1 images of digits (")
  assert message.endswith(f"the smallest square input it takes is {need}x{need}: pick a data set "
                          "of larger images or another variant")
  assert "\n" not in message


def test_seeds_and_the_names_of_their_runs():
  one = _config(seed=5)
  assert variants.seeds(one) == [5]
  assert variants.run_name(one, "dense", 5) == "dense"
  three = _config(seed=5, seeds=3)
  assert variants.seeds(three) == [5, 6, 7]
  assert [variants.run_name(three, "fire", s) for s in variants.seeds(three)] == [
      "fire/seed5", "fire/seed6", "fire/seed7"]


def test_the_run_refuses_such_a_network_before_writing_anything(tmp_path):
  from experiments import train
  config = _config(dataset="digits", variants=("dense", "squeezenet1_0"))
  workdir = tmp_path / "never"
  with pytest.raises(ValueError, match=r"^config.variants: 'squeezenet1_0' cannot take the 8x8x1 "
                                       r"images of digits \(.*\); the smallest square input it "
                                       r"takes is 32x32"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


@pytest.mark.slow  # a paper network's train step compiles for a while
def test_a_registered_network_trains_in_the_runner(tmp_path):
  from experiments import train
  config = _config(dataset="synthetic", variants=("mobilenet_v1", "dense"), num_steps=4,
                   baseline="dense", num_devices=1, log_every_steps=2, eval_every_steps=4,
                   checkpoint_every_steps=4)
  config.synthetic.shape = (32, 32, 3)
  config.model.impl = "xla"  # XLA's depthwise conv compiles in a fraction of the shifted path's time
  rows = {r["variant"]: r for r in train.train_and_evaluate(config, str(tmp_path / "run"))["rows"]}
  net = rows["mobilenet_v1"]
  assert net["status"] == "finished" and net["steps"] == 4
  profile = measure.profile(variants.build_model(config, "mobilenet_v1", 4), (32, 32, 3))
  assert (net["params"], net["macs"]) == (profile.params, profile.macs)
  assert net["macs_ratio"] == pytest.approx(rows["dense"]["macs"] / profile.macs)
