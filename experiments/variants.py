"""The model of each variant, and the runs of each variant's seeds.

A variant is a SmallNet design (``dense``, ``separable``, ``mbconv``, ...:
``pwconv.models.SMALLNET_BLOCKS``), built with ``config.model``, or any other network of the registry
(``mobilenet_v2``, ``resnet50``, ``efficientnet_b0``, ...: ``pwconv.models.list_models()``), built at
its own settings with the data's classes and ``config.dtype``. :func:`build_model` is the one function
from a config and a name to the model, which training and the config check both call.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import pwconv
from pwconv import models

ACTIVATIONS = {"relu": nn.relu, "relu6": jax.nn.relu6, "swish": nn.swish, "gelu": nn.gelu}
NORMS = {"batch": pwconv.batch_norm, "layer": nn.LayerNorm, "none": None}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def names() -> tuple[str, ...]:
  """The names ``config.variants`` may list: the SmallNet designs, then every registered network."""
  return tuple(models.SMALLNET_BLOCKS) + tuple(models.list_models())


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The ``config.seeds`` seeds each variant trains from: ``config.seed``, ``config.seed + 1``..."""
  return [config.seed + i for i in range(config.seeds)]


def run_name(config: ml_collections.ConfigDict, variant: str, seed: int) -> str:
  """The name of one (variant, seed) run: its checkpoints, metric rows and TensorBoard run.

  ``variant`` itself with one seed; ``variant/seed<seed>`` with several.
  """
  return variant if config.seeds == 1 else f"{variant}/seed{seed}"


def build_model(config: ml_collections.ConfigDict, variant: str, num_classes: int) -> nn.Module:
  """The model of one variant.

  Args:
    config: the run's config. A SmallNet design gets ``config.model`` and ``config.dtype``; only its
      block differs between designs. A registered network gets ``config.dtype``,
      ``config.model.impl`` and, when it takes one, ``config.model.drop_path_rate``; its other
      settings are its paper's.
    variant: one of :func:`names`.
    num_classes: outputs of the classifier.
  """
  m, dtype = config.model, DTYPES[config.dtype]
  depthwise = functools.partial(pwconv.DepthwiseConv, impl=m.impl)
  if variant not in models.SMALLNET_BLOCKS:
    model = models.create(variant, num_classes=num_classes, dtype=dtype, depthwise_conv=depthwise)
    if m.drop_path_rate and hasattr(model, "drop_path_rate"):
      model = model.clone(drop_path_rate=m.drop_path_rate)
    return model
  return models.SmallNet(
      block=variant, num_classes=num_classes, width=m.width, stages=m.stages, depth=m.depth,
      kernel_size=(m.kernel_size, m.kernel_size), reduction=m.reduction, expansion=m.expansion,
      groups=m.groups, pointwise_layers=m.pointwise_layers,
      depthwise_conv=depthwise, norm=NORMS[m.norm],
      act=ACTIVATIONS[m.act], dtype=dtype, drop_path_rate=m.drop_path_rate)


def drop_path_blocks(model: nn.Module, image_shape: tuple[int, ...]) -> int:
  """How many of ``model``'s DropPath layers have a rate > 0 (traced abstractly: nothing runs)."""
  found = set()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if type(module).__name__ == "DropPath" and module.rate > 0:
      found.add(module.scope.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return len(found)
