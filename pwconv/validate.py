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
  if isinstance(value, np.ndarray) and value.ndim == 1:
    value = tuple(value.tolist())
  if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
    raise TypeError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
  return (positive_int(owner, name, value[0], minimum=minimum),
          positive_int(owner, name, value[1], minimum=minimum))


def sequence(owner: str, name: str, value: Any, *, what: str = "values") -> Sequence[Any]:
  """Returns ``value`` if it is a non-empty list or tuple, else raises naming what it should hold."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    raise TypeError(f"{owner}: {name} must be a non-empty sequence of {what}, got {value!r}")
  return value


def positive_ints(owner: str, name: str, value: Any) -> tuple[int, ...]:
  """Returns a non-empty sequence of ints >= 1 as a tuple (a network's depths, widths, ...)."""
  return tuple(positive_int(owner, name, v)
               for v in sequence(owner, name, value, what="ints >= 1"))


def boolean(owner: str, name: str, value: Any, *, allow_none: bool = False) -> None:
  """Raises unless ``value`` is True or False (or None with ``allow_none``): a string such as "no"
  would otherwise read as True."""
  if isinstance(value, (bool, np.bool_)) or (allow_none and value is None):
    return
  expected = "True, False or None" if allow_none else "True or False"
  raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} {value!r}")


def number(owner: str, name: str, value: Any, *, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
  """Returns ``value`` as a float, or raises unless it is a real number (not a bool) in the range
  [low, high]; ``low_open``/``high_open`` exclude an end."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                  np.floating)):
    raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
  x = float(value)
  too_low = low is not None and (x <= low if low_open else x < low)
  too_high = high is not None and (x >= high if high_open else x > high)
  if too_low or too_high or x != x:
    if high is None:
      expected = f"{'>' if low_open else '>='} {low:g}"
    elif low is None:
      expected = f"{'<' if high_open else '<='} {high:g}"
    else:
      expected = (f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
  return x


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
           choices: Mapping[str, Sequence[str]] | None = None, booleans: Sequence[str] = (),
           optional_booleans: Sequence[str] = ()) -> None:
  """Checks a module's fields by name: ints >= 1, ints-or-pairs >= 1, strings from a list, and
  booleans (``optional_booleans`` may also be None)."""
  owner = type(module).__name__
  for name in positive:
    positive_int(owner, name, getattr(module, name))
  for name in pairs:
    int_pair(owner, name, getattr(module, name))
  for name, allowed in (choices or {}).items():
    one_of(owner, name, getattr(module, name), allowed)
  for name in booleans:
    boolean(owner, name, getattr(module, name))
  for name in optional_booleans:
    boolean(owner, name, getattr(module, name), allow_none=True)
