"""What the savings table measures of each trained variant: its counted cost, and the time of its
compiled steps on this device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pwconv
from experiments.input_pipeline import Pipeline
from pwconv import timing


def profile(model: nn.Module, image_shape: tuple[int, ...]) -> pwconv.Profile:
  """Params and MACs per example of ``model`` on (H, W, C) images (abstract: nothing runs)."""
  return pwconv.profile(model, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))


def step_times(state: Any, train_step: Callable, eval_step: Callable, pipeline: Pipeline,
               repeats: int) -> dict[str, float]:
  """Median seconds of one train step on a global batch and of inference on an eval batch.

  Times the very executables training compiled (nothing is recompiled); train steps are chained,
  each taking the state the previous one returned, as in training. The train step donates its input,
  so this consumes ``state``; inference is timed first.

  Returns:
    ``{"train_step_s", "inference_s"}``.
  """
  eval_batch = next(pipeline.eval_batches())
  infer_t = timing.time_calls(lambda: eval_step(state, *eval_batch), repeats=repeats)
  images, labels = pipeline.train_batch(0)
  new_window = jax.device_put(np.asarray(True), state.step.sharding)

  def train_call():
    nonlocal state
    state = train_step(state, images, labels, new_window)
    return state.step

  train_t = timing.time_calls(train_call, repeats=repeats)
  return {"train_step_s": train_t.median_s, "inference_s": infer_t.median_s}
