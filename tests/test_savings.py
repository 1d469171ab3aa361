"""The savings rows, table and plot from given measurements: means, spreads and ratios computed
right, and a plot whose labels never overlap."""

import itertools
import types

import numpy as np
import pytest

from experiments import plot
from experiments import report
from experiments.configs import smoke

NAMES = ("dense", "bottleneck", "separable", "inverted_residual", "fire", "inception", "shuffle",
         "mlpconv", "mbconv", "fused_mbconv", "uib", "ghost", "convnext", "repvgg")


def _inputs(names=("dense", "separable"), seeds=(0, 1, 2)):
  config = smoke.get_config()
  config.variants, config.seeds = names, len(seeds)
  profiles = {n: types.SimpleNamespace(params=1000 * (i + 1), macs=10_000 * (i + 1),
                                       exact_macs=9_000 * (i + 1)) for i, n in enumerate(names)}
  times = {n: {"train_step_s": [0.010 * (i + 1), 0.012 * (i + 1), 0.011 * (i + 1), 0.030],
               "inference_s": [0.004 * (i + 1)] * 4} for i, n in enumerate(names)}
  predicted = {n: 0.002 * (i + 1) for i, n in enumerate(names)}
  results = {n: [{"seed": s, "steps": 8, "status": "finished", "message": "",
                  "test_accuracy": 0.5 + 0.1 * i + 0.01 * s, "test_loss": 1.0 - 0.1 * s}
                 for s in seeds] for i, n in enumerate(names)}
  return config, profiles, times, predicted, results


def test_rows_hold_means_spreads_and_paired_ratios():
  config, profiles, times, predicted, results = _inputs()
  dense, sep = report.savings_rows(config, profiles, times, predicted, results)
  assert sep["macs_ratio"] == pytest.approx(0.5) and sep["params_ratio"] == pytest.approx(0.5)
  assert sep["predicted_speedup"] == pytest.approx(0.5)
  assert sep["predicted_ms"] == pytest.approx(4.0)
  assert sep["train_step_ms"] == pytest.approx(1e3 * np.median([0.02, 0.024, 0.022, 0.03]))
  assert sep["train_step_ms_iqr"] == pytest.approx(
      (1e3 * np.percentile([0.02, 0.024, 0.022, 0.03], [25, 75])).tolist())
  # Round by round: 0.5, 0.5, 0.5 and 1.0 (the slow last round of both): median 0.5.
  assert sep["train_speedup"] == pytest.approx(0.5)
  assert sep["train_speedup_iqr"] == pytest.approx([0.5, 0.625])
  assert sep["test_accuracy"] == pytest.approx(0.61)
  assert sep["test_accuracy_std"] == pytest.approx(0.01)
  assert sep["test_accuracies"] == pytest.approx([0.6, 0.61, 0.62]) and sep["n"] == 3
  assert sep["accuracy_delta_pp"] == pytest.approx(10.0)
  assert sep["accuracy_delta_se_pp"] == pytest.approx(100 * np.sqrt(2 * 0.01**2 / 3))
  assert dense["accuracy_delta_se_pp"] is None and dense["train_speedup"] == 1.0
  assert sep["seeds"] == [0, 1, 2] and sep["status"] == "finished"


def test_the_table_shows_each_number_with_its_spread():
  config, profiles, times, predicted, results = _inputs()
  table = report.savings_table(report.savings_rows(config, profiles, times, predicted, results),
                               config)
  header = [line for line in table.splitlines() if line.startswith("| variant")][0]
  assert header == ("| variant | params | MACs | params x | MACs x | pred x | train ms | train x | "
                    "infer ms | infer x | test acc | n | Δacc pp | status |")
  assert ("| separable | 2,000 | 20.0K | 0.50 | 0.50 | 0.50 | 23.00 (21.50–25.50) | 0.50 "
          "(0.50–0.62) | 8.00 (8.00–8.00) | 0.50 (0.50–0.50) | 0.6100 ± 0.0100 | 3 | +10.00 ± 0.82 "
          "| finished |") in table
  assert "| dense | 1,000 | 10.0K | 1.00 | 1.00 | 1.00 |" in table
  assert "| 0.5100 ± 0.0100 | 3 | +0.00 | finished |" in table
  assert "mean ± sample std over n=3 seeds" in table and "'pred x'" in table


def test_ema_accuracy_gets_its_own_column_and_a_diverged_seed_is_counted():
  config, profiles, times, predicted, results = _inputs()
  for name, rs in results.items():
    for r in rs:
      r.update(ema_test_accuracy=r["test_accuracy"] + 0.02, ema_test_loss=0.5)
  results["separable"][1].update(status="diverged", message="[separable/seed1] not finite")
  rows = report.savings_rows(config, profiles, times, predicted, results)
  assert rows[1]["ema_test_accuracy"] == pytest.approx(0.63)
  assert rows[1]["status"] == "diverged 1/3"
  table = report.savings_table(rows, config)
  assert "| test acc | EMA acc | n |" in table
  assert "| 0.6100 ± 0.0100 | 0.6300 ± 0.0100 | 3 |" in table
  assert table.endswith("- [separable/seed1] not finite")


def test_one_seed_has_no_spread():
  config, profiles, times, predicted, results = _inputs(seeds=(0,))
  rows = report.savings_rows(config, profiles, times, predicted, results)
  assert rows[1]["test_accuracy_std"] is None and rows[1]["accuracy_delta_se_pp"] is None
  table = report.savings_table(rows, config)
  assert "| 0.6000 | 1 | +10.00 | finished |" in table and "one seed" in table


def test_labels_of_14_crowded_variants_do_not_overlap(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rng = np.random.default_rng(0)
  # Half of them within a tenth of the axes of one another, several at the same accuracy.
  x = np.concatenate([rng.uniform(1.0, 1.3, 7), rng.uniform(1.0, 3.0, 7)])
  y = np.concatenate([np.full(3, 90.5), rng.uniform(90, 91, 4), rng.uniform(88, 93, 7)])
  points = list(zip(x.tolist(), y.tolist()))
  styles = {n: dict(color="C0", markersize=8) for n in NAMES}
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for px, py in points:
    ax.plot([px], [py], "o")
  ax.set(xlim=(0.5, 3.5), ylim=(87, 94))
  boxes = plot._label_points(fig, ax, NAMES, points, styles)
  plt.close(fig)
  assert len(boxes) == 14
  for a, b in itertools.combinations(boxes, 2):
    assert not plot._overlap(a, b), (a, b)


def test_the_plot_of_14_variants_is_written(tmp_path):
  config, profiles, times, predicted, results = _inputs(NAMES)
  rows = report.savings_rows(config, profiles, times, predicted, results)
  path = tmp_path / "savings.png"
  plot.plot_savings(rows, str(path), "dense")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
