"""A run's folder: where each file goes, whether a rerun may resume in it, and what it has logged.

- ``config.json``: the config of the run and its fingerprint (a rerun must match it to resume).
- ``metrics.jsonl``: one JSON object per line: ``{"variant", "step", "split", <metric>: value, ...}``.
- ``tensorboard/<variant>/``: TensorBoard events, one run per variant so their curves overlay.
- ``checkpoints/<variant>/``: orbax checkpoints, one folder per saved step.
- ``savings.json``, ``savings.md``, ``savings.png``: the report (:meth:`Workdir.write_savings`).

Only process 0 writes (``is_writer``); other processes run the same code and write nothing. Every
file replaced is replaced atomically (:func:`write_atomic`), so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments import report
from experiments.config_check import flatten

# Keys that do not change what a run computes: a resumed run may differ from the first in these.
RESUMABLE_DIFFERENCES = ("stop_after_steps", "timing_repeats", "eval_every_steps",
                         "checkpoint_every_steps", "checkpoints_to_keep", "num_devices",
                         "distributed", "data_dir")


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a flat JSON-able dict, less the keys a resumed run may change."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items()
          if not any(k == key or k.startswith(key + ".") for key in RESUMABLE_DIFFERENCES)}


class Workdir:
  """The folder of one run (see the module docstring for its files).

  Args:
    path: a local or mounted folder; created when the run claims it.
    is_writer: whether this process writes (process 0).
  """

  def __init__(self, path: str, *, is_writer: bool):
    self.path = path
    self.is_writer = is_writer
    self.metrics_path = os.path.join(path, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(path, "tensorboard")

  def checkpoints(self, variant: str) -> str:
    """The absolute path of ``variant``'s checkpoint folder (orbax needs one)."""
    return os.path.join(os.path.abspath(self.path), "checkpoints", variant)

  def claim(self, config: ml_collections.ConfigDict) -> None:
    """Refuses a folder that holds a run of another config; else records this config there.

    Raises:
      ValueError: ``config.json`` has another fingerprint; the message lists the keys that differ.
    """
    path = os.path.join(self.path, "config.json")
    ours = fingerprint(config)
    if os.path.exists(path):
      with open(path) as f:
        previous = json.load(f).get("fingerprint", {})
      differ = sorted(k for k in set(previous) | set(ours) if previous.get(k) != ours.get(k))
      if differ:
        raise ValueError(f"workdir {self.path!r} holds a run with a different config (differs in: "
                         f"{', '.join(differ)}); resume with the same config or use a new --workdir")
    if self.is_writer:
      os.makedirs(self.path, exist_ok=True)
      write_atomic(path, json.dumps({"config": json.loads(config.to_json_best_effort()),
                                     "fingerprint": ours}, indent=2, sort_keys=True))

  def resume(self, variant: str, step: int) -> set[tuple[str, int]]:
    """Drops ``variant``'s rows logged after ``step`` from metrics.jsonl (the resumed run logs them
    again), and a line a crash cut short; returns the ``(split, step)`` rows of ``variant`` kept."""
    if not self.is_writer or not os.path.exists(self.metrics_path):
      return set()
    with open(self.metrics_path) as f:
      lines = f.readlines()
    rows = [_row(line) for line in lines]
    kept = [(line, row) for line, row in zip(lines, rows)
            if row is not None and not (row["variant"] == variant and row["step"] > step)]
    if len(kept) != len(lines):
      write_atomic(self.metrics_path, "".join(line for line, _ in kept))
    return {(row["split"], row["step"]) for _, row in kept if row["variant"] == variant}

  def write_savings(self, rows: Sequence[Mapping[str, Any]],
                    config: ml_collections.ConfigDict) -> str:
    """Writes savings.json, savings.md and savings.png (on the writer); returns the text table."""
    table = report.savings_table(rows, config)
    if self.is_writer:
      write_atomic(os.path.join(self.path, "savings.json"), report.savings_json(rows, config.baseline))
      write_atomic(os.path.join(self.path, "savings.md"), table + "\n")
      report.plot_savings(rows, os.path.join(self.path, "savings.png"), config.baseline)
    return table


def write_atomic(path: str, text: str) -> None:
  """Writes to a temporary file and renames it, so a crash never leaves a half-written file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _row(line: str) -> dict[str, Any] | None:
  """A metrics.jsonl line as a dict; None for a line cut short by a crash mid-write."""
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None
