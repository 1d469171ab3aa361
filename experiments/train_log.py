"""The train metrics of one variant: the means of each logging window, written as metric rows and
logged with the rate and the time left; a non-finite step ends the variant as :class:`Diverged`."""

from __future__ import annotations

import math
import time
from typing import Any

import jax
from absl import logging

from experiments import report


class Diverged(Exception):
  """A step's loss or gradients were not finite: the variant stops.

  Attributes:
    state: the last good train state (updates stop at the non-finite step).
    step: the 0-based index of the non-finite step.
  """

  def __init__(self, state: Any, step: int):
    super().__init__(f"the loss is not finite at step {step + 1}")
    self.state = state
    self.step = step


class TrainLog:
  """Logs the windows of a train state: ``state.window`` (sums of the loss and the accuracy, and the
  count of the steps, since the window began) and ``state.nonfinite_step`` (-1, or the first
  non-finite step).

  Args:
    name: the variant.
    writer: where the ``train`` rows go.
    total: the last step of the run.
    start: the step training (re)starts at.
  """

  def __init__(self, name: str, writer: report.MetricWriter, total: int, start: int):
    self.name, self.writer, self.total = name, writer, total
    self.last_time, self.last_step = time.perf_counter(), start

  def __call__(self, state: Any, step: int) -> None:
    """Writes the means of the window ending at ``step`` (or at the first non-finite step).

    Raises:
      Diverged: a step so far was not finite (after its window is written).
    """
    window, bad = jax.device_get((state.window, state.nonfinite_step))
    logged = step if bad < 0 else int(bad)
    if window["steps"]:
      means = {k: float(window[k]) / int(window["steps"]) for k in ("loss", "accuracy")}
      self.writer.write(self.name, logged, "train", means)
      now = time.perf_counter()
      rate = (logged - self.last_step) / max(now - self.last_time, 1e-9)
      eta = (self.total - logged) / rate if rate > 0 else float("inf")
      logging.info("[%s] step %d/%d  loss %.4f  acc %.3f  %.1f steps/s  ETA %s", self.name, logged,
                   self.total, means["loss"], means["accuracy"], rate, duration(eta))
      self.last_time, self.last_step = now, logged
    if bad >= 0:
      raise Diverged(state, int(bad))

  def check_finite(self, state: Any, step: int) -> None:
    """Does nothing while every step so far was finite; else logs as :meth:`__call__` and raises."""
    if int(jax.device_get(state.nonfinite_step)) >= 0:
      self(state, step)


def duration(seconds: float) -> str:
  """``seconds`` as "42s" or "3m07s"; "?" when not finite."""
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
