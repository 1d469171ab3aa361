"""What the savings table measures of each trained variant: its counted cost, the time of its
compiled steps on this device, and the time the roofline model predicts for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pwconv
from experiments.input_pipeline import Pipeline
from pwconv import roofline

# Square input sizes tried, smallest first, to say what a network too deep for the data needs.
_SIZES = (16, 32, 64, 128, 224)


def profile(model: nn.Module, image_shape: tuple[int, ...], *, variant: str = "",
            dataset: str = "") -> pwconv.Profile:
  """Params and MACs per example of ``model`` on (H, W, C) images (abstract: nothing runs).

  Raises:
    ValueError: the model cannot take such images (it pools or strides them away); the message
      names ``config.variants``, the variant, the images and the smallest square size it takes.
  """
  try:
    return _profile(model, image_shape)
  except (ValueError, TypeError) as e:
    height, width, channels = image_shape
    sizes = [s for s in _SIZES if s > min(height, width) and _takes(model, (s, s, channels))]
    need = (f"the smallest square input it takes is {sizes[0]}x{sizes[0]}" if sizes
            else f"it takes none of {_SIZES[0]}..{_SIZES[-1]}")
    raise ValueError(f"config.variants: {variant!r} cannot take the {height}x{width}x{channels} "
                     f"images of {dataset or 'this data set'} ({str(e).splitlines()[0]}); {need}: "
                     "pick a data set of larger images or another variant") from None


def _profile(model: nn.Module, image_shape: tuple[int, ...]) -> pwconv.Profile:
  result = pwconv.profile(model, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  empty = [row.path for row in result.rows if 0 in tuple(row.out_shape)]
  if empty:
    raise ValueError(f"{empty[0]} has an empty output")
  return result


def _takes(model: nn.Module, image_shape: tuple[int, ...]) -> bool:
  try:
    _profile(model, image_shape)
  except (ValueError, TypeError):
    return False
  return True


def step_times(runs: Mapping[str, tuple[Any, Callable, Callable]], pipeline: Pipeline,
               repeats: int) -> dict[str, dict[str, list[float]]]:
  """Seconds of single compiled calls, each variant's train step and inference in turn, ``repeats``
  rounds: a slow spell of the machine then falls on every variant alike, and round r of the
  baseline and of a variant pair up for their ratio.

  Args:
    runs: per variant, (a trained state, its jitted train step, its jitted eval step). Times the
      very executables training compiled (nothing is recompiled); train steps are chained, each
      taking the state the previous one returned, as in training. The train step donates its
      input, so this consumes each state.
    pipeline: where the batches come from (train step 0's batch; the first eval batch).
    repeats: timed rounds, after two untimed ones.

  Returns:
    Per variant, ``{"train_step_s": [seconds per round], "inference_s": [...]}``.
  """
  eval_batch = next(pipeline.eval_batches())
  images, labels = pipeline.train_batch(0, 0)
  states = {name: state for name, (state, _, _) in runs.items()}
  times: dict[str, dict[str, list[float]]] = {
      name: {"train_step_s": [], "inference_s": []} for name in runs}
  for round_ in range(repeats + 2):
    for name, (_, train, infer) in runs.items():
      state = states[name]
      start = time.perf_counter()
      jax.block_until_ready(infer(state, *eval_batch))
      middle = time.perf_counter()
      new_window = jax.device_put(np.asarray(True), state.step.sharding)
      states[name] = jax.block_until_ready(train(state, images, labels, new_window))
      end = time.perf_counter()
      if round_ >= 2:
        times[name]["inference_s"].append(middle - start)
        times[name]["train_step_s"].append(end - middle)
  return times


def predicted_times(profiles: Mapping[str, pwconv.Profile], batch: int, dtype: Any, *,
                    calibrate: bool = True) -> dict[str, float]:
  """Per variant, the roofline forward time (s) of ``batch`` examples on this device: each layer's
  max(2·MACs / peak FLOP/s, bytes / peak bandwidth) over its kind's efficiency, which
  :func:`pwconv.roofline.calibrate` measures once here, on layers of its own (none of these models);
  ``calibrate=False``: every efficiency 1 (the pure roofline).
  """
  peaks = roofline.device_peaks(dtype)
  efficiency = roofline.calibrate(dtype, peaks=peaks, repeats=3) if calibrate else {}
  return {name: p.predict(peaks, batch=max(1, batch), efficiency=efficiency).seconds
          for name, p in profiles.items()}
