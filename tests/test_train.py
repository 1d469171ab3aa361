"""The experiment runner end to end, in process: files, savings rows, sharding, resume, NaN, errors."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from conftest import tensorboard_scalars

import pwconv
from experiments import train
from experiments import variants
from experiments.configs import smoke


def _config(**overrides) -> ml_collections.ConfigDict:
  config = smoke.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _metrics(workdir, split=None):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if split is None or r["split"] == split]


def _computed(workdir):
  """The rows of metrics.jsonl less the measured step time (a wall-clock reading)."""
  return [{k: v for k, v in r.items() if k != "step_time_s"} for r in _metrics(workdir)]


# Two variants (one with depthwise convs) keep the runs that only test the loop short.
TWO = ("dense", "separable")


@pytest.fixture(scope="session")  # once per test process, however xdist interleaves modules
def reference(tmp_path_factory):
  """An uninterrupted 1-device run the sharding and resume tests compare against."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = train.train_and_evaluate(_config(variants=TWO, num_devices=1), workdir)
  return workdir, result


@pytest.mark.slow
def test_smoke_end_to_end(tmp_path):
  config = _config(num_devices=1)
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir)
  assert not result["preempted"]
  for name in ("config.json", "metrics.jsonl", "savings.json", "savings.md", "savings.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "savings.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(workdir, "savings.json")))
  rows = {r["variant"]: r for r in saved["rows"]}
  assert list(rows) == list(config.variants)
  dataset_shape = tuple(config.synthetic.shape)
  for name, row in rows.items():
    model = variants.build_model(config, name, config.synthetic.num_classes)
    p = pwconv.profile(model, jax.ShapeDtypeStruct((1, *dataset_shape), np.float32))
    assert (row["params"], row["macs"]) == (p.params, p.macs), name
    assert row["macs_ratio"] == pytest.approx(rows["dense"]["macs"] / p.macs)
    assert row["params_ratio"] == pytest.approx(rows["dense"]["params"] / p.params)
    assert row["train_step_ms"] > 0 and row["inference_ms"] > 0
    # Rounds time every variant in turn: the speedup is the median of the paired ratios.
    assert row["train_speedup"] == pytest.approx(float(np.median(
        np.divide(rows["dense"]["train_step_ms_rounds"], row["train_step_ms_rounds"]))))
    assert row["train_step_ms"] == pytest.approx(float(np.median(row["train_step_ms_rounds"])))
    assert len(row["train_step_ms_rounds"]) == config.timing_repeats
    assert 0 <= row["test_accuracy"] <= 1
    assert row["accuracy_delta_pp"] == pytest.approx(
        100 * (row["test_accuracy"] - rows["dense"]["test_accuracy"]))
    assert row["status"] == "finished" and row["steps"] == config.num_steps
  assert rows["separable"]["macs_ratio"] > 2  # the savings are real, and visible
  md = open(os.path.join(workdir, "savings.md")).read()
  assert all(f"| {name} |" in md for name in config.variants)
  metrics = _metrics(workdir)
  for name in config.variants:
    steps = [r["step"] for r in metrics if r["variant"] == name and r["split"] == "train"]
    assert steps == list(range(config.log_every_steps, config.num_steps + 1, config.log_every_steps))
    final = [r for r in metrics if r["variant"] == name and r["split"] == "test"][-1]
    assert final["step"] == config.num_steps
    assert final["accuracy"] == pytest.approx(rows[name]["test_accuracy"])
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(events) == sorted(config.variants)
  recorded = json.load(open(os.path.join(workdir, "config.json")))
  assert recorded["config"]["variants"] == list(config.variants)


def test_sharded_over_8_devices_matches_1_device(reference, tmp_path):
  assert jax.device_count() == 8
  ref_dir, _ = reference
  workdir = str(tmp_path / "sharded")
  train.train_and_evaluate(_config(variants=TWO, num_devices=8), workdir)
  ours, theirs = _metrics(workdir), _metrics(ref_dir)
  assert [(r["variant"], r["step"], r["split"]) for r in ours] == \
         [(r["variant"], r["step"], r["split"]) for r in theirs]
  for a, b in zip(ours, theirs):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), (a, b)


def test_same_seed_same_result(reference, tmp_path):
  ref_dir, ref = reference
  result = train.train_and_evaluate(_config(variants=TWO, num_devices=1), str(tmp_path / "again"))
  assert [r["test_accuracy"] for r in result["rows"]] == [r["test_accuracy"] for r in ref["rows"]]
  assert _computed(str(tmp_path / "again")) == _computed(ref_dir)


def test_resume_matches_uninterrupted_run(reference, tmp_path):
  ref_dir, ref = reference
  workdir = str(tmp_path / "resumed")
  # Each invocation trains at most 6 steps (of 2 x 8), stopping between checkpoints (every 4 steps);
  # the same command, resubmitted, goes on: dense 0-6, then dense 6-8 + separable 0-4, then 4-8.
  config = _config(variants=TWO, num_devices=1, stop_after_steps=6)
  results = [train.train_and_evaluate(config, workdir) for _ in range(3)]
  assert [r["preempted"] for r in results] == [True, True, False]
  assert results[0]["message"].startswith("[dense] stopped after 6 steps in this run")
  assert "saved a checkpoint at step 6" in results[0]["message"]
  assert results[1]["message"].startswith("[separable] stopped after 6 steps in this run")
  assert "saved a checkpoint at step 4" in results[1]["message"]
  for a, b in zip(results[2]["rows"], ref["rows"]):
    assert a["variant"] == b["variant"]
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["test_loss"] == b["test_loss"]
  # The log of the resumed run is the log of the uninterrupted one, line for line.
  assert _computed(workdir) == _computed(ref_dir)
  # And TensorBoard, as it reads the event files (purges applied), shows exactly that log.
  for name in TWO:
    logged = {(f"{r['split']}/{k}", r["step"]): v for r in _metrics(workdir) if r["variant"] == name
              for k, v in r.items() if k not in ("variant", "step", "split")}
    shown = tensorboard_scalars(os.path.join(workdir, "tensorboard", name))
    assert shown.keys() == logged.keys()
    assert all(shown[key] == pytest.approx(logged[key], rel=1e-6) for key in logged)


def test_resume_refuses_a_different_config(reference, tmp_path):
  ref_dir, _ = reference
  with pytest.raises(ValueError, match=r"holds a run with a different config \(differs in: "
                                       r"optimizer.learning_rate\)"):
    train.train_and_evaluate(_config(variants=TWO, **{"optimizer.learning_rate": 0.5}), ref_dir)


def test_non_finite_loss_stops_the_variant_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  config = _config(variants=("dense", "bottleneck"), num_steps=12, checkpoint_every_steps=1,
                   log_every_steps=1, **{"optimizer.learning_rate": 1e8, "optimizer.warmup_steps": 6})
  result = train.train_and_evaluate(config, workdir)
  rows = {r["variant"]: r for r in result["rows"]}
  for name, row in rows.items():
    assert row["status"] == "diverged", row
    last = row["steps"]  # updates stop at the first non-finite step: the state is the last good one
    assert 1 <= last < 12
    assert (f"training is not finite at step {last + 1} (its loss, a gradient or an updated "
            "parameter);" in row["message"]
            and f"Its last good checkpoint is step {last}," in row["message"]), row["message"]
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", name))
                   if s.isdigit())
    assert saved[-1] == last
    train_rows = [r for r in _metrics(workdir, "train") if r["variant"] == name]
    assert [r["step"] for r in train_rows] == list(range(1, last + 1))
    assert all(np.isfinite(r["loss"]) for r in train_rows)
  # Non-finite numbers are written as null: every line is strict JSON.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {line}"))
  json.loads(open(os.path.join(workdir, "savings.json")).read(),
             parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in savings.json"))
  assert "training is not finite" in open(os.path.join(workdir, "savings.md")).read()


def test_an_overflowing_update_is_never_checkpointed(tmp_path):
  # 1e39 is a finite float but float32's infinity: the first update makes every parameter inf or
  # NaN while its loss and gradients are finite.
  workdir = str(tmp_path / "overflow")
  config = _config(variants=("dense",), num_steps=6, checkpoint_every_steps=1, log_every_steps=1,
                   **{"optimizer.learning_rate": 1e39, "optimizer.warmup_steps": 0})
  row = train.train_and_evaluate(config, workdir)["rows"][0]
  assert row["status"] == "diverged" and row["steps"] == 0
  assert "training is not finite at step 1" in row["message"]
  assert "Its last good checkpoint is none (none was saved)" in row["message"]
  assert not [s for s in os.listdir(os.path.join(workdir, "checkpoints", "dense")) if s.isdigit()]


def test_lost_tensorboard_events_are_rebuilt_from_metrics_on_rerun(reference, tmp_path):
  """What a kill -9 does to TensorBoard (its events of finished variants lost while metrics.jsonl
  has them): the rerun's events show every row of metrics.jsonl again, final test scalars too."""
  ref_dir, _ = reference
  workdir = str(tmp_path / "lost_events")
  shutil.copytree(ref_dir, workdir)
  os.remove(os.path.join(workdir, "savings.json"))
  for name in TWO:
    rundir = os.path.join(workdir, "tensorboard", name)
    for f in os.listdir(rundir):
      os.remove(os.path.join(rundir, f))
  train.train_and_evaluate(_config(variants=TWO, num_devices=1), workdir)
  for name in TWO:
    logged = {(f"{r['split']}/{k}", r["step"]): v for r in _metrics(workdir) if r["variant"] == name
              for k, v in r.items() if k not in ("variant", "step", "split")}
    shown = tensorboard_scalars(os.path.join(workdir, "tensorboard", name))
    assert ("test/accuracy", 8) in shown and ("test/loss", 8) in shown
    assert shown.keys() == logged.keys()
    assert all(shown[key] == pytest.approx(logged[key], rel=1e-6) for key in logged)
    assert len(os.listdir(os.path.join(workdir, "tensorboard", name))) == 1
