"""What a run reports: metric sinks (JSONL, TensorBoard), and the savings table and plot of its rows.

A metric row is ``{"variant", "step", "split", <metric>: value, ...}``; :class:`MetricWriter` sends
each to every sink once. The savings rows hold, per variant, params and MACs (paper convention) and
their ratios to the baseline, measured train-step and inference times on this device and their
speedups, and final test accuracy with its difference from the baseline; the workdir writes them as
``savings.json`` (:func:`savings_json`), ``savings.md`` (:func:`savings_table`) and ``savings.png``
(:func:`plot_savings`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

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


class Sink(Protocol):
  """Where metric rows go."""

  def start(self, variant: str, step: int) -> None:
    """``variant`` (re)starts at ``step``: what was written of it after ``step`` is void."""

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Records one row."""

  def close(self) -> None:
    """Flushes and closes."""


class JsonlSink:
  """Appends each row to a JSONL file as one strict-JSON line (non-finite numbers as null)."""

  def __init__(self, path: str):
    self.path = path

  def start(self, variant: str, step: int) -> None:
    """Nothing to do: the workdir has dropped the rows after ``step`` already."""

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(_finite({"variant": variant, "step": step, "split": split, **metrics}))
              + "\n")

  def close(self) -> None:
    """Nothing to do: each row is written when it comes."""


class TensorBoardSink:
  """TensorBoard events through tensorboardX, one run per variant in ``logdir/<variant>``, scalars
  tagged ``<split>/<metric>``."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self.runs: dict[str, Any] = {}

  def start(self, variant: str, step: int) -> None:
    """Opens ``variant``'s run, purging its events after ``step`` (as TensorBoard then shows it)."""
    from tensorboardX import SummaryWriter  # imported late: it is slow to import
    self.runs[variant] = SummaryWriter(
        os.path.join(self.logdir, variant), purge_step=step + 1,
        # tensorboardX names files by the second and opens them with "wb": a resume within the
        # same second would overwrite the last run's events without a suffix of its own.
        filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    run = self.runs[variant]
    for key, value in metrics.items():
      run.add_scalar(f"{split}/{key}", value, step)
    run.flush()

  def close(self) -> None:
    for run in self.runs.values():
      run.close()
    self.runs.clear()


class MetricWriter:
  """Writes each metric row to every sink, once: a row the workdir holds already is not written again.

  Args:
    sinks: where rows go; none on the processes that do not write.
  """

  def __init__(self, sinks: Sequence[Sink]):
    self.sinks = list(sinks)
    self.written: set[tuple[str, str, int]] = set()

  def start(self, variant: str, step: int, written: Iterable[tuple[str, int]] = ()) -> None:
    """``variant`` (re)starts at ``step``; ``written`` lists its ``(split, step)`` rows kept."""
    for sink in self.sinks:
      sink.start(variant, step)
    self.written |= {(variant, split, s) for split, s in written}

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if (variant, split, step) in self.written:
      return
    self.written.add((variant, split, step))
    for sink in self.sinks:
      sink.write(variant, step, split, metrics)

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()


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


def savings_json(rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
  """The rows and the baseline as strict JSON (non-finite numbers as null)."""
  return json.dumps(_finite({"baseline": baseline, "rows": list(rows)}), indent=2)


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


def _finite(value: Any) -> Any:
  """``value`` with NaN and infinities (in dicts, lists and tuples too) as None: strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value
