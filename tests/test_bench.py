"""pwconv.bench: the rows it computes, the table it prints, its flags and errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import pwconv
from pwconv import bench
from pwconv import blocks


def test_seed_case_row():
  result = bench.run(quick=True, cases=["seed bottleneck"], repeats=1, batch=2, calibrate=False)
  (row,) = result["rows"]
  assert row["case"].startswith("seed bottleneck")
  assert row["candidate"]["macs"] == 43_352_064
  assert row["baseline"]["macs"] == 160_563_200
  assert row["theory_ratio"] == pytest.approx(160_563_200 / 43_352_064)
  assert row["forward_speedup"] == pytest.approx(
      row["baseline"]["forward_s"] / row["candidate"]["forward_s"])
  assert row["forward_realized"] == pytest.approx(row["forward_speedup"] / row["theory_ratio"])
  assert row["flops_per_s"] == pytest.approx(2 * 43_352_064 * 2 / row["candidate"]["forward_s"])
  # Least traffic of the whole batch: pwconv.profile's per-example bytes, weights read once.
  profile = pwconv.profile(blocks.Bottleneck(64, 32, (5, 5), expand=False, residual=False),
                           jax.ShapeDtypeStruct((2, 28, 28, 128), jnp.float32))
  assert row["candidate"]["bytes"] == sum(2 * (r.bytes - r.weight_bytes) + r.weight_bytes
                                          for r in profile.rows)
  assert row["candidate"]["activation_bytes"] == 2 * profile.activation_bytes
  assert 0 < row["roofline_fraction"]
  assert row["roofline_speedup"] == pytest.approx(
      row["baseline"]["roofline_s"] / row["candidate"]["roofline_s"])
  assert result["efficiency"] == {}  # not calibrated: the prediction is the pure roofline
  assert row["predicted_speedup"] == pytest.approx(row["roofline_speedup"])
  assert result["peaks"]["source"] == "probe"  # a CPU is in no table
  text = bench.table(result["rows"], bench.Peaks(**result["peaks"]), "header")
  assert "seed bottleneck" in text and "3.70" in text


def test_impls_give_one_row_each_for_depthwise_cases_only():
  result = bench.run(quick=True, cases=["depthwise 3x3", "pointwise 1x1 28x28x64"],
                     impls=["xla", "auto"], repeats=1, batch=1, calibrate=False)
  impls = [(r["case"], r["impl"]) for r in result["rows"]]
  assert ("depthwise 3x3 56x56x128", "xla->xla") in impls
  assert sum(1 for case, _ in impls if case.startswith("depthwise")) == 2
  assert sum(1 for case, _ in impls if case.startswith("pointwise")) == 1
  xla_row = next(r for r in result["rows"] if r["impl"] == "xla->xla")
  assert xla_row["theory_ratio"] == 1.0  # the same op: only the implementation differs


def test_suite_covers_every_block_family():
  names = " ".join(c.name for c in bench.suite(quick=False, batch=None))
  for family in ("seed bottleneck", "seed separable", "depthwise 3x3", "depthwise 5x5", "pointwise",
                 "bottleneck (ResNet)", "separable 3x3", "inverted residual", "fire", "inception",
                 "shuffle", "mlpconv"):
    assert family in names
  for case in bench.suite(quick=False, batch=None):
    if case.kind == "block":
      assert isinstance(case.candidate, (blocks.Block,))


def test_bad_arguments():
  with pytest.raises(ValueError, match="bench: --impl must name implementations"):
    bench.run(quick=True, impls=["cudnn"])
  with pytest.raises(ValueError, match="bench: --cases .'nothing'. matches no case"):
    bench.run(quick=True, cases=["nothing"])
  with pytest.raises(ValueError, match="bench: --dtype must be"):
    bench.run(quick=True, dtype="float16")
  # 0 is an error, not "the default"; the suite is not built, nothing compiles.
  with pytest.raises(ValueError, match="bench: --batch must be >= 1, got 0"):
    bench.run(quick=True, batch=0)
  with pytest.raises(ValueError, match="bench: --batch must be >= 1, got -2"):
    bench.run(quick=True, batch=-2)
  with pytest.raises(ValueError, match="bench: --repeats must be >= 1, got 0"):
    bench.run(quick=True, repeats=0)


@pytest.mark.parametrize("kind, peaks", [
    ("NVIDIA H100 80GB HBM3", (989e12, 494e12, 3.35e12)),
    ("NVIDIA H100 PCIe", (756e12, 378e12, 2.0e12)),
    ("NVIDIA H200", (989e12, 494e12, 4.8e12)),
    ("NVIDIA A100-SXM4-80GB", (312e12, 156e12, 2.0e12)),
    ("NVIDIA L4", (121e12, 60e12, 0.3e12)),
    ("NVIDIA L40S", (362e12, 183e12, 0.864e12)),
    ("NVIDIA L40", (181e12, 90.5e12, 0.864e12)),
    ("Tesla T4", (65e12, 8.1e12, 0.32e12)),
    ("TPU v5 lite", (197e12, 197e12, 0.82e12)),
    ("TPU v6 lite", (918e12, 918e12, 1.64e12)),
    ("TPU v3", (61.5e12, 61.5e12, 0.45e12)),  # per TensorCore: a v3 chip is two devices
])
def test_device_peaks_match_the_most_specific_row(kind, peaks, monkeypatch):
  class Device:
    device_kind = kind

  monkeypatch.setattr(bench.jax, "devices", lambda: [Device()])
  bf16, f32, bandwidth = peaks
  assert bench.device_peaks("bfloat16") == bench.Peaks(bf16, bandwidth, "table")
  assert bench.device_peaks("float32") == bench.Peaks(f32, bandwidth, "table")


@pytest.mark.slow
def test_command_line_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, "-m", "pwconv.bench", "--quick", "--cases=seed separable", "--repeats=1",
       "--batch=1", f"--json={out}"], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "seed separable 5x5" in proc.stdout and "theory x" in proc.stdout
  result = json.loads(out.read_text())
  assert result["rows"][0]["theory_ratio"] == pytest.approx(
      160_563_200 / (28 * 28 * 25 * 128 + 28 * 28 * 128 * 64))
  # Calibrated by default: every layer kind the case has, and the prediction's fields.
  assert {"conv", "dot", "depthwise:shifted", "memory"} <= set(result["efficiency"])
  assert result["rows"][0]["predicted_speedup"] > 0
  assert "pred x" in proc.stdout


def test_correlations_rank_the_rows():
  rows = [dict(theory_ratio=t, roofline_speedup=r, predicted_speedup=p, forward_speedup=f)
          for t, r, p, f in ((1.0, 1.0, 30.0, 34.0), (18.0, 8.0, 6.0, 5.0), (3.7, 3.4, 3.3, 3.0),
                             (0.7, 0.3, 0.2, 0.4))]
  c = bench.correlations(rows)
  assert c["predicted"] == pytest.approx(1.0)
  assert c["theory"] == pytest.approx(0.4)
  assert bench.correlations(rows[:1]) == {}


def test_torch_mirrors_do_the_modules_work():
  import flax.linen as nn

  import pwconv

  assert bench._torch_mirror(pwconv.DepthwiseConv((5, 5)), 128) == dict(
      k=5, groups=128, cout=128, bias=False, bn=False, relu=False)
  assert bench._torch_mirror(pwconv.PointwiseConv(256), 64) == dict(
      k=1, groups=1, cout=256, bias=False, bn=False, relu=False)
  # The dense baseline block is conv -> BatchNorm -> ReLU, with no conv bias before the norm.
  assert bench._torch_mirror(blocks.DenseConv(64, (5, 5)), 128) == dict(
      k=5, groups=1, cout=64, bias=False, bn=True, relu=True)
  assert bench._torch_mirror(blocks.DenseConv(64, norm=None, act=None), 128) == dict(
      k=3, groups=1, cout=64, bias=True, bn=False, relu=False)
  # No plain mirror: skipped rather than timed as something else.
  assert bench._torch_mirror(blocks.DenseConv(64, strides=(2, 2)), 128) is None
  assert bench._torch_mirror(blocks.DenseConv(64, act=nn.gelu), 128) is None
  assert bench._torch_mirror(blocks.Bottleneck(64, 16), 128) is None


def test_torch_rows_when_torch_is_installed():
  pytest.importorskip("torch")
  selected = [c for c in bench.suite(quick=True, batch=1)
              if c.name.startswith(("depthwise 3x3", "pointwise 1x1 28x28x64", "seed separable"))]
  rows = bench.torch_rows(selected, "float32", repeats=1)
  assert [(r["case"], r["module"], r["torch_op"]) for r in rows] == [
      ("seed separable 5x5 28x28x128->64", "baseline", "conv2d 5x5 groups=1 + batch_norm + relu"),
      ("depthwise 3x3 56x56x128", "candidate", "conv2d 3x3 groups=128"),
      ("pointwise 1x1 28x28x64", "candidate", "conv2d 1x1 groups=1"),
  ]
  assert all(r["torch_forward_s"] > 0 and r["torch_forward_backward_s"] > 0 for r in rows)


def test_torch_flag_without_torch_is_a_usage_error(tmp_path):
  (tmp_path / "torch.py").write_text("raise ImportError('no torch here')\n")
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=os.pathsep.join(
      [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-m", "pwconv.bench", "--quick", "--torch"],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode != 0
  assert "--torch needs PyTorch installed" in proc.stderr
