"""The report: metric rows to every sink once, strict JSON lines, TensorBoard events on disk at once
and rebuilt on resume, the savings table of rows."""

import json
import os

from conftest import tensorboard_scalars

from experiments import report
from experiments.configs import smoke


class _ListSink:

  def __init__(self):
    self.events = []

  def start(self, variant, step, rows):
    self.events.append(("start", variant, step, len(rows)))

  def write(self, variant, step, split, metrics):
    self.events.append((variant, step, split, dict(metrics)))

  def close(self):
    self.events.append("close")


def test_metric_writer_writes_each_row_once_to_every_sink():
  sinks = [_ListSink(), _ListSink()]
  writer = report.MetricWriter(sinks)
  writer.start("a", 4, [{"variant": "a", "step": 4, "split": "test", "loss": 1.0}])
  writer.write("a", 4, "test", {"loss": 1.0})  # the resumed workdir holds it already
  assert writer.write("a", 6, "train", {"loss": 2.0}) == {"loss": 2.0}
  writer.write("a", 6, "train", {"loss": 3.0})
  writer.close()
  for sink in sinks:
    assert sink.events == [("start", "a", 4, 1), ("a", 6, "train", {"loss": 2.0}), "close"]


def test_jsonl_sink_writes_strict_json(tmp_path):
  sink = report.JsonlSink(str(tmp_path / "metrics.jsonl"))
  sink.write("a", 2, "train", {"loss": float("nan"), "accuracy": 0.5})
  sink.write("a", 4, "train", {"loss": float("inf"), "accuracy": 0.75})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"variant": "a", "step": 2, "split": "train", "loss": None, "accuracy": 0.5},
      {"variant": "a", "step": 4, "split": "train", "loss": None, "accuracy": 0.75}]


def test_savings_table_has_a_row_per_variant_and_the_messages():
  config = smoke.get_config()
  row = {"variant": "dense", "params": 1234, "macs": 5_000_000, "params_ratio": 1.0,
         "macs_ratio": 1.0, "train_step_ms": 2.0, "train_speedup": 1.0, "inference_ms": 1.0,
         "inference_speedup": 1.0, "predicted_speedup": 1.0, "test_accuracy": 0.5, "n": 1,
         "accuracy_delta_pp": 0.0, "status": "diverged",
         "message": "[dense] the loss is not finite at step 3"}
  table = report.savings_table([row], config)
  assert "| dense | 1,234 | 5.0M | 1.00 |" in table
  assert table.endswith("- [dense] the loss is not finite at step 3")


def test_tensorboard_events_are_on_disk_after_each_row(tmp_path):
  sink = report.TensorBoardSink(str(tmp_path))
  sink.start("a", 0, [])
  sink.write("a", 2, "train", {"loss": 1.5, "accuracy": 0.25})
  sink.write("a", 4, "test", {"loss": 1.25, "accuracy": 0.5})
  # Read before close, as after a kill -9: tensorboardX's SummaryWriter would still queue them.
  assert tensorboard_scalars(tmp_path / "a") == {
      ("train/loss", 2): 1.5, ("train/accuracy", 2): 0.25, ("test/loss", 4): 1.25,
      ("test/accuracy", 4): 0.5}


def test_a_restart_rebuilds_the_run_from_the_kept_rows(tmp_path):
  sink = report.TensorBoardSink(str(tmp_path))
  sink.start("a", 0, [])
  for step in (2, 4, 6):
    sink.write("a", step, "train", {"loss": float(step)})
  sink.close()
  kept = [{"variant": "a", "step": s, "split": split, "loss": float(s), "accuracy": 0.5}
          for s in (2, 4) for split in ("train", "test")]  # metrics.jsonl, cut back to step 4
  sink = report.TensorBoardSink(str(tmp_path))
  sink.start("a", 4, kept)
  sink.write("a", 6, "train", {"loss": 7.0})
  assert tensorboard_scalars(tmp_path / "a") == {
      **{(f"{split}/{k}", s): (float(s) if k == "loss" else 0.5)
         for s in (2, 4) for split in ("train", "test") for k in ("loss", "accuracy")},
      ("train/loss", 6): 7.0}
  assert len(os.listdir(tmp_path / "a")) == 1  # the earlier file, rebuilt, is gone
