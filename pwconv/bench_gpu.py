"""The accelerator suite of ``python -m pwconv.bench --suite gpu``: what a GPU really gives each path.

One run measures, in one process, with the device's own ceilings measured first:

1. **ceilings**: the copy bandwidth (``x * 2`` over a 1 GiB bf16 array: one read and one write) and
   the matmul rate (bf16 8192³), the denominators of every share below;
2. **depthwise**: 3x3 and 5x5 at (64, 56, 56, 512), and every distinct depthwise layer of
   :func:`pwconv.models.mobilenet_v2` at 224² (batch 64), forward and forward+backward, for each
   implementation: GB/s (one read of x, one write of y, the weights) and its share of the copy
   bandwidth; which one ``impl="auto"`` runs is marked;
3. **tiles**: the Pallas Triton kernel's forward at (64, 56, 56, 512) 3x3 for a sweep of
   (block_h, block_w, block_c, num_warps), against its defaults;
4. **pointwise**: a 1x1 conv on (64, 28, 28, C) for C = 256, 512, 1024 as pwconv runs it
   (``dot_general``), as ``nn.Conv`` runs it, and as a plain (N·H·W, C) @ (C, C) matmul, in TFLOP/s
   and share of the measured matmul rate;
5. **blocks**: the seed separable and bottleneck blocks against their dense 5x5 at N=256, forward
   and forward+backward (:func:`pwconv.bench.run`), the separable one for each implementation;
6. **train step**: a whole :func:`pwconv.models.mobilenet_v2` train step (SGD with momentum,
   cross-entropy, BatchNorm in training mode) at B=256, 224², bf16 compute, in images/s with its
   compile time, for each depthwise implementation.

Then the issue's targets, met or missed with the measured figure, and the fastest implementation
per depthwise kernel size: what ``impl="auto"`` should run on this backend.

Everything is printed as Markdown tables, section by section as it is measured, and (``--json``)
rewritten after every section, so a run cut short keeps what it measured. ``--quick`` shrinks every
shape (batch 2, 32² maps, 16-64 channels) so that the whole suite runs on a CPU in about a minute,
the Pallas kernel in interpret mode: that is how the suite itself is tested.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pwconv
from pwconv import bench
from pwconv import kernels
from pwconv import models
from pwconv import timing
from pwconv.kernels import pallas_depthwise

SECTIONS = ("ceilings", "depthwise", "tiles", "pointwise", "blocks", "train")

# The targets (H100/H200, bf16). Plain Flax's MobileNetV2 train step measured 11,157 img/s
# on an H200; the target is 1.2x that.
TARGETS = {"depthwise_copy_share": 0.60, "pointwise_matmul_share": 0.85,
           "separable_fwd_bwd_speedup": 3.0, "train_images_per_s": 13_400.0,
           "train_compile_s": 30.0}

# (block_h, block_w, block_c, num_warps) for the Pallas Triton kernel; the first is its default.
TILES = ((pallas_depthwise.BLOCK_H, pallas_depthwise.BLOCK_W, pallas_depthwise.BLOCK_C,
          pallas_depthwise.NUM_WARPS),
         (4, 16, 64, 4), (8, 8, 128, 8), (16, 16, 32, 8), (8, 32, 32, 8), (4, 8, 128, 4),
         (8, 16, 128, 8), (2, 16, 64, 4), (4, 32, 64, 8), (1, 16, 128, 4))


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The shapes of one run: the issue's (full) or a CPU-sized copy (quick)."""
  depthwise_batch: int
  depthwise_shape: tuple[int, int, int]  # (H, W, C) of the headline depthwise rows
  resolution: int  # MobileNetV2 input side
  pointwise_shape: tuple[int, int, int]  # (N, H, W)
  pointwise_channels: tuple[int, ...]
  block_batch: int
  train_batch: int
  copy_bytes: int
  matmul_size: int
  repeats: int
  tiles: tuple[tuple[int, int, int, int], ...]
  depthwise_layers: int = 1000  # at most this many depthwise rows' shapes
  train_model: tuple[tuple[str, Any], ...] = ()  # keywords of mobilenet_v2 in the train step


FULL = Sizes(depthwise_batch=64, depthwise_shape=(56, 56, 512), resolution=224,
             pointwise_shape=(64, 28, 28), pointwise_channels=(256, 512, 1024), block_batch=256,
             train_batch=256, copy_bytes=2**30, matmul_size=8192, repeats=20, tiles=TILES)
QUICK = Sizes(depthwise_batch=2, depthwise_shape=(16, 16, 64), resolution=64,
              pointwise_shape=(2, 8, 8), pointwise_channels=(16, 32), block_batch=2,
              train_batch=4, copy_bytes=2**22, matmul_size=256, repeats=2, tiles=TILES[:2],
              depthwise_layers=2,
              train_model=(("width_multiplier", 0.25), ("depth_multiplier", 0.1)))


def depthwise_layers(resolution: int) -> list[tuple[tuple[int, int, int], int, int]]:
  """The distinct depthwise layers of MobileNetV2 at ``resolution``²: ((H, W, C), kernel, stride),
  read off :func:`pwconv.profile` (so they follow the model, not a copy of its table)."""
  prof = pwconv.profile(models.mobilenet_v2(),
                        jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32))
  layers = []
  for row in prof.rows:
    if not row.kind.startswith("depthwise"):
      continue
    k = int(re.search(r"(\d+)x\d+", row.op).group(1))
    layer = (tuple(row.in_shape), k, row.in_shape[0] // row.out_shape[0])
    if layer not in layers:
      layers.append(layer)
  return layers


def _ceilings(sizes: Sizes) -> dict[str, float]:
  """Measured copy bandwidth (bytes/s, read + write) and bf16 matmul rate (FLOP/s)."""
  x = jnp.ones((sizes.copy_bytes // 2,), jnp.bfloat16)
  copy = timing.time_fn(lambda x: x * 2, x, repeats=sizes.repeats)
  m = sizes.matmul_size
  a = jnp.ones((m, m), jnp.bfloat16)
  matmul = timing.time_fn(lambda a: a @ a, a, repeats=sizes.repeats)
  return {"copy_bytes_per_s": 2 * x.nbytes / copy.min_s,
          "matmul_flops_per_s": 2 * m**3 / matmul.min_s}


def _depthwise_fns(impl: str, k: int, stride: int) -> tuple[Callable, Callable]:
  """(forward, forward+backward) of one depthwise conv by ``impl``, symmetric padding."""
  conv = lambda x, w: pwconv.ops.depthwise_conv(x, w, strides=stride, padding=k // 2, impl=impl)
  loss = lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2)
  return conv, jax.grad(loss, argnums=(0, 1))


def _impls(requested: Sequence[str]) -> list[str]:
  """The concrete implementations to time (``auto`` is marked on the one it resolves to)."""
  return list(dict.fromkeys(kernels.resolve(i) for i in requested))


def depthwise_rows(sizes: Sizes, impls: Sequence[str], ceilings: dict[str, float]) -> list[dict]:
  h, w, c = sizes.depthwise_shape
  layers = [((h, w, c), 3, 1), ((h, w, c), 5, 1)]
  layers += [layer for layer in depthwise_layers(sizes.resolution) if layer not in layers]
  layers = layers[:sizes.depthwise_layers]
  rows = []
  for (h, w, c), k, stride in layers:
    x = jax.random.normal(jax.random.key(0), (sizes.depthwise_batch, h, w, c), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (k, k, 1, c), jnp.bfloat16)
    for impl in impls:
      fwd_fn, grad_fn = _depthwise_fns(impl, k, stride)
      fwd = timing.time_fn(fwd_fn, x, kernel, repeats=sizes.repeats)
      fb = timing.time_fn(grad_fn, x, kernel, repeats=sizes.repeats)
      out = jax.eval_shape(fwd_fn, x, kernel)
      moved = x.nbytes + kernel.nbytes + out.size * out.dtype.itemsize
      rows.append({"shape": [sizes.depthwise_batch, h, w, c], "kernel": k, "stride": stride,
                   "impl": impl, "auto": impl == kernels.resolve("auto", taps=k * k),
                   "forward_s": fwd.median_s, "forward_backward_s": fb.median_s,
                   "compile_s": fwd.compile_s + fb.compile_s, "bytes": moved,
                   "bytes_per_s": moved / fwd.median_s,
                   "copy_share": moved / fwd.median_s / ceilings["copy_bytes_per_s"]})
  return rows


def tile_rows(sizes: Sizes, ceilings: dict[str, float]) -> list[dict]:
  """The Pallas Triton kernel's forward for each tile; interpreted off a GPU."""
  h, w, c = sizes.depthwise_shape
  x = jax.random.normal(jax.random.key(0), (sizes.depthwise_batch, h, w, c), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, c), jnp.bfloat16)
  interpret = jax.default_backend() != "gpu"
  reference = kernels.get("xla")(x, kernel, (1, 1), ((1, 1), (1, 1)), (1, 1))
  rows = []
  for bh, bw, bc, warps in sizes.tiles:
    fn = functools.partial(pallas_depthwise.gpu_depthwise, strides=(1, 1),
                           padding=((1, 1), (1, 1)), dilation=(1, 1), interpret=interpret,
                           tile=(bh, bw, bc), num_warps=warps)
    fwd = timing.time_fn(fn, x, kernel, repeats=sizes.repeats)
    error = float(jnp.max(jnp.abs(fn(x, kernel).astype(jnp.float32)
                                  - reference.astype(jnp.float32))))
    moved = 2 * x.nbytes + kernel.nbytes
    rows.append({"tile": [bh, bw, bc], "num_warps": warps, "forward_s": fwd.median_s,
                 "compile_s": fwd.compile_s, "bytes_per_s": moved / fwd.median_s,
                 "copy_share": moved / fwd.median_s / ceilings["copy_bytes_per_s"],
                 "max_abs_error_vs_xla": error})
  return rows


def pointwise_rows(sizes: Sizes, ceilings: dict[str, float]) -> list[dict]:
  n, h, w = sizes.pointwise_shape
  rows = []
  for c in sizes.pointwise_channels:
    x = jax.random.normal(jax.random.key(0), (n, h, w, c), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (c, c), jnp.bfloat16)
    paths = {
        "pwconv (dot_general)": lambda x, k: pwconv.ops.pointwise_conv(x, k),
        "nn.Conv 1x1 (conv_general_dilated)": lambda x, k: jax.lax.conv_general_dilated(
            x, k[None, None], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")),
        "matmul (N·H·W, C) @ (C, C)": lambda x, k: (x.reshape(-1, c) @ k).reshape(x.shape),
    }
    for name, fn in paths.items():
      fwd = timing.time_fn(fn, x, kernel, repeats=sizes.repeats)
      flops = 2 * n * h * w * c * c
      rows.append({"channels": c, "shape": [n, h, w, c], "path": name, "forward_s": fwd.median_s,
                   "flops_per_s": flops / fwd.median_s,
                   "matmul_share": flops / fwd.median_s / ceilings["matmul_flops_per_s"]})
  return rows


def block_rows(sizes: Sizes, impls: Sequence[str]) -> list[dict]:
  """The seed cases of :func:`pwconv.bench.run` in bf16 at ``sizes.block_batch``: one row for the
  bottleneck, one per implementation for the separable block (it runs a depthwise conv)."""
  rows = bench.run(impls=impls, dtype="bfloat16", batch=sizes.block_batch, repeats=sizes.repeats,
                   cases=["seed"], calibrate=False)["rows"]
  return [{"case": r["case"], "impl": r["impl"], "shape": r["shape"],
           "theory_ratio": r["theory_ratio"], "forward_speedup": r["forward_speedup"],
           "forward_backward_speedup": r["forward_backward_speedup"],
           "candidate_forward_backward_s": r["candidate"]["forward_backward_s"],
           "baseline_forward_backward_s": r["baseline"]["forward_backward_s"]} for r in rows]


def train_step_rate(impl: str, batch: int, resolution: int, repeats: int,
                    **model_kwargs: Any) -> dict[str, Any]:
  """Images/s of a MobileNetV2 train step (bf16 compute, f32 params) with depthwise ``impl``;
  ``model_kwargs`` go to :func:`pwconv.models.mobilenet_v2` (the quick suite shrinks it)."""
  model = models.mobilenet_v2(dtype=jnp.bfloat16, **model_kwargs,
                              depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl=impl))
  x = jax.random.normal(jax.random.key(0), (batch, resolution, resolution, 3), jnp.bfloat16)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(2), x)
  tx = optax.sgd(0.01, momentum=0.9)  # the rate only keeps the loss finite
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]),
           jax.random.key(3))

  def step(state, x, labels):
    params, stats, opt, rng = state
    rng, dropout = jax.random.split(rng)

    def loss_fn(params):
      logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": dropout})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      return loss.mean(), new["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt, rng), loss

  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, x, labels).compile()
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state, loss = compiled(state, x, labels)
  jax.block_until_ready(state)
  chains = []
  for _ in range(3):  # the median of 3 chains of `repeats` steps, blocked once at the end
    start = time.perf_counter()
    for _ in range(repeats):
      state, loss = compiled(state, x, labels)
    jax.block_until_ready(state)
    chains.append((time.perf_counter() - start) / repeats)
  step_s = float(np.median(chains))
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"bench --suite gpu: the MobileNetV2 train step with impl={impl!r} "
                             f"gave a non-finite loss {float(loss)}")
  return {"impl": impl, "batch": batch, "resolution": resolution, "step_s": step_s,
          "images_per_s": batch / step_s, "compile_s": compile_s}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Each issue target with its measured figure (the best of what was measured)."""
  out = []

  def add(name, measured, target, higher=True):
    if measured is not None:
      out.append({"target": name, "measured": measured, "goal": target,
                  "met": measured >= target if higher else measured <= target})

  head = [r for r in result.get("depthwise", []) if r["shape"][1:] == list(result["sizes"]
                                                                            ["depthwise_shape"])]
  add("depthwise bf16 forward, share of copy bandwidth (best impl, headline shape)",
      max((r["copy_share"] for r in head), default=None), TARGETS["depthwise_copy_share"])
  pw = [r for r in result.get("pointwise", []) if r["path"].startswith("pwconv")]
  add("pointwise bf16, share of matmul rate (worst C)",
      min((r["matmul_share"] for r in pw), default=None), TARGETS["pointwise_matmul_share"])
  sep = [r for r in result.get("blocks", []) if "separable" in r["case"]]
  add("seed separable forward+backward speedup over dense (best impl)",
      max((r["forward_backward_speedup"] for r in sep), default=None),
      TARGETS["separable_fwd_bwd_speedup"])
  train = result.get("train", [])
  best = max(train, key=lambda r: r["images_per_s"], default=None)
  if best is not None:
    add(f"MobileNetV2 train step img/s (best impl: {best['impl']})", best["images_per_s"],
        TARGETS["train_images_per_s"])
    add(f"MobileNetV2 train step compile s ({best['impl']})", best["compile_s"],
        TARGETS["train_compile_s"], higher=False)
  return out


def auto_choice(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
  """Per kernel size: the implementation with the lowest summed forward+backward time over the
  depthwise shapes that every implementation was timed on, and that total against XLA's (what
  ``impl="auto"`` should run on this backend)."""
  choice = {}
  for k in sorted({r["kernel"] for r in rows}):
    mine = [r for r in rows if r["kernel"] == k]
    impls = {r["impl"] for r in mine}
    key = lambda r: (tuple(r["shape"]), r["stride"])
    shared = {key(r) for r in mine if {q["impl"] for q in mine if key(q) == key(r)} == impls}
    totals: dict[str, float] = {}
    for r in mine:
      if key(r) in shared:
        totals[r["impl"]] = totals.get(r["impl"], 0.0) + r["forward_backward_s"]
    best = min(totals, key=totals.get)
    choice[k] = {"impl": best, "total_s": totals, "shapes": len(shared),
                 "speedup_over_xla": totals.get("xla", float("nan")) / totals[best]}
  return choice


def _gbs(bytes_per_s: float) -> str:
  return f"{bytes_per_s / 1e9:.0f}" if bytes_per_s >= 1e10 else f"{bytes_per_s / 1e9:.2f}"


def _md(cols: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
  return "\n".join(lines)


def render(section: str, result: dict[str, Any]) -> str:
  """One section of the result as Markdown."""
  rows = result[section]
  ms = lambda s: f"{1e3 * s:.3f}"
  if section == "ceilings":
    return (f"copy bandwidth {rows['copy_bytes_per_s'] / 1e9:.0f} GB/s, bf16 matmul "
            f"{rows['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s (measured)")
  if section == "depthwise":
    return _md(("shape", "k", "stride", "impl", "fwd ms", "f+b ms", "GB/s", "of copy",
                "compile s"),
               [("x".join(map(str, r["shape"])), r["kernel"], r["stride"],
                 r["impl"] + (" (auto)" if r["auto"] else ""), ms(r["forward_s"]),
                 ms(r["forward_backward_s"]), _gbs(r["bytes_per_s"]),
                 f"{100 * r['copy_share']:.0f}%", f"{r['compile_s']:.1f}") for r in rows])
  if section == "tiles":
    return _md(("tile (h, w, c)", "warps", "fwd ms", "GB/s", "of copy", "max |err| vs xla"),
               [(tuple(r["tile"]), r["num_warps"], ms(r["forward_s"]),
                 _gbs(r["bytes_per_s"]), f"{100 * r['copy_share']:.0f}%",
                 f"{r['max_abs_error_vs_xla']:.2g}") for r in rows])
  if section == "pointwise":
    return _md(("C", "path", "fwd ms", "TFLOP/s", "of matmul"),
               [(r["channels"], r["path"], ms(r["forward_s"]), f"{r['flops_per_s'] / 1e12:.1f}",
                 f"{100 * r['matmul_share']:.0f}%") for r in rows])
  if section == "blocks":
    return _md(("case", "impl", "shape", "theory x", "fwd x", "f+b x"),
               [(r["case"], r["impl"], "x".join(map(str, r["shape"])), f"{r['theory_ratio']:.2f}",
                 f"{r['forward_speedup']:.2f}", f"{r['forward_backward_speedup']:.2f}")
                for r in rows])
  if section == "train":
    return _md(("impl", "batch", "resolution", "step ms", "img/s", "compile s"),
               [(r["impl"], r["batch"], r["resolution"], ms(r["step_s"]),
                 f"{r['images_per_s']:,.0f}", f"{r['compile_s']:.1f}") for r in rows])
  raise ValueError(f"render: unknown section {section!r}")


def run(*, quick: bool = False, impls: Sequence[str] = ("auto", "xla", "shifted", "pallas"),
        sections: Sequence[str] = SECTIONS, json_path: str = "",
        emit: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the sections in order, emitting each as Markdown when measured; returns the result."""
  for name in sections:
    if name not in SECTIONS:
      raise ValueError(f"bench: --sections must name sections from {list(SECTIONS)}, got {name!r}")
  for impl in impls:
    if impl not in kernels.names():
      raise ValueError(f"bench: --impl must name implementations from {list(kernels.names())}, "
                       f"got {impl!r}")
  sizes = QUICK if quick else FULL
  concrete = _impls(impls)
  device = jax.devices()[0]
  result: dict[str, Any] = {"device": device.device_kind, "backend": jax.default_backend(),
                            "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
                            "sizes": dataclasses.asdict(sizes), "impls": concrete,
                            "auto": {k: kernels.resolve("auto", taps=k * k) for k in (3, 5)}}
  emit(f"# pwconv.bench --suite gpu on {result['device']} ({result['backend']}, jax "
       f"{result['jax']}), {result['date']}; bf16; medians in one process")
  result["ceilings"] = _ceilings(sizes)  # every share needs them
  emit(render("ceilings", result))
  measure = {"depthwise": lambda: depthwise_rows(sizes, concrete, result["ceilings"]),
             "tiles": lambda: tile_rows(sizes, result["ceilings"]),
             "pointwise": lambda: pointwise_rows(sizes, result["ceilings"]),
             "blocks": lambda: block_rows(sizes, concrete),
             "train": lambda: [train_step_rate(i, sizes.train_batch, sizes.resolution,
                                               sizes.repeats, **dict(sizes.train_model))
                               for i in concrete]}
  for name in sections:
    if name == "ceilings":
      continue
    start = time.perf_counter()
    result[name] = measure[name]()
    emit(f"\n## {name} ({time.perf_counter() - start:.0f} s)\n\n{render(name, result)}")
    if json_path:
      _write(json_path, result)
  result["targets"] = targets(result)
  if result.get("depthwise"):
    result["auto_choice"] = auto_choice(result["depthwise"])
  emit("\n## targets\n\n" + _md(("target", "measured", "goal", "met"),
                                [(t["target"], f"{t['measured']:.3g}", t["goal"],
                                  "yes" if t["met"] else "MISSED") for t in result["targets"]]))
  for k, c in result.get("auto_choice", {}).items():
    emit(f"fastest {k}x{k} depthwise here (summed forward+backward over {c['shapes']} shapes): "
         f"{c['impl']}, {c['speedup_over_xla']:.2f}x XLA; auto runs "
         f"{kernels.resolve('auto', taps=k * k)}")
  if json_path:
    _write(json_path, result)
  return result


def _write(path: str, result: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(result, f, indent=2, default=str)
