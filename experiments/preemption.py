"""Stopping a run early and cleanly: on SIGTERM or Ctrl-C, or after a budget of steps per run.

Either way the training loop saves a checkpoint of the step it stopped at and raises
:class:`Preempted`; the run returns without its report, and the same command, run again, resumes.
``python -m experiments.run`` then exits 0 after SIGTERM and 130 after Ctrl-C; a second Ctrl-C ends
the process at once, without saving (what was saved before stays good).

This module imports only the standard library at first (jax when a function needs it), so the
command line installs the handlers before anything slow is imported: a SIGTERM during start-up is
caught too.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any

from absl import logging

_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
_CODES = {"": 0, "SIGTERM": 1, "Ctrl-C": 2}  # agreed across processes: the largest wins
_process_stop: Stop | None = None  # set by catch_signals: the command line's, for the whole process


class Preempted(Exception):
  """Raised inside the run when a signal or the step budget asked it to stop; the message says where
  the checkpoint is and how to resume."""


class Stop(threading.Event):
  """Set by the first SIGTERM or Ctrl-C; ``signal_name`` is "SIGTERM" or "Ctrl-C" once set."""

  def __init__(self):
    super().__init__()
    self.signal_name = ""

  def handle(self, signum: int, frame: Any = None) -> None:
    """The signal handler: records the signal and sets the event (the run stops at its next
    step)."""
    del frame
    if not self.is_set():
      self.signal_name = _NAMES[signum]
      again = ("; Ctrl-C again stops at once, without saving" if signum == signal.SIGINT
               else "")
      logging.warning("%s: stopping at the next step, with a checkpoint%s", self.signal_name, again)
    self.set()


def catch_signals() -> Stop:
  """For the whole process (the command line): SIGTERM and the first Ctrl-C set the returned event;
  a second Ctrl-C kills the process at once (the default action), whatever it is doing."""
  global _process_stop
  _process_stop = stop = Stop()

  def on_sigint(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    stop.handle(signum, frame)

  signal.signal(signal.SIGTERM, stop.handle)
  signal.signal(signal.SIGINT, on_sigint)
  return stop


class stop_on_signals:
  """Within this context, SIGTERM and Ctrl-C set the event the run checks at each step and after
  training.

  Under :func:`catch_signals` (the command line) it is that event. Otherwise (a notebook, a test)
  the handlers are installed for the context and the previous ones restored after it; a second
  Ctrl-C goes to the previous handler (a KeyboardInterrupt). Outside the main thread (where signal
  handlers cannot be installed) the event exists but nothing sets it.
  """

  def __enter__(self) -> Stop:
    self.previous = {}
    if _process_stop is not None:
      return _process_stop
    self.stop = Stop()
    if threading.current_thread() is threading.main_thread():
      self.previous = {sig: signal.getsignal(sig) for sig in _NAMES}

      def on_sigint(signum, frame):
        if self.stop.is_set() and callable(self.previous[signal.SIGINT]):
          self.previous[signal.SIGINT](signum, frame)
        self.stop.handle(signum, frame)

      signal.signal(signal.SIGTERM, self.stop.handle)
      signal.signal(signal.SIGINT, on_sigint)
    return self.stop

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def reclaim_signals() -> None:
  """Installs this process's Python handlers again (call from the main thread).

  ``jax.distributed.initialize`` installs a SIGTERM handler of its own (its preemption notifier),
  which never reaches Python: without this, SIGTERM is ignored in every multi-process run.
  """
  if threading.current_thread() is threading.main_thread():
    for sig in _NAMES:
      handler = signal.getsignal(sig)
      if callable(handler):
        signal.signal(sig, handler)


@dataclasses.dataclass
class Budget:
  """Steps trained by this invocation, over all variants, against ``limit``
  (``config.stop_after_steps``; 0: no limit)."""
  limit: int
  trained: int = 0


def stop_reason(stop: Stop, step: int, budget: Budget, *, sync_every: int) -> str:
  """Why to checkpoint and stop before ``step`` ("" to go on).

  The budget ends an invocation once it has trained ``budget.limit`` steps, whatever it resumed
  from. A signal: one process stops as soon as ``stop`` is set; several must stop at the same step
  (saving is collective), so they agree every ``sync_every`` steps (the logging boundaries): any
  one's signal stops all.
  """
  if budget.limit and budget.trained >= budget.limit:
    return f"stopped after {budget.trained} steps in this run (config.stop_after_steps)"
  import jax
  if jax.process_count() > 1 and step % sync_every:
    return ""
  return signalled(stop)


def signalled(stop: Stop) -> str:
  """"SIGTERM" or "Ctrl-C" if any process was signalled ("" if none); a collective."""
  import jax
  if jax.process_count() == 1:
    return stop.signal_name if stop.is_set() else ""
  import numpy as np
  from jax.experimental import multihost_utils
  code = _CODES[stop.signal_name if stop.is_set() else ""]
  agreed = int(np.max(multihost_utils.process_allgather(np.asarray(code, np.int32))))
  return {c: name for name, c in _CODES.items()}[agreed]


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: every process must call it)."""
  import jax
  if jax.process_count() == 1:
    return flag
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
