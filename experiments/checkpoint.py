"""Each variant's checkpoints: an orbax manager per folder, restoring the newest intact step, saving
a step with the run's fingerprint in it.

A step's folder gets its final name only once it is complete, so a crash mid-save leaves a
temporary folder that orbax never lists. Every saved step records the fingerprint of the run that
saved it (its config and its data, as config.json does), so a checkpoint is never restored into
another run, even when config.json is gone. A listed step that cannot be read (garbled, truncated or
deleted files, a lost fingerprint) is moved aside to ``<step>.broken`` with a warning naming it, and
the step before it is restored instead.
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from experiments import preemption
from experiments.config_help import flatten

State = TypeVar("State")
_ITEM = "default"  # the one item of a step, named: a manager that infers its items can be misled


class Manager(ocp.CheckpointManager):
  """An orbax manager that saves ``fingerprint`` (``{"config": ..., "data": ...}``, see
  :mod:`experiments.workdir`) in the metadata of every step."""

  def __init__(self, directory: str, *, keep: int, fingerprint: dict[str, Any]):
    super().__init__(directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
                     item_names=(_ITEM,))
    self.fingerprint = fingerprint


def manager(directory: str, *, keep: int, fingerprint: dict[str, Any]) -> Manager:
  """The manager of the checkpoints in ``directory`` (an absolute path), keeping the ``keep``
  latest."""
  return Manager(directory, keep=keep, fingerprint=fingerprint)


def recorded_fingerprints(directory: str) -> dict[int, dict[str, Any] | None]:
  """The fingerprint each step in ``directory`` was saved with (None where it cannot be read)."""
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as mngr:
    return {step: _recorded(mngr, step) for step in mngr.all_steps()}


def differences(recorded: dict[str, Any], ours: dict[str, Any]) -> list[str]:
  """The config keys (and "data") in which two fingerprints differ; NaN equals NaN."""
  differ = []
  for part in ("config", "data"):
    a, b = flatten(recorded.get(part) or {}), flatten(ours.get(part) or {})
    keys = sorted(k for k in set(a) | set(b) if _json(a.get(k)) != _json(b.get(k)))
    differ += keys if part == "config" else [f"data ({', '.join(keys)})"] if keys else []
  return differ


def restore_latest(mngr: Manager, state: State) -> tuple[State, int]:
  """(the newest intact checkpoint restored into the structure and shardings of ``state``, its
  step), or ``(state, 0)`` when there is none. Unreadable steps are moved aside (see the module
  docstring).

  Raises:
    ValueError: the newest readable step was saved by another config or other data.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  for step in sorted(mngr.all_steps(), reverse=True):
    path = os.path.join(mngr.directory, str(step))
    recorded = _recorded(mngr, step)
    if recorded is not None and (differ := differences(recorded, mngr.fingerprint)):
      raise ValueError(f"checkpoint {path} was saved by a run with a different config or data "
                       f"(differs in: {', '.join(differ)}); resume with that run's config or use a "
                       "new --workdir")
    restored, problem = None, "its metadata holds no fingerprint" if recorded is None else ""
    if not problem:
      try:
        restored = mngr.restore(step, args=ocp.args.Composite(
            **{_ITEM: ocp.args.StandardRestore(abstract)}))[_ITEM]
      except Exception as e:  # orbax and tensorstore raise many types for a damaged file
        problem = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    if not preemption.any_process(bool(problem)):  # every process restores the same step
      return restored, step
    _set_aside(mngr, path, problem or "another process could not read it")
  return state, 0


def save(mngr: Manager, step: int, state: Any) -> None:
  """Saves ``state`` as ``step`` (unless that step is saved already) and waits until it is
  written."""
  if mngr.latest_step() != step:
    mngr.save(step, args=ocp.args.Composite(**{_ITEM: ocp.args.StandardSave(state)}),
              custom_metadata={"fingerprint": mngr.fingerprint})
  mngr.wait_until_finished()


def _recorded(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
  try:
    fingerprint = mngr.metadata(step).custom_metadata.get("fingerprint")
  except Exception:  # an unreadable metadata file is a damaged step
    return None
  return fingerprint if isinstance(fingerprint, dict) else None


def _set_aside(mngr: ocp.CheckpointManager, path: str, problem: str) -> None:
  """Moves the unreadable step at ``path`` to ``<step>.broken`` (on process 0, the others waiting
  for it), so that orbax lists it no more and never saves over it."""
  aside = f"{path}.broken"
  for n in range(1, 1000):
    if not os.path.exists(aside):
      break
    aside = f"{path}.broken-{n}"
  logging.warning("checkpoint %s cannot be restored (%s); moving it to %s and restoring the step "
                  "before it", path, problem, aside)
  if jax.process_index() == 0:
    os.rename(path, aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"checkpoint moved aside: {path}")
  mngr.reload()


def _json(value: Any) -> str:
  return json.dumps(value, sort_keys=True)
