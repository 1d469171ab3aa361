"""pwconv.remat and pwconv.scan: the same variables and outputs as the plain modules, gradients,
and every block and network under remat."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import pwconv
from pwconv import models

X = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))

BLOCKS = {
    "dense": functools.partial(pwconv.DenseConv, 16),
    "bottleneck": functools.partial(pwconv.Bottleneck, 16, 4),
    "separable": functools.partial(pwconv.DepthwiseSeparable, 16),
    "inverted_residual": functools.partial(pwconv.InvertedResidual, 16, 4, se_ratio=0.25),
    "inception": functools.partial(pwconv.InceptionModule, 4, 4, 4, 2, 4, 4),
    "fire": functools.partial(pwconv.FireModule, 4, 8, 8, residual=True),
    "shuffle": functools.partial(pwconv.ShuffleUnit, 16, groups=2),
    "mlpconv": functools.partial(pwconv.MLPConv, 16),
}


def _class_and_args(partial):
  return partial.func, partial.args, partial.keywords


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_remat_equals_the_plain_block(name):
  cls, args, kwargs = _class_and_args(BLOCKS[name])
  plain, checkpointed = cls(*args, **kwargs), pwconv.remat(cls)(*args, **kwargs)
  variables = plain.init(jax.random.key(1), X)
  chex.assert_trees_all_equal_shapes(checkpointed.init(jax.random.key(1), X), variables)

  def loss(module, params):
    y, _ = module.apply({**variables, "params": params}, X, train=True, mutable=["batch_stats"])
    return jnp.sum(y ** 2)

  chex.assert_trees_all_close(jax.grad(functools.partial(loss, checkpointed))(variables["params"]),
                              jax.grad(functools.partial(loss, plain))(variables["params"]),
                              rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(checkpointed.apply(variables, X), plain.apply(variables, X))
  # The same layers moving the same bytes forward; the backward keeps (almost) only the input.
  ours, theirs = pwconv.profile(checkpointed, X), pwconv.profile(plain, X)
  assert [r.path for r in ours.rows] == [r.path for r in theirs.rows]
  assert (ours.params, ours.macs, ours.bytes) == (theirs.params, theirs.macs, theirs.bytes)
  assert ours.activation_bytes < theirs.activation_bytes


def test_remat_keeps_only_the_input():
  x = jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32)
  plain = pwconv.profile(pwconv.InvertedResidual(16, 4), x)
  checkpointed = pwconv.profile(pwconv.remat(pwconv.InvertedResidual)(16, 4), x)
  assert checkpointed.activation_bytes == 4 * 8 * 8 * 16
  assert plain.activation_bytes > 20 * checkpointed.activation_bytes


def test_plain_nn_remat_fails_as_reported():
  # The problem pwconv.remat solves: nn.remat traces keyword arguments, so `train` is a tracer.
  with pytest.raises(jax.errors.TracerBoolConversionError):
    nn.remat(pwconv.InvertedResidual)(16, 4).init(jax.random.key(0), X, train=True)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "smallnet_shuffle"])
def test_remat_of_networks(name):
  cls = type(models.create(name))
  kwargs = {"mobilenet_v2": dict(stem=8, blocks=((1, 8, 1, 1), (2, 16, 2, 2)), last_features=32),
            "resnet50": dict(stage_sizes=(1, 1), num_filters=8),
            "smallnet_shuffle": dict(block="shuffle", width=8)}[name]
  plain, checkpointed = cls(num_classes=5, **kwargs), pwconv.remat(cls)(num_classes=5, **kwargs)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  variables = plain.init(jax.random.key(1), x)
  chex.assert_trees_all_close(checkpointed.apply(variables, x), plain.apply(variables, x))
  assert pwconv.profile(checkpointed, x).macs == pwconv.profile(plain, x).macs


def test_scan_stacks_identical_blocks():
  stack = pwconv.scan(pwconv.InvertedResidual, length=3)(16, 4)
  variables = stack.init(jax.random.key(1), X)
  chex.assert_shape(variables["params"]["expand"]["kernel"], (3, 16, 64))
  chex.assert_shape(variables["batch_stats"]["depthwise_norm"]["mean"], (3, 64))
  # The same as three blocks in a row with each slice of the stacked variables.
  y = X
  block = pwconv.InvertedResidual(16, 4)
  for i in range(3):
    y = block.apply(jax.tree.map(lambda v: v[i], variables), y)
  chex.assert_trees_all_close(stack.apply(variables, X), y, rtol=1e-5, atol=1e-5)
  y_train, updates = stack.apply(variables, X, train=True, mutable=["batch_stats"])
  chex.assert_shape(y_train, X.shape)
  # MACs: three blocks' worth.
  one = pwconv.profile(block, X).macs
  assert pwconv.profile(stack, X).macs == 3 * one
  remat_stack = pwconv.scan(pwconv.InvertedResidual, length=3, remat_blocks=True)(16, 4)
  chex.assert_trees_all_close(remat_stack.apply(variables, X), stack.apply(variables, X))


@pytest.mark.parametrize("call, message", [
    (lambda: pwconv.remat("InvertedResidual"), "remat: target must be a flax.linen Module class"),
    (lambda: pwconv.scan(pwconv.InvertedResidual, 0), r"scan: length must be an int >= 1, got 0"),
])
def test_bad_arguments(call, message):
  with pytest.raises((TypeError, ValueError), match=message):
    call()
