"""What every network shares: the knobs handed to each block, the classifier head, channel rounding.

Every network is a linen Module, ``__call__(x, *, train=False)``: x (N, H, W, 3) -> (N, num_classes)
logits. It takes the blocks' knobs (:class:`~pwconv.blocks.Knobs`: ``norm``, ``act``, ``use_bias``,
``zero_init_last``, ``padding``, ``depthwise_conv``, ``dtype``, ``param_dtype``) as keyword arguments and
hands them to every block it builds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.blocks import Knobs


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
  """Rounds a channel count to the nearest multiple of ``divisor``, losing no more than 10%.

  The rounding of the MobileNet reference implementations (TF-slim, torchvision, timm):
  ``make_divisible(32 * 0.35) == 16``, ``make_divisible(1280) == 1280``; a result below
  ``round_limit``·v goes up one ``divisor``.
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * v else rounded


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2, pad: int = 0) -> jax.Array:
  """Max pool rounding the output size up (PyTorch's ``ceil_mode=True``: SqueezeNet's and
  torchvision GoogLeNet's pools), with ``pad`` rows/columns of -inf on every side first.

  x: (N, H, W, C) -> (N, ceil((H + 2·pad - window) / stride) + 1, ..., C); as PyTorch, the last
  window must start inside the input or the left padding, and it takes the max of what it covers.
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * pad - window) // stride) + 1
    if (out - 1) * stride >= size + pad:
      out -= 1
    pads.append((pad, max((out - 1) * stride + window - size - pad, 0)))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class Network(Knobs):
  """A classifier built from blocks: :class:`~pwconv.blocks.Knobs`, handed to every block it builds.

  Every network has a ``num_classes`` field, and some a ``dropout_rate``; both are checked here.
  ``head_layers`` names its top-level layers that belong to the head (the classifier and any conv
  head after the last block): a :class:`~pwconv.models.features.FeatureNet` stops before them.
  """
  head_layers: ClassVar[tuple[str, ...]] = ("classifier", "head", "last")

  def __post_init__(self):
    owner = type(self).__name__
    validate.positive_int(owner, "num_classes", self.num_classes)
    if hasattr(self, "dropout_rate"):
      validate.number(owner, "dropout_rate", self.dropout_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  def classify(self, x: jax.Array, num_classes: int, *, train: bool,
               dropout_rate: float = 0.0) -> jax.Array:
    """Global average pool -> dropout -> Dense: (N, H, W, C) -> (N, num_classes). Cost: C·num_classes."""
    x = jnp.mean(x, axis=(1, 2))
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return nn.Dense(num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)


def drop_path_rates(rate: float, blocks: int) -> list[float]:
  """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (timm's
  ``linspace(0, rate, blocks)``)."""
  return [rate * k / max(blocks - 1, 1) for k in range(blocks)]


def kw_only(**kwargs: Any) -> Any:
  """A keyword-only dataclass field (the presets fill these in with ``functools.partial``)."""
  return dataclasses.field(kw_only=True, **kwargs)


def check_multiplier(owner: str, value: Any) -> None:
  validate.number(owner, "width_multiplier", value, low=0, low_open=True)
