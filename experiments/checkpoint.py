"""Each variant's checkpoints: an orbax manager per folder, restoring the latest, saving a step.

A step's folder gets its final name only once it is complete, so a crash mid-save leaves a temporary
folder that :func:`restore_latest` never picks.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from absl import logging

State = TypeVar("State")


def quiet_orbax() -> None:
  """Drops orbax's INFO lines (a dozen per checkpoint) from absl's log; warnings still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in handler.filters):
    handler.addFilter(_OrbaxInfoFilter())


class _OrbaxInfoFilter:

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or "orbax" not in record.pathname


def manager(directory: str, *, keep: int) -> ocp.CheckpointManager:
  """The manager of the checkpoints in ``directory`` (an absolute path), keeping the ``keep`` latest."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def restore_latest(mngr: ocp.CheckpointManager, state: State) -> tuple[State, int]:
  """(the latest checkpoint restored into the structure and shardings of ``state``, its step), or
  ``(state, 0)`` when there is none."""
  latest = mngr.latest_step()
  if latest is None:
    return state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return mngr.restore(latest, args=ocp.args.StandardRestore(abstract)), latest


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` as ``step`` (unless that step is saved already) and waits until it is written."""
  if mngr.latest_step() != step:
    mngr.save(step, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()
