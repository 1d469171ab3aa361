"""Argument checks shared by ops, layers and blocks.

Every check raises with a message that names its owner (the function or module) and the argument:
``DepthwiseConv: depth_multiplier must be >= 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def positive_int(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
  """Returns ``value`` as an int, or raises if it is not an integer >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
  if value < minimum:
    raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
  return int(value)


def int_pair(owner: str, name: str, value: Any, *, minimum: int = 1) -> tuple[int, int]:
  """Returns an int or a 2-sequence of ints as a pair, each checked >= ``minimum``."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    value = (value, value)
  if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
    raise TypeError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
  return (positive_int(owner, name, value[0], minimum=minimum),
          positive_int(owner, name, value[1], minimum=minimum))


def one_of(owner: str, name: str, value: Any, allowed: Sequence[str]) -> str:
  """Returns ``value`` if it is one of ``allowed``, else raises naming the choices."""
  if not isinstance(value, str) or value not in allowed:
    raise ValueError(f"{owner}: {name} must be one of {sorted(allowed)}, got {value!r}")
  return value


def floating(owner: str, name: str, x: Any) -> None:
  """Raises unless ``x`` is an array with a real floating dtype (f32, bf16, ...)."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    got = jnp.dtype(dtype).name if dtype is not None else type(x).__name__
    raise TypeError(f"{owner}: {name} must have a floating dtype, got {got}")


def nhwc(owner: str, name: str, x: Any) -> None:
  """Raises unless ``x`` is a rank-4 (N, H, W, C) array with a floating dtype."""
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None or dtype is None:
    raise TypeError(f"{owner}: {name} must be an array of shape (N, H, W, C), got {type(x).__name__}")
  if len(shape) != 4:
    raise ValueError(f"{owner}: {name} must have rank 4 (N, H, W, C), got shape {tuple(shape)}")
  floating(owner, name, x)
  if any(int(d) < 1 for d in shape):
    raise ValueError(f"{owner}: {name} must have no empty dimension, got shape {tuple(shape)}")


def fields(module: Any, *, positive: Sequence[str] = (), pairs: Sequence[str] = (),
           choices: Mapping[str, Sequence[str]] | None = None) -> None:
  """Checks a module's fields by name: ints >= 1, ints-or-pairs >= 1, and strings from a list."""
  owner = type(module).__name__
  for name in positive:
    positive_int(owner, name, getattr(module, name))
  for name in pairs:
    int_pair(owner, name, getattr(module, name))
  for name, allowed in (choices or {}).items():
    one_of(owner, name, getattr(module, name), allowed)
