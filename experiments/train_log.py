"""The train metrics of one variant: the means of each logging window, written as metric rows and
logged with the rate and the time left; a non-finite step ends the variant as :class:`Diverged`.

Also what the log shows at all: :func:`quiet_logs` keeps start-up and checkpoint noise out of it,
and :func:`show_progress` prints it where ``absl.app.run`` does not (a notebook).
"""

from __future__ import annotations

import logging as std_logging
import math
import sys
from typing import Any, TextIO

import jax
from absl import logging

from experiments import report


class Diverged(Exception):
  """A step's loss, gradients or updated parameters were not finite: the variant stops.

  Attributes:
    state: the last good train state (updates stop at the non-finite step).
    step: the 0-based index of the non-finite step.
  """

  def __init__(self, state: Any, step: int):
    super().__init__(f"training is not finite at step {step + 1} (its loss, a gradient or an "
                     "updated parameter)")
    self.state = state
    self.step = step


class TrainLog:
  """Logs the windows of a train state: ``state.window`` (sums of the loss and the accuracy, and the
  count of the steps, since the window began) and ``state.nonfinite_step`` (-1, or the first
  non-finite step).

  The rate and the time left come from the row's ``step_time_s``, which the writer adds (the mean
  time of a train step in the window, compilation, evaluation and checkpoints left out); a window
  without one (only the step that compiled) shows neither.

  Args:
    name: the variant.
    writer: where the ``train`` rows go; its ``write`` returns the row as written.
    total: the last step of the run.
    start: the step training (re)starts at.
  """

  def __init__(self, name: str, writer: report.MetricWriter, total: int, start: int):
    del start  # the writer times the steps
    self.name, self.writer, self.total = name, writer, total

  def __call__(self, state: Any, step: int) -> None:
    """Writes the means of the window ending at ``step`` (or at the first non-finite step).

    Raises:
      Diverged: a step so far was not finite (after its window is written).
    """
    window, bad = jax.device_get((state.window, state.nonfinite_step))
    logged = step if bad < 0 else int(bad)
    if window["steps"]:
      means = {k: float(window[k]) / int(window["steps"]) for k in ("loss", "accuracy")}
      row = self.writer.write(self.name, logged, "train", means) or means
      step_time = row.get("step_time_s")
      speed = (f"  {1 / step_time:.1f} steps/s  ETA {duration((self.total - logged) * step_time)}"
               if step_time else "")
      logging.info("[%s] step %d/%d  loss %.4f  acc %.3f%s", self.name, logged, self.total,
                   means["loss"], means["accuracy"], speed)
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


def quiet_logs() -> None:
  """Drops from absl's log the INFO lines that are noise in a run: orbax's (a dozen per checkpoint)
  and jax's "Unable to initialize backend 'tpu'" (every CPU run). Warnings still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _Noise) for f in handler.filters):
    handler.addFilter(_Noise())


def show_progress(stream: TextIO | None = None) -> None:
  """Prints the run's log (INFO and above: the start, every logged step, the end) to ``stream``
  (stdout by default) where ``absl.app.run`` does not set it up, as in a notebook; calling it again
  changes nothing. The log goes there only, not also to the root logger (which would show it
  twice)."""
  logger = std_logging.getLogger("absl")
  if not any(isinstance(h, _ProgressHandler) for h in logger.handlers):
    handler = _ProgressHandler(stream or sys.stdout)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_Noise())
    logger.addHandler(handler)
    logger.propagate = False
  logging.set_verbosity(logging.INFO)


class _ProgressHandler(std_logging.StreamHandler):
  """The handler :func:`show_progress` adds (a class of its own, so it is added once)."""


class _Noise:
  """A logging filter: False for the INFO lines :func:`quiet_logs` drops."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno > std_logging.INFO:
      return True
    if "orbax" in record.pathname:
      return False
    return not (record.name.startswith("jax._src.xla_bridge")
                and record.getMessage().startswith("Unable to initialize backend"))
