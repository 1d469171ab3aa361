"""The train step's pieces, each doing what it says: label smoothing, drop path, EMA, clipping,
bf16 compute with float32 params and optimizer state."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import steps
from experiments import variants
from experiments.configs import smoke
from experiments.optimizer import make_optimizer, make_schedule

_SHAPE = (8, 8, 1)


def _config(**overrides):
  config = smoke.get_config()
  config.model.width = 8
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(n, *_SHAPE)), jnp.float32),
          jnp.asarray(rng.integers(0, 4, n), jnp.int32))


def _train(config, variant="dense", recipe=steps.Recipe(), num_steps=3, seed=0):
  model = variants.build_model(config, variant, 4)
  state = steps.init_state(model, make_optimizer(config), _SHAPE, recipe, seed)
  step = jax.jit(functools.partial(steps.train_step, recipe=recipe))
  images, labels = _batch()
  states = [state]
  for s in range(num_steps):
    states.append(step(states[-1], images, labels, jnp.asarray(s == 0)))
  return states


def test_label_smoothing_is_the_formula():
  logits = jnp.asarray([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, -3.0]])
  labels = jnp.asarray([0, 3])
  log_p = jax.nn.log_softmax(logits)
  ce = -log_p[jnp.arange(2), labels]
  uniform = -log_p.mean(-1)
  for alpha in (0.0, 0.1, 0.3):
    expected = float(jnp.mean((1 - alpha) * ce + alpha * uniform))
    assert float(steps.loss_fn(logits, labels, alpha)) == pytest.approx(expected, rel=1e-6)
  assert float(steps.loss_fn(logits, labels, 0.1)) != pytest.approx(
      float(steps.loss_fn(logits, labels, 0.0)), rel=1e-3)


def test_label_smoothing_changes_the_logged_train_loss_by_the_formula():
  config = _config()
  model = variants.build_model(config, "dense", 4)
  state = steps.init_state(model, make_optimizer(config), _SHAPE, steps.Recipe(), 0)
  images, labels = _batch()
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                       train=True, mutable=["batch_stats"])[0]
  smoothed = steps.train_step(state, images, labels, jnp.asarray(True), steps.Recipe(0.2))
  assert float(smoothed.window["loss"]) == pytest.approx(
      float(steps.loss_fn(logits, labels, 0.2)), rel=1e-5)


def test_drop_path_rate_0_is_bitwise_the_same_as_off_and_a_rate_changes_training():
  off = _train(_config(), "convnext")[-1]
  zero = _train(_config(**{"model.drop_path_rate": 0.0}), "convnext")[-1]
  on = _train(_config(**{"model.drop_path_rate": 0.5}), "convnext")[-1]
  jax.tree.map(np.testing.assert_array_equal, off.params, zero.params)
  assert not np.allclose(off.window["loss"], on.window["loss"])


def test_drop_path_reaches_the_blocks_that_take_it_rising_linearly():
  config = _config(**{"model.drop_path_rate": 0.3, "model.stages": 2, "model.depth": 2})

  def drop_path_rates(variant):
    rates = {}

    def record(next_fun, args, kwargs, context):
      if type(context.module).__name__ == "DropPath":
        rates[context.module.scope.path[0]] = context.module.rate
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      variants.build_model(config, variant, 4).init(jax.random.key(0), jnp.zeros((1, *_SHAPE)))
    return rates

  # Blocks 1..4 get 0, 0.1, 0.2, 0.3; MBConv has a DropPath only where it has a shortcut (not on
  # stage 2's strided first block), ConvNeXt on every block; classic designs have none.
  assert drop_path_rates("mbconv") == pytest.approx(
      {"stage1_block1": 0.0, "stage1_block2": 0.1, "stage2_block2": 0.3})
  assert drop_path_rates("convnext") == pytest.approx(
      {"stage1_block1": 0.0, "stage1_block2": 0.1, "stage2_block1": 0.2, "stage2_block2": 0.3})
  assert drop_path_rates("dense") == {}


def test_a_registered_network_takes_the_drop_path_rate():
  config = _config(**{"model.drop_path_rate": 0.2})
  assert variants.build_model(config, "efficientnet_b0", 10).drop_path_rate == 0.2
  assert variants.build_model(_config(), "efficientnet_b0", 10).drop_path_rate == 0.0


def test_ema_with_decay_0_is_the_raw_weights_and_a_decay_lags_them():
  for state in _train(_config(), recipe=steps.Recipe(ema_decay=0.0))[1:]:
    jax.tree.map(np.testing.assert_array_equal, state.ema["params"], state.params)
    jax.tree.map(np.testing.assert_array_equal, state.ema["batch_stats"], state.batch_stats)
  first, *_, last = _train(_config(), recipe=steps.Recipe(ema_decay=0.5), num_steps=2)
  middle = _train(_config(), recipe=steps.Recipe(ema_decay=0.5), num_steps=1)[-1]
  # ema_2 = 0.5·ema_1 + 0.5·w_2 with ema_1 = 0.5·w_0 + 0.5·w_1.
  expected = jax.tree.map(lambda w0, w1, w2: 0.25 * w0 + 0.25 * w1 + 0.5 * w2,
                          first.params, middle.params, last.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               last.ema["params"], expected)
  assert steps.Recipe.from_config(_config()).ema_decay is None
  assert steps.Recipe.from_config(_config(ema_decay=0.99)).ema_decay == 0.99


def test_clipping_bounds_the_update_norm():
  overrides = {"optimizer.momentum": 0.0, "optimizer.nesterov": False,
               "optimizer.weight_decay": 0.0, "optimizer.warmup_steps": 0}
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  grads = {"w": jnp.full((4, 4), 100.0), "b": jnp.full(4, -100.0)}
  for clip in (0.0, 0.5):
    config = _config(**overrides, **{"optimizer.clip_grad_norm": clip})
    opt = make_optimizer(config)
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = float(optax.global_norm(updates))
    lr = float(make_schedule(config)(0))
    if clip:
      assert norm == pytest.approx(lr * clip, rel=1e-5)
    else:
      assert norm == pytest.approx(lr * float(optax.global_norm(grads)), rel=1e-5)


def test_bfloat16_computes_in_bf16_and_keeps_float32_params_and_optimizer_state():
  config = _config(dtype="bfloat16")
  model = variants.build_model(config, "separable", 4)
  states = _train(config, "separable")
  for state in states:
    for leaf in jax.tree.leaves((state.params, state.opt_state, state.batch_stats)):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  logits = model.apply({"params": states[-1].params, "batch_stats": states[-1].batch_stats},
                       _batch()[0])
  assert logits.dtype == jnp.bfloat16
  assert np.isfinite(float(states[-1].window["loss"]))


def test_drop_path_blocks_counts_where_stochastic_depth_acts():
  config = _config(**{"model.drop_path_rate": 0.3, "model.stages": 2, "model.depth": 2})
  assert variants.drop_path_blocks(variants.build_model(config, "mbconv", 4), _SHAPE) == 2
  assert variants.drop_path_blocks(variants.build_model(config, "convnext", 4), _SHAPE) == 3
  assert variants.drop_path_blocks(variants.build_model(config, "dense", 4), _SHAPE) == 0
  assert variants.drop_path_blocks(variants.build_model(_config(), "convnext", 4), _SHAPE) == 0


@pytest.mark.parametrize("key,value,message", [
    ("seeds", 0, "config.seeds must be >= 1, got 0"),
    ("label_smoothing", 1.0, "config.label_smoothing must be in [0.0, 1.0), got 1.0"),
    ("ema_decay", 1.0, "config.ema_decay must be in [0.0, 1.0), got 1.0"),
    ("model.drop_path_rate", 1.0, "config.model.drop_path_rate must be in [0.0, 1.0), got 1.0"),
    ("randaugment.magnitude", 2.0, "config.randaugment.magnitude must be in [0.0, 1.0], got 2.0"),
    ("randaugment.num_ops", -1, "config.randaugment.num_ops must be >= 0, got -1"),
    ("crop_padding", 0, "config.crop_padding must be >= 1, got 0"),
    ("optimizer.clip_grad_norm", -1.0, "config.optimizer.clip_grad_norm must be >= 0.0, got -1.0"),
])
def test_a_bad_value_of_a_training_piece_is_one_error_naming_its_key(key, value, message):
  from experiments.config_check import check_config
  with pytest.raises(ValueError) as e:
    check_config(_config(**{key: value}))
  assert str(e.value) == message


def test_every_piece_on_at_once_trains_end_to_end_and_reports_the_ema_both_ways(tmp_path):
  import json
  import os

  from experiments import train
  config = _config(variants=("convnext",), baseline="convnext", num_devices=1, ema_decay=0.9,
                   label_smoothing=0.1, dtype="bfloat16", augment=True, crop_padding=1,
                   **{"model.drop_path_rate": 0.2, "optimizer.clip_grad_norm": 1.0,
                      "randaugment.num_ops": 2})
  row = train.train_and_evaluate(config, str(tmp_path / "all"))["rows"][0]
  assert row["status"] == "finished" and row["steps"] == config.num_steps
  with open(os.path.join(tmp_path, "all", "metrics.jsonl")) as f:
    tests = [r for r in map(json.loads, f) if r["split"] == "test"]
  assert [r["step"] for r in tests] == [4, 8]
  final = tests[-1]
  assert (row["test_accuracy"], row["ema_test_accuracy"]) == pytest.approx(
      (final["accuracy"], final["ema_accuracy"]))
  assert final["ema_loss"] != final["loss"]
  assert "| EMA acc |" in open(os.path.join(tmp_path, "all", "savings.md")).read()
