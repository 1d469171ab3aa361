"""Timing compiled JAX functions the way docs/design.md says to: compile first, warm up, block, take medians.

Absolute times move with the machine's load; compare ratios of timings taken in one process.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

from pwconv import validate


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of a compiled function.

  Attributes:
    median_s: median over ``repeats`` timed calls.
    min_s: fastest timed call.
    repeats: timed calls.
    compile_s: time to lower and compile (not part of the calls).
  """
  median_s: float
  min_s: float
  repeats: int
  compile_s: float


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 20, warmup: int = 2) -> Timing:
  """Compiles ``jax.jit(fn)`` for ``args``, runs it ``warmup`` times, then times ``repeats`` calls.

  Each call is followed by ``jax.block_until_ready`` so device time, not dispatch, is measured.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  return time_calls(lambda: compiled(*args), repeats=repeats, warmup=warmup, compile_s=compile_s)


def time_calls(call: Callable[[], Any], *, repeats: int = 20, warmup: int = 2,
               compile_s: float = 0.0) -> Timing:
  """Times ``call()`` (already compiled: e.g. a jitted function that has run once) the same way."""
  repeats = validate.positive_int("time_calls", "repeats", repeats)
  warmup = validate.positive_int("time_calls", "warmup", warmup, minimum=0)
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return Timing(median_s=statistics.median(times), min_s=min(times), repeats=repeats,
                compile_s=compile_s)
