"""A run's folder: where each file goes, who may use it, whether a rerun may resume in it, and what
it has logged.

- ``.lock``: held (``flock``) by the run using the folder, and naming it: a second run is refused.
- ``config.json``: the config of the run and its fingerprint (the config, less the keys a resumed
  run may change, and the data's sizes and hash); a rerun must match it to resume. Every checkpoint
  records the same fingerprint, so a lost config.json is rebuilt only from matching checkpoints.
- ``metrics.jsonl``: one JSON object per line: ``{"variant", "step", "split", <metric>: value, ...}``.
- ``tensorboard/<variant>/``: TensorBoard events, one run per variant so their curves overlay.
- ``checkpoints/<variant>/``: orbax checkpoints, one folder per saved step.
- ``savings.json``, ``savings.md``, ``savings.png``: the report (:meth:`Workdir.write_savings`);
  savings.json is written last: while it is missing, the report is not complete.

Only process 0 writes (``is_writer``); other processes run the same code and write nothing. Every
file replaced is replaced atomically (:func:`write_atomic`), so a crash never leaves half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from experiments import checkpoint
from experiments import plot
from experiments import preemption
from experiments import report
from experiments.config_help import flatten

# Keys that do not change what a run computes: a resumed run may differ from the first in these.
# (data_dir may move: the data themselves are fingerprinted.)
RESUMABLE_DIFFERENCES = ("stop_after_steps", "timing_repeats", "calibrate_roofline",
                         "eval_every_steps",
                         "checkpoint_every_steps", "checkpoints_to_keep", "num_devices",
                         "distributed", "data_dir")
REPORT = ("savings.md", "savings.png", "savings.json")  # in the order written: savings.json last


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a flat JSON-able dict, less the keys a resumed run may change."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items()
          if not any(k == key or k.startswith(key + ".") for key in RESUMABLE_DIFFERENCES)}


class Workdir:
  """The folder of one run (see the module docstring for its files); a context manager that lets go
  of the folder's lock on exit.

  Args:
    path: a local or mounted folder; created when the run claims it.
    is_writer: whether this process writes (process 0).
  """

  def __init__(self, path: str, *, is_writer: bool):
    self.path = path
    self.is_writer = is_writer
    self.metrics_path = os.path.join(path, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(path, "tensorboard")
    self.fingerprint: dict[str, Any] = {}
    self._lock: int | None = None

  def __enter__(self) -> Workdir:
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._lock is not None:
      os.close(self._lock)  # releases the flock
      self._lock = None

  def checkpoints(self, variant: str) -> str:
    """The absolute path of ``variant``'s checkpoint folder (orbax needs one)."""
    return os.path.join(os.path.abspath(self.path), "checkpoints", variant)

  def claim(self, config: ml_collections.ConfigDict, data: Mapping[str, Any]) -> None:
    """Locks the folder, refuses it if it holds a run of another config or other data, and records
    this run's config there.

    Args:
      config: the run's (checked, resolved) config.
      data: the data's fingerprint (:meth:`experiments.data.Dataset.fingerprint`).

    Raises:
      ValueError: another run holds the folder (the message names it); config.json is unreadable;
        config.json, or with none the checkpoints, hold another fingerprint (the message lists the
        keys that differ).
    """
    error = self._take_lock() if self.is_writer else ""
    if preemption.any_process(bool(error)):
      raise ValueError(error or f"workdir {self.path!r} is in use by another run (see process 0)")
    self.fingerprint = {"config": fingerprint(config), "data": dict(data)}
    path = os.path.join(self.path, "config.json")
    if os.path.exists(path):
      self._compare(path, config)
    else:
      self._compare_checkpoints()
    if self.is_writer:
      write_atomic(path, json.dumps({"config": json.loads(config.to_json_best_effort()),
                                     "fingerprint": self.fingerprint["config"],
                                     "data": self.fingerprint["data"]}, indent=2, sort_keys=True))
      logging.info("workdir %s: config.json, metrics.jsonl, tensorboard/ (TensorBoard: tensorboard "
                   "--logdir %s), checkpoints/; the report (savings.md, .json, .png) at the end",
                   os.path.abspath(self.path), os.path.abspath(self.tensorboard_dir))

  def resume(self, variant: str, step: int) -> list[dict[str, Any]]:
    """Drops ``variant``'s rows logged after ``step`` from metrics.jsonl (the resumed run logs them
    again), and a line a crash cut short; returns the rows of ``variant`` kept, in order."""
    if not self.is_writer or not os.path.exists(self.metrics_path):
      return []
    with open(self.metrics_path) as f:
      lines = f.readlines()
    rows = [_row(line) for line in lines]
    kept = [(line, row) for line, row in zip(lines, rows)
            if row is not None and not (row["variant"] == variant and row["step"] > step)]
    if len(kept) != len(lines):
      write_atomic(self.metrics_path, "".join(line for line, _ in kept))
    return [row for _, row in kept if row["variant"] == variant]

  def write_savings(self, rows: Sequence[Mapping[str, Any]],
                    config: ml_collections.ConfigDict) -> str:
    """Writes savings.md, savings.png and, last, savings.json (on the writer); returns the text
    table. An old savings.json goes first, so a crash in between never leaves a report that looks
    complete."""
    table = report.savings_table(rows, config)
    if self.is_writer:
      paths = {name: os.path.join(self.path, name) for name in REPORT}
      if os.path.exists(paths["savings.json"]):
        os.remove(paths["savings.json"])
      write_atomic(paths["savings.md"], table + "\n")
      tmp = f"{paths['savings.png']}.tmp-{os.getpid()}.png"
      try:
        plot.plot_savings(rows, tmp, config.baseline)
        os.replace(tmp, paths["savings.png"])
      finally:
        _remove(tmp)
      write_atomic(paths["savings.json"], report.savings_json(rows, config.baseline))
      logging.info("wrote the report: %s (and .md, .png); metrics in %s; TensorBoard: tensorboard "
                   "--logdir %s", os.path.abspath(paths["savings.json"]),
                   os.path.abspath(self.metrics_path), os.path.abspath(self.tensorboard_dir))
    return table

  def _take_lock(self) -> str:
    """Takes the folder's lock: "" once held (or if the file system has no locks), else why not."""
    os.makedirs(self.path, exist_ok=True)
    path = os.path.join(self.path, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "a run that has not said"
      os.close(fd)
      return (f"workdir {self.path!r} is in use by another run ({holder}); wait for it to end or "
              "use another --workdir")
    except OSError as e:  # some network file systems have no locks
      os.close(fd)
      logging.warning("workdir %s cannot be locked (%s): make sure no other run uses it",
                      self.path, e)
      return ""
    holder = (f"pid {os.getpid()} on {socket.gethostname()}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    self._lock = fd
    return ""

  def _compare(self, path: str, config: ml_collections.ConfigDict) -> None:
    """Refuses an unreadable config.json, or one of another config or other data."""
    try:
      with open(path) as f:
        recorded = json.load(f)
      recorded = {"config": recorded["fingerprint"], "data": recorded.get("data"),
                  "data_dir": recorded["config"].get("data_dir", "")}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(
          f"workdir {self.path!r}: its config.json cannot be read ({type(e).__name__}: {e}). It "
          "records which run the folder holds: restore it, or delete it to have the checkpoints "
          "(which record their run too) checked against this config instead") from None
    if recorded["data"] is None:  # written before data were fingerprinted: compare the config only
      recorded["data"] = self.fingerprint["data"]
    differ = checkpoint.differences(recorded, self.fingerprint)
    if differ:
      moved = (f"; config.data_dir was {recorded['data_dir']!r}, now {config.data_dir!r}"
               if any(d.startswith("data") for d in differ) else "")
      raise ValueError(f"workdir {self.path!r} holds a run with a different config (differs in: "
                       f"{', '.join(differ)}{moved}); resume with the same config or use a new "
                       "--workdir")

  def _compare_checkpoints(self) -> None:
    """With no config.json: refuses checkpoints that record another fingerprint."""
    root = os.path.join(self.path, "checkpoints")
    for folder, children, _ in os.walk(root):
      steps = [c for c in children if c.isdigit()]
      children[:] = [c for c in children if not c.isdigit() and "." not in c]
      if not steps:
        continue
      for step, recorded in checkpoint.recorded_fingerprints(os.path.abspath(folder)).items():
        if recorded is not None and (differ := checkpoint.differences(recorded, self.fingerprint)):
          raise ValueError(
              f"workdir {self.path!r} has no config.json, and its checkpoint "
              f"{os.path.join(folder, str(step))} was saved by a run with a different config "
              f"(differs in: {', '.join(differ)}); resume with that run's config or use a new "
              "--workdir")


def write_atomic(path: str, text: str) -> None:
  """Writes to a temporary file and renames it, so a crash never leaves a half-written file; the
  temporary file is removed if the write fails (a full disk)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    _remove(tmp)


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _row(line: str) -> dict[str, Any] | None:
  """A metrics.jsonl line as a dict; None for a line cut short by a crash mid-write."""
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None
