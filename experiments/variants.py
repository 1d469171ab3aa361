"""The model of each variant: the config's names for norm, activation and dtype, and the one function
from a config and a variant name to its SmallNet, which training and the config check both call."""

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
  """The variant names ``config.variants`` may list: the designs registered with SmallNet."""
  return tuple(models.SMALLNET_BLOCKS)


def build_model(config: ml_collections.ConfigDict, variant: str, num_classes: int) -> nn.Module:
  """The SmallNet of one variant; only ``block`` differs between variants.

  Args:
    config: the run's config; ``config.model`` and ``config.dtype`` set everything but the block.
    variant: one of :func:`names`.
    num_classes: outputs of the classifier.
  """
  m = config.model
  return models.SmallNet(
      block=variant, num_classes=num_classes, width=m.width, stages=m.stages, depth=m.depth,
      kernel_size=(m.kernel_size, m.kernel_size), reduction=m.reduction, expansion=m.expansion,
      groups=m.groups, pointwise_layers=m.pointwise_layers,
      depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl=m.impl), norm=NORMS[m.norm],
      act=ACTIVATIONS[m.act], dtype=DTYPES[config.dtype])
