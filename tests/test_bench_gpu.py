"""pwconv.bench --suite gpu (pwconv.bench_gpu), run at its CPU-sized shapes with Pallas interpreted."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from pwconv import bench_gpu
from pwconv import kernels
from pwconv.kernels import pallas_depthwise

CEILINGS = {"copy_bytes_per_s": 1e9, "matmul_flops_per_s": 1e10}


def test_mobilenet_v2_depthwise_layers_follow_the_model():
  layers = bench_gpu.depthwise_layers(224)
  # The 17 depthwise convs of MobileNetV2 at 224² have these 10 distinct (input, k, stride).
  assert layers == [((112, 112, 32), 3, 1), ((112, 112, 96), 3, 2), ((56, 56, 144), 3, 1),
                    ((56, 56, 144), 3, 2), ((28, 28, 192), 3, 1), ((28, 28, 192), 3, 2),
                    ((14, 14, 384), 3, 1), ((14, 14, 576), 3, 1), ((14, 14, 576), 3, 2),
                    ((7, 7, 960), 3, 1)]


def test_depthwise_rows_count_bytes_and_mark_auto():
  sizes = dataclasses.replace(bench_gpu.QUICK, depthwise_layers=1, depthwise_shape=(8, 8, 16))
  rows = bench_gpu.depthwise_rows(sizes, ["xla", "shifted"], CEILINGS)
  assert [(r["impl"], r["kernel"]) for r in rows] == [("xla", 3), ("shifted", 3)]
  for r in rows:
    # bf16: one read of x (2x8x8x16), the 3x3x1x16 kernel, one write of y (same shape as x).
    assert r["bytes"] == 2 * (2 * 8 * 8 * 16 + 9 * 16 + 2 * 8 * 8 * 16)
    assert r["bytes_per_s"] == pytest.approx(r["bytes"] / r["forward_s"])
    assert r["copy_share"] == pytest.approx(r["bytes_per_s"] / 1e9)
    assert r["auto"] == (r["impl"] == kernels.resolve("auto", taps=9))
    assert r["forward_s"] > 0 and r["forward_backward_s"] > 0
  lines = bench_gpu.render("depthwise", {"depthwise": rows}).splitlines()
  assert lines[0] == "| shape | k | stride | impl | fwd ms | f+b ms | GB/s | of copy | compile s |"
  assert lines[2].startswith("| 2x8x8x16 | 3 | 1 | xla")


def test_every_tile_computes_what_xla_computes():
  sizes = dataclasses.replace(bench_gpu.QUICK, depthwise_shape=(8, 8, 16),
                              tiles=((2, 4, 8, 1), (1, 8, 16, 2)))
  rows = bench_gpu.tile_rows(sizes, CEILINGS)
  assert [(tuple(r["tile"]), r["num_warps"]) for r in rows] == [((2, 4, 8), 1), ((1, 8, 16), 2)]
  assert all(r["max_abs_error_vs_xla"] < 0.07 for r in rows)  # bf16 outputs, f32 accumulation


def test_bad_tiles_are_named():
  x = jnp.ones((1, 4, 4, 8))
  w = jnp.ones((3, 3, 1, 8))
  args = ((1, 1), ((1, 1), (1, 1)), (1, 1))
  with pytest.raises(ValueError, match="tile block_w must be a positive power of two, got 3"):
    pallas_depthwise.gpu_depthwise(x, w, *args, interpret=True, tile=(4, 3, 8))
  with pytest.raises(ValueError, match="num_warps must be a positive power of two, got 0"):
    pallas_depthwise.gpu_depthwise(x, w, *args, interpret=True, num_warps=0)


def test_train_step_rate_runs_a_finite_step():
  # Two inverted residual blocks keep the compile short; the step is the full one.
  row = bench_gpu.train_step_rate("xla", 4, 32, 1, width_multiplier=0.25,
                                  blocks=((1, 16, 1, 1), (6, 24, 1, 2)))
  assert row["images_per_s"] == pytest.approx(4 / row["step_s"])
  assert row["compile_s"] > 0


def test_targets_and_auto_choice_read_the_rows():
  result = {
      "sizes": {"depthwise_shape": (56, 56, 512)},
      "depthwise": [
          dict(shape=[64, 56, 56, 512], stride=1, kernel=3, impl="xla", copy_share=0.4,
               forward_backward_s=2.0),
          dict(shape=[64, 56, 56, 512], stride=1, kernel=3, impl="pallas", copy_share=0.7,
               forward_backward_s=1.0),
          # Only pallas was timed here: not part of the comparison.
          dict(shape=[64, 28, 28, 192], stride=1, kernel=3, impl="pallas", copy_share=0.9,
               forward_backward_s=5.0),
          dict(shape=[64, 56, 56, 512], stride=1, kernel=5, impl="xla", copy_share=0.5,
               forward_backward_s=1.0)],
      "pointwise": [dict(path="pwconv (dot_general)", matmul_share=0.9),
                    dict(path="pwconv (dot_general)", matmul_share=0.8),
                    dict(path="matmul", matmul_share=0.99)],
      "blocks": [dict(case="seed separable", forward_backward_speedup=3.5),
                 dict(case="seed bottleneck", forward_backward_speedup=9.0)],
      "train": [dict(impl="xla", images_per_s=12_000.0, compile_s=20.0),
                dict(impl="pallas", images_per_s=14_000.0, compile_s=40.0)],
  }
  got = {t["target"].split(",")[0].split(" (")[0]: (t["measured"], t["met"])
         for t in bench_gpu.targets(result)}
  assert got == {
      "depthwise bf16 forward": (0.7, True),  # the headline shape only, best impl
      "pointwise bf16": (0.8, False),  # the worst C of pwconv's path
      "seed separable forward+backward speedup over dense": (3.5, True),
      "MobileNetV2 train step img/s": (14_000.0, True),
      "MobileNetV2 train step compile s": (40.0, False),
  }
  choice = bench_gpu.auto_choice(result["depthwise"])
  assert choice[3]["impl"] == "pallas" and choice[3]["speedup_over_xla"] == pytest.approx(2.0)
  assert choice[3]["shapes"] == 1
  assert choice[5]["impl"] == "xla"


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="--sections must name sections from"):
    bench_gpu.run(quick=True, sections=["cielings"])
  with pytest.raises(ValueError, match="--impl must name implementations from"):
    bench_gpu.run(quick=True, impls=["cudnn"], sections=["ceilings"])


def test_command_line_prints_markdown_and_writes_json(tmp_path):
  out = tmp_path / "gpu.json"
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, "-m", "pwconv.bench", "--suite=gpu", "--quick",
       "--sections=ceilings,pointwise", f"--json={out}"],
      capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "## pointwise" in proc.stdout and "| C | path |" in proc.stdout
  assert "## targets" in proc.stdout
  result = json.loads(out.read_text())
  assert result["backend"] == jax.default_backend()
  rows = result["pointwise"]
  assert {r["channels"] for r in rows} == set(bench_gpu.QUICK.pointwise_channels)
  for r in rows:
    n, h, w, c = r["shape"]
    assert r["flops_per_s"] == pytest.approx(2 * n * h * w * c * c / r["forward_s"])
    assert r["matmul_share"] == pytest.approx(
        r["flops_per_s"] / result["ceilings"]["matmul_flops_per_s"])
  assert [t["target"].split(",")[0] for t in result["targets"]] == ["pointwise bf16"]
