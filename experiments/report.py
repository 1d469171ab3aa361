"""What a run reports: metric sinks (JSONL, TensorBoard), and the savings table and plot of its rows.

A metric row is ``{"variant", "step", "split", <metric>: value, ...}``; :class:`MetricWriter` sends
each to every sink once. The savings rows hold, per variant, params and MACs (paper convention) and
their ratios to the baseline, the roofline-predicted speedup, measured train-step and inference times
on this device and their speedups (medians and quartiles over timed rounds), and final test accuracy
(mean ± std over seeds) with its difference from the baseline; the workdir writes them as
``savings.json`` (:func:`savings_json`), ``savings.md`` (:func:`savings_table`) and ``savings.png``
(:func:`experiments.plot.plot_savings`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np

import pwconv
from pwconv.costs import human

# (row key, title, format, the row key of its spread: quartiles or a std).
SAVINGS_COLUMNS = (
    ("variant", "variant", "{}", None),
    ("params", "params", "{:,}", None),
    ("macs", "MACs", "{}", None),
    ("params_ratio", "params x", "{:.2f}", None),
    ("macs_ratio", "MACs x", "{:.2f}", None),
    ("predicted_speedup", "pred x", "{:.2f}", None),
    ("train_step_ms", "train ms", "{:.2f}", "train_step_ms_iqr"),
    ("train_speedup", "train x", "{:.2f}", "train_speedup_iqr"),
    ("inference_ms", "infer ms", "{:.2f}", "inference_ms_iqr"),
    ("inference_speedup", "infer x", "{:.2f}", "inference_speedup_iqr"),
    ("test_accuracy", "test acc", "{:.4f}", "test_accuracy_std"),
    ("ema_test_accuracy", "EMA acc", "{:.4f}", "ema_test_accuracy_std"),
    ("n", "n", "{}", None),
    ("accuracy_delta_pp", "Δacc pp", "{:+.2f}", "accuracy_delta_se_pp"),
    ("status", "status", "{}", None),
)


class Sink(Protocol):
  """Where metric rows go."""

  def start(self, variant: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """``variant`` (re)starts at ``step``: what was written of it after ``step`` is void; ``rows``
    are its rows the workdir keeps (the rows up to ``step``)."""

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Records one row."""

  def close(self) -> None:
    """Flushes and closes."""


class JsonlSink:
  """Appends each row to a JSONL file as one strict-JSON line (non-finite numbers as null); the file
  is closed after each row, so a row written is on disk even if the process is killed next."""

  def __init__(self, path: str):
    self.path = path

  def start(self, variant: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Nothing to do: the workdir has dropped the rows after ``step`` already."""

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(_finite({"variant": variant, "step": step, "split": split, **metrics}))
              + "\n")

  def close(self) -> None:
    """Nothing to do: each row is written when it comes."""


class TensorBoardSink:
  """TensorBoard events, one run per variant in ``logdir/<variant>``, scalars tagged
  ``<split>/<metric>``, written synchronously (tensorboardX's record writer, flushed after every
  row: tensorboardX's own SummaryWriter queues events in a thread that a kill -9 loses).

  Each (re)start of a variant writes a new event file that opens with a purge of every earlier step
  (TensorBoard's "SessionLog START" at step 0) and then holds every row the workdir kept of it, read
  back from metrics.jsonl: whatever an earlier, killed run lost from TensorBoard, the resumed run's
  events have. The earlier files are then removed.
  """

  def __init__(self, logdir: str):
    self.logdir = logdir
    self.runs: dict[str, Any] = {}

  def start(self, variant: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    folder = os.path.join(self.logdir, variant)
    os.makedirs(folder, exist_ok=True)
    earlier = [os.path.join(folder, f) for f in os.listdir(folder) if ".tfevents." in f]
    # tensorboardX names files by the second: a suffix of their own keeps resumes apart.
    run = EventsWriter(os.path.join(folder, "events"), f".{os.getpid()}.{time.time_ns()}")
    run.write_event(event_pb2.Event(step=0, wall_time=time.time(), session_log=event_pb2.SessionLog(
        status=event_pb2.SessionLog.START)))
    self.runs[variant] = run
    for row in rows:
      self.write(variant, row["step"], row["split"],
                 {k: v for k, v in row.items() if k not in ("variant", "step", "split")})
    for path in earlier:
      os.remove(path)

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]) -> None:
    from tensorboardX.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=f"{split}/{key}", simple_value=float(value))
              for key, value in metrics.items() if isinstance(value, (int, float))]
    run = self.runs[variant]
    run.write_event(event_pb2.Event(step=step, wall_time=time.time(),
                                    summary=summary_pb2.Summary(value=values)))
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

  def start(self, variant: str, step: int, rows: Sequence[Mapping[str, Any]] = ()) -> None:
    """``variant`` (re)starts at ``step``; ``rows`` are its rows the workdir keeps."""
    for sink in self.sinks:
      sink.start(variant, step, rows)
    self.written |= {(variant, row["split"], row["step"]) for row in rows}

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]
            ) -> dict[str, float]:
    """Writes the row unless it was written already; returns its metrics."""
    if (variant, split, step) not in self.written:
      self.written.add((variant, split, step))
      for sink in self.sinks:
        sink.write(variant, step, split, metrics)
    return dict(metrics)

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()


def savings_rows(config: ml_collections.ConfigDict, profiles: Mapping[str, pwconv.Profile],
                 times: Mapping[str, Mapping[str, Sequence[float]]],
                 predicted: Mapping[str, float],
                 results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
  """One row per variant; ratios are baseline / variant (> 1: the variant is cheaper or faster).

  Args:
    config: the run's config (``variants``, ``baseline``).
    profiles: per variant, its :func:`pwconv.profile`.
    times: per variant, seconds of each timed round (``train_step_s``, ``inference_s``), rounds
      paired across variants (:func:`experiments.measure.step_times`).
    predicted: per variant, the roofline forward time of an eval batch.
    results: per variant, one result per seed (``test_accuracy``, ``test_loss``, ``status``, ...).

  Returns:
    Rows with the counts and ratios; ``*_ms`` the median time, ``*_ms_iqr`` its quartiles and
    ``*_ms_rounds`` every round's;
    ``*_speedup`` the median over rounds of the baseline's time / the variant's and ``*_iqr`` its
    quartiles; ``test_accuracy`` the mean over seeds, ``test_accuracy_std`` the sample std (None
    for one seed), ``n`` the seeds; ``accuracy_delta_pp`` the difference of the means from the
    baseline's, ``accuracy_delta_se_pp`` its standard error.
  """
  base = config.baseline
  rows = []
  for name in config.variants:
    p, r = profiles[name], results[name]
    row = {"variant": name, "params": p.params, "macs": p.macs, "exact_macs": p.exact_macs,
           "params_ratio": profiles[base].params / p.params,
           "macs_ratio": profiles[base].macs / p.macs,
           "predicted_ms": 1e3 * predicted[name],
           "predicted_speedup": predicted[base] / predicted[name]}
    for key, label in (("train_step_s", "train_step"), ("inference_s", "inference")):
      ms = 1e3 * np.asarray(times[name][key])
      ratio = np.asarray(times[base][key]) / np.asarray(times[name][key])
      speedup = label.replace("_step", "") + "_speedup"
      row.update({f"{label}_ms": float(np.median(ms)), f"{label}_ms_iqr": _quartiles(ms),
                  f"{label}_ms_rounds": ms.tolist(),
                  speedup: float(np.median(ratio)), f"{speedup}_iqr": _quartiles(ratio)})
    for prefix in ("", "ema_"):
      if f"{prefix}test_accuracy" in r[0]:
        row.update(_over_seeds(r, results[base], prefix, name == base))
    row.update({"seeds": [x["seed"] for x in r], "steps": min(x["steps"] for x in r),
                "status": _status(r),
                "message": "\n".join(x["message"] for x in r if x.get("message"))})
    rows.append(row)
  return rows


def _over_seeds(results: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]],
                prefix: str, is_base: bool) -> dict[str, Any]:
  """Mean ± std over seeds of ``<prefix>test_accuracy`` (and the loss), and the difference of the
  mean accuracy from the baseline's with its standard error (none for the baseline itself), in
  percentage points."""
  acc = np.asarray([x[f"{prefix}test_accuracy"] for x in results])
  base_acc = np.asarray([x[f"{prefix}test_accuracy"] for x in base])
  std = float(np.std(acc, ddof=1)) if len(acc) > 1 else None
  se = None
  if len(acc) > 1 and len(base_acc) > 1 and not is_base:
    se = 100 * float(np.sqrt(np.var(acc, ddof=1) / len(acc)
                             + np.var(base_acc, ddof=1) / len(base_acc)))
  return {f"{prefix}test_accuracy": float(acc.mean()), f"{prefix}test_accuracy_std": std,
          f"{prefix}test_accuracies": acc.tolist(), "n": len(acc),
          f"{prefix}test_loss": float(np.mean([x[f"{prefix}test_loss"] for x in results])),
          f"{prefix}accuracy_delta_pp": 100 * float(acc.mean() - base_acc.mean()),
          f"{prefix}accuracy_delta_se_pp": se}


def _quartiles(values: np.ndarray) -> list[float]:
  return [float(q) for q in np.percentile(values, [25, 75])]


def _status(results: Sequence[Mapping[str, Any]]) -> str:
  """"finished" when every seed finished; else the first other status and how many seeds had it."""
  others = [x["status"] for x in results if x["status"] != "finished"]
  if not others:
    return "finished"
  return others[0] if len(results) == 1 else f"{others[0]} {len(others)}/{len(results)}"


def savings_table(rows: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict) -> str:
  """A Markdown table of the rows, with notes saying what each number is."""
  ema = any("ema_test_accuracy" in row for row in rows)
  columns = [c for c in SAVINGS_COLUMNS if ema or c[0] != "ema_test_accuracy"]
  header = "| " + " | ".join(c[1] for c in columns) + " |"
  rule = "|" + "|".join("---" if c[0] in ("variant", "status") else "---:" for c in columns) + "|"
  body = ["| " + " | ".join(_cell(row, key, fmt, spread) for key, _, fmt, spread in columns) + " |"
          for row in rows]
  seeds = f"mean ± sample std over n={config.seeds} seeds" if config.seeds > 1 else "one seed"
  notes = [
      f"Savings against `{config.baseline}` on {config.dataset} (batch {config.batch_size}, "
      f"{config.num_steps} steps, {config.dtype}). MACs per example, padded taps counted; 'x' "
      "columns are baseline / variant (> 1 is cheaper or faster). 'pred x': the roofline model's "
      "inference speedup (pwconv.profile(...).predict: per layer, max(2·MACs / peak FLOP/s, "
      + ("bytes / peak bandwidth) over the efficiency pwconv.roofline.calibrate measured for its "
         "kind of layer on this device, once, on layers of its own)"
         if config.calibrate_roofline else
         "bytes / peak bandwidth), uncalibrated: config.calibrate_roofline=False)") +
      "; compare it with 'infer x'. 'train ms' is one "
      f"train step on a batch of {config.batch_size}, 'infer ms' one eval step on a batch of "
      f"{config.eval_batch_size}: the median (interquartile range) of {config.timing_repeats} "
      "compiled calls on this device, every variant timed in turn in each round, in one process; "
      "'train x' and 'infer x' are the median (IQR) over rounds of the baseline's time / the "
      f"variant's. 'test acc' is {seeds}" + (", 'EMA acc' the same for the weights' moving average"
                                             if ema else "") +
      "; Δacc is its difference from the baseline's, in percentage points"
      + (", ± its standard error" if config.seeds > 1 else "") + ".", ""]
  messages = [f"- {m}" for row in rows for m in row.get("message", "").splitlines() if m]
  return "\n".join(notes + [header, rule] + body + ([""] + messages if messages else []))


def _cell(row: Mapping[str, Any], key: str, fmt: str, spread: str | None) -> str:
  """``row[key]`` formatted, with its quartiles "(q1–q3)" (a list) or its "± std" beside it."""
  if key == "macs":
    return human(row[key])
  text, extra = fmt.format(row[key]), row.get(spread) if spread else None
  if isinstance(extra, list):
    return f"{text} ({fmt.format(extra[0])}–{fmt.format(extra[1])})"
  return text if extra is None else f"{text} ± {fmt.replace('+', '').format(extra)}"


def savings_json(rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
  """The rows and the baseline as strict JSON (non-finite numbers as null)."""
  return json.dumps(_finite({"baseline": baseline, "rows": list(rows)}), indent=2)


def _finite(value: Any) -> Any:
  """``value`` with NaN and infinities (in dicts, lists and tuples too) as None: strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value
