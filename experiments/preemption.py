"""Stopping a run early and cleanly: on SIGTERM, or after a budget of steps per invocation.

Either way the training loop saves a checkpoint of the step it stopped at and raises
:class:`Preempted`; the run returns without its report, the process exits 0, and the same command,
run again, resumes.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Raised inside the run when SIGTERM or the step budget asked it to stop; the message says where
  the checkpoint is and how to resume."""


class stop_on_sigterm:
  """Within this context, SIGTERM sets an event the run checks at each step and after training.

  The loop then saves a checkpoint and returns, or (after the last variant) the run returns before
  its report; the process exits 0 either way. Outside the main thread (where signal handlers cannot
  be installed) the event exists but nothing sets it.
  """

  def __enter__(self) -> threading.Event:
    self.event = threading.Event()
    self.previous = None
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self.event

  def __exit__(self, *exc: Any) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


@dataclasses.dataclass
class Budget:
  """Steps trained by this invocation, over all variants, against ``limit``
  (``config.stop_after_steps``; 0: no limit)."""
  limit: int
  trained: int = 0


def stop_reason(stop: threading.Event, step: int, budget: Budget, *, sync_every: int) -> str:
  """Why to checkpoint and stop before ``step`` ("" to go on).

  The budget ends an invocation once it has trained ``budget.limit`` steps, whatever it resumed
  from. SIGTERM: one process stops as soon as ``stop`` is set; several must stop at the same step
  (saving is collective), so they agree every ``sync_every`` steps (the logging boundaries): any
  one's SIGTERM stops all.
  """
  if budget.limit and budget.trained >= budget.limit:
    return f"stopped after {budget.trained} steps in this run (config.stop_after_steps)"
  if jax.process_count() > 1 and step % sync_every:
    return ""
  return "SIGTERM" if any_process(stop.is_set()) else ""


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
