"""Several seeds end to end, in process: each (variant, seed) trains, logs and resumes on its own,
and the table's mean ± std is that of the seeds' final metrics."""

import json
import os

import numpy as np
import pytest

from experiments import train
from experiments.configs import smoke

TWO = ("dense", "separable")


def _config(**overrides):
  config = smoke.get_config()
  config.update(dict(variants=TWO, num_devices=1, seeds=2, **overrides))
  return config


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _computed(workdir):
  """The rows of metrics.jsonl less the measured step time (a wall-clock reading)."""
  return [{k: v for k, v in r.items() if k != "step_time_s"} for r in _metrics(workdir)]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("seeds"))
  return workdir, train.train_and_evaluate(_config(), workdir)


def test_two_seeds_train_apart_and_the_table_is_their_mean_and_std(two_seeds):
  workdir, result = two_seeds
  finals = {}
  for row in _metrics(workdir):
    if row["split"] == "test" and row["step"] == 8:
      finals[row["variant"]] = row
  assert sorted(finals) == ["dense/seed0", "dense/seed1", "separable/seed0", "separable/seed1"]
  assert finals["dense/seed0"]["loss"] != finals["dense/seed1"]["loss"]
  rows = {r["variant"]: r for r in result["rows"]}
  table = open(os.path.join(workdir, "savings.md")).read()
  for name in TWO:
    acc = np.array([finals[f"{name}/seed{s}"]["accuracy"] for s in (0, 1)])
    row = rows[name]
    assert row["seeds"] == [0, 1] and row["n"] == 2
    assert row["test_accuracies"] == pytest.approx(acc.tolist())
    assert row["test_accuracy"] == pytest.approx(acc.mean())
    assert row["test_accuracy_std"] == pytest.approx(abs(acc[0] - acc[1]) / np.sqrt(2))
    assert f"| {row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f} | 2 |" in table
  base = np.array([finals[f"dense/seed{s}"]["accuracy"] for s in (0, 1)])
  sep = np.array([finals[f"separable/seed{s}"]["accuracy"] for s in (0, 1)])
  assert rows["separable"]["accuracy_delta_pp"] == pytest.approx(100 * (sep.mean() - base.mean()))
  assert rows["separable"]["accuracy_delta_se_pp"] == pytest.approx(
      100 * np.sqrt(sep.var(ddof=1) / 2 + base.var(ddof=1) / 2))
  assert rows["dense"]["accuracy_delta_se_pp"] is None
  assert "mean ± sample std over n=2 seeds" in table
  for name in ("dense/seed0", "separable/seed1"):
    assert os.path.isdir(os.path.join(workdir, "checkpoints", name))
    assert os.listdir(os.path.join(workdir, "tensorboard", name))


def test_the_train_rows_carry_the_learning_rate_and_the_step_time(two_seeds):
  workdir, _ = two_seeds
  config = _config()
  rows = [r for r in _metrics(workdir) if r["split"] == "train" and r["variant"] == "dense/seed1"]
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  from experiments.optimizer import make_schedule
  schedule = make_schedule(config)
  for r in rows:
    assert r["learning_rate"] == pytest.approx(float(schedule(r["step"] - 1)))
    assert 0 < r["step_time_s"] < 5


def test_each_variant_and_seed_resumes_on_its_own(two_seeds, tmp_path):
  ref_dir, ref = two_seeds
  workdir = str(tmp_path / "resumed")
  # 6 steps an invocation of 4 runs x 8 steps: dense/seed0 0-6 | dense/seed0 6-8, dense/seed1 0-4 |
  # dense/seed1 4-8, separable/seed0 0-2 | ...; each checkpointed where it stopped.
  config = _config(stop_after_steps=6)
  results = [train.train_and_evaluate(config, workdir) for _ in range(6)]
  assert [r["preempted"] for r in results] == [True] * 5 + [False]
  assert results[0]["message"].startswith("[dense/seed0] stopped after 6 steps in this run")
  assert results[1]["message"].startswith("[dense/seed1] stopped after 6 steps in this run")
  assert "saved a checkpoint at step 4" in results[1]["message"]
  assert _computed(workdir) == _computed(ref_dir)
  for a, b in zip(results[-1]["rows"], ref["rows"]):
    assert (a["variant"], a["test_accuracies"]) == (b["variant"], b["test_accuracies"])
