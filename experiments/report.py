"""What a run writes to its workdir, and the savings table.

- ``config.json``: the config of the run (a rerun must match it to resume).
- ``metrics.jsonl``: one JSON object per line: ``{"variant", "step", "split", <metric>: value, ...}``.
- ``tensorboard/<variant>/``: TensorBoard events through tensorboardX, one run per variant so their
  curves overlay.
- ``savings.json``, ``savings.md``, ``savings.png``: per variant, params and MACs (paper convention) and
  their ratios to the baseline, measured train-step and inference times on this device and their
  speedups, and final test accuracy with its difference from the baseline.

Only process 0 writes (``is_writer``); other processes run the same code and write nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

import pwconv
from pwconv.costs import human

SAVINGS_COLUMNS = (
    ("variant", "variant", "{}"),
    ("params", "params", "{:,}"),
    ("macs", "MACs", "{}"),
    ("params_ratio", "params x", "{:.2f}"),
    ("macs_ratio", "MACs x", "{:.2f}"),
    ("train_step_ms", "train ms", "{:.2f}"),
    ("train_speedup", "train x", "{:.2f}"),
    ("inference_ms", "infer ms", "{:.2f}"),
    ("inference_speedup", "infer x", "{:.2f}"),
    ("test_accuracy", "test acc", "{:.4f}"),
    ("accuracy_delta_pp", "Δacc pp", "{:+.2f}"),
    ("status", "status", "{}"),
)


class Writer:
  """Writes config.json, metrics.jsonl, TensorBoard events and the savings report of one workdir."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, is_writer: bool = True):
    self.workdir = workdir
    self.config = config
    self.is_writer = is_writer
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard: dict[str, Any] = {}
    self.logged: dict[str, set[tuple[str, int]]] = {}  # (split, step) rows in metrics.jsonl

  def check_resumable(self, fingerprint: dict[str, Any]) -> None:
    """Refuses a workdir that holds a run of another config; else records this config there."""
    path = os.path.join(self.workdir, "config.json")
    if os.path.exists(path):
      with open(path) as f:
        previous = json.load(f).get("fingerprint", {})
      differ = sorted(k for k in set(previous) | set(fingerprint)
                      if previous.get(k) != fingerprint.get(k))
      if differ:
        raise ValueError(f"workdir {self.workdir!r} holds a run with a different config (differs in: "
                         f"{', '.join(differ)}); resume with the same config or use a new --workdir")
    if self.is_writer:
      os.makedirs(self.workdir, exist_ok=True)
      _write_atomic(path, json.dumps({"config": json.loads(self.config.to_json_best_effort()),
                                      "fingerprint": fingerprint}, indent=2, sort_keys=True))

  def start_variant(self, variant: str, step: int) -> None:
    """Drops this variant's metrics logged after ``step`` (a resume re-logs them) and opens its
    TensorBoard run, purging events after ``step`` (those up to it are kept, as in metrics.jsonl)."""
    self.logged[variant] = set()
    if not self.is_writer:
      return
    if os.path.exists(self.metrics_path):
      with open(self.metrics_path) as f:
        lines = f.readlines()
      kept = [line for line in lines if _keep(line, variant, step)]
      if len(kept) != len(lines):
        _write_atomic(self.metrics_path, "".join(kept))
      for line in kept:
        row = json.loads(line)
        if row["variant"] == variant:
          self.logged[variant].add((row["split"], row["step"]))
    from tensorboardX import SummaryWriter  # imported late: it is slow to import
    self._tensorboard[variant] = SummaryWriter(
        os.path.join(self.workdir, "tensorboard", variant), purge_step=step + 1,
        # tensorboardX names files by the second and opens them with "wb": a resume within the
        # same second would overwrite the last run's events without a suffix of its own.
        filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Appends one row (once: a row a resumed run already has is not written again)."""
    if not self.is_writer or (split, step) in self.logged.get(variant, ()):
      return
    self.logged.setdefault(variant, set()).add((split, step))
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(_finite({"variant": variant, "step": step, "split": split, **metrics}))
              + "\n")
    tb = self._tensorboard.get(variant)
    if tb is not None:
      for key, value in metrics.items():
        tb.add_scalar(f"{split}/{key}", value, step)
      tb.flush()

  def write_savings(self, rows: Sequence[Mapping[str, Any]]) -> str:
    """Writes savings.json, savings.md and savings.png; returns (and prints) the text table."""
    table = savings_table(rows, self.config)
    if self.is_writer:
      _write_atomic(os.path.join(self.workdir, "savings.json"),
                    json.dumps(_finite({"baseline": self.config.baseline, "rows": list(rows)}),
                               indent=2))
      _write_atomic(os.path.join(self.workdir, "savings.md"), table + "\n")
      plot_savings(rows, os.path.join(self.workdir, "savings.png"), self.config.baseline)
      print(table, flush=True)
    return table

  def close(self) -> None:
    for tb in self._tensorboard.values():
      tb.close()
    self._tensorboard.clear()


def savings_rows(config: ml_collections.ConfigDict, profiles: Mapping[str, pwconv.Profile],
                 times: Mapping[str, Mapping[str, float]],
                 results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per variant; ratios are baseline / variant (> 1: the variant is cheaper or faster)."""
  base = config.baseline
  rows = []
  for name in config.variants:
    p, t, r = profiles[name], times[name], results[name]
    rows.append({
        "variant": name, "params": p.params, "macs": p.macs, "exact_macs": p.exact_macs,
        "params_ratio": profiles[base].params / p.params,
        "macs_ratio": profiles[base].macs / p.macs,
        "train_step_ms": 1e3 * t["train_step_s"], "inference_ms": 1e3 * t["inference_s"],
        "train_speedup": times[base]["train_step_s"] / t["train_step_s"],
        "inference_speedup": times[base]["inference_s"] / t["inference_s"],
        "test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"],
        "accuracy_delta_pp": 100 * (r["test_accuracy"] - results[base]["test_accuracy"]),
        "steps": r["steps"], "status": r["status"], "message": r.get("message", ""),
    })
  return rows


def savings_table(rows: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict) -> str:
  """A Markdown table of the rows, with a header saying what the numbers are."""
  header = "| " + " | ".join(title for _, title, _ in SAVINGS_COLUMNS) + " |"
  rule = "|" + "|".join("---" if key in ("variant", "status") else "---:"
                        for key, _, _ in SAVINGS_COLUMNS) + "|"
  body = []
  for row in rows:
    cells = [human(row[key]) if key == "macs" else fmt.format(row[key])
             for key, _, fmt in SAVINGS_COLUMNS]
    body.append("| " + " | ".join(cells) + " |")
  notes = [f"Savings against `{config.baseline}` on {config.dataset} (batch {config.batch_size}, "
           f"{config.num_steps} steps, {config.dtype}). MACs per example, padded taps counted; "
           "'x' columns are baseline / variant (> 1 is cheaper or faster); 'train ms' is one train "
           f"step on a batch of {config.batch_size}, 'infer ms' one eval step on a batch of "
           f"{config.eval_batch_size}, each the median of {config.timing_repeats} compiled calls on "
           "this device, measured in one process; "
           "Δacc is test accuracy minus the baseline's, in percentage points.", ""]
  messages = [f"- {row['message']}" for row in rows if row.get("message")]
  return "\n".join(notes + [header, rule] + body + ([""] + messages if messages else []))


def plot_savings(rows: Sequence[Mapping[str, Any]], path: str, baseline: str) -> None:
  """Accuracy against MACs and against measured train-step time, one labelled point per variant."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
  for ax, key, label in ((axes[0], "macs", "MACs per example (paper convention)"),
                         (axes[1], "train_step_ms", "measured train step (ms, this device)")):
    for row in rows:
      marker = "s" if row["variant"] == baseline else "o"
      ax.scatter(row[key], 100 * row["test_accuracy"], marker=marker, s=36)
      ax.annotate(row["variant"], (row[key], 100 * row["test_accuracy"]), textcoords="offset points",
                  xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
  axes[0].set_title("accuracy against theoretical cost")
  axes[1].set_title("accuracy against measured time")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _keep(line: str, variant: str, step: int) -> bool:
  """Whether a metrics.jsonl line survives a resume of ``variant`` at ``step``. A line cut short by a
  crash mid-write is not valid JSON and is dropped."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return False
  return not (row["variant"] == variant and row["step"] > step)


def _finite(value: Any) -> Any:
  """NaN and infinities become None, so the JSON written is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def _write_atomic(path: str, text: str) -> None:
  """Writes to a temporary file and renames it, so a crash never leaves a half-written file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
