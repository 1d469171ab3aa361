"""Realized savings: how much faster each 1x1 design really runs than what it stands in for.

``python -m pwconv.bench`` times, for each case, a candidate (a block, or a fast implementation) and its
baseline (the block's ``dense_equivalent``, or the ``lax`` reference), forward and forward+backward,
compiled, warmed up, median of repeats, in one process. Per case it prints:

- theory x: baseline MACs / candidate MACs (paper convention, :func:`pwconv.profile`);
- roof x: the speedup a pure roofline predicts (:mod:`pwconv.roofline`: per layer
  max(2·MACs / peak FLOP/s, bytes / peak bandwidth), summed; bytes as :func:`pwconv.profile` counts
  them), and pred x: the same with each layer kind's efficiency calibrated on this device first, on
  a calibration set of shapes that no case uses (``--nocalibrate`` skips it);
- fwd x, f+b x: measured speedup, baseline time / candidate time;
- realized: speedup / theory, the share of the theoretical saving that shows up in time (block cases;
  a fast path against the reference computes the same MACs, so its speedup is the whole story);
- GFLOP/s, GB/s: what the candidate's forward achieved (2·MACs, and the bytes it must at least move);
- roofline: the candidate forward's pure roofline time over its measured time (100% is as fast as
  the device allows). Peaks come from a table of known devices; for any other device (every CPU)
  they are measured first with a matmul and a 256 MiB read probe.

At the end: the calibrated efficiencies, and the Spearman rank correlation over the rows of the
measured forward speedup with theory x, roof x and pred x: how well each predicts which design
really saves time. The JSON (``--json``) holds every row with ``theory_ratio``,
``roofline_speedup``, ``predicted_speedup``, ``forward_speedup`` and ``forward_backward_speedup``,
and ``correlations``.

Flags: ``--quick`` (a CPU-sized suite, under 2 minutes on 2 cores), ``--json PATH``, ``--impl a,b``
(rerun the depthwise cases with each implementation), ``--torch`` (when torch is installed, time
PyTorch doing what the bare depthwise and pointwise convs and the dense baseline blocks do:
``conv2d``, plus ``batch_norm`` and ``relu`` for a dense block), ``--dtype``, ``--batch``,
``--repeats``, ``--cases`` (substrings of case names), ``--nocalibrate``. ``--suite gpu`` runs the
accelerator suite of :mod:`pwconv.bench_gpu` instead (``--sections``, ``--impl``, ``--quick``,
``--json`` apply to it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app
from absl import flags

import pwconv
from pwconv import blocks
from pwconv import kernels
from pwconv import roofline
from pwconv import timing
from pwconv import validate
from pwconv.roofline import Peaks, device_peaks

@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: ``candidate`` against ``baseline``, both linen modules applied to ``shape``."""
  name: str
  candidate: nn.Module
  baseline: nn.Module
  shape: tuple[int, ...]
  kind: str  # "block" (vs its dense equivalent) or "impl" (vs the lax reference)


def suite(quick: bool, batch: int | None) -> list[Case]:
  """The cases: the seed example, depthwise and pointwise ops, and each block family."""
  n = (8 if quick else 64) if batch is None else validate.positive_int("bench", "--batch", batch)
  cases = [
      Case("seed bottleneck 5x5 28x28x128->64",
           blocks.Bottleneck(64, 32, (5, 5), expand=False, residual=False),
           blocks.DenseConv(64, (5, 5)), (n, 28, 28, 128), "block"),
      Case("seed separable 5x5 28x28x128->64", blocks.DepthwiseSeparable(64, (5, 5)),
           blocks.DenseConv(64, (5, 5)), (n, 28, 28, 128), "block"),
  ]
  for k in (3, 5):
    cases.append(Case(f"depthwise {k}x{k} 56x56x128", pwconv.DepthwiseConv((k, k)),
                      nn.Conv(128, (k, k), feature_group_count=128, use_bias=False),
                      (n, 56, 56, 128), "impl"))
  for c in ((64, 256) if quick else (64, 256, 1024)):
    cases.append(Case(f"pointwise 1x1 28x28x{c}", pwconv.PointwiseConv(c),
                      nn.Conv(c, (1, 1), use_bias=False), (n, 28, 28, c), "impl"))
  families = [
      ("bottleneck (ResNet) 56x56x256", blocks.Bottleneck(256, 64), (56, 56, 256)),
      ("separable 3x3 28x28x256", blocks.DepthwiseSeparable(256), (28, 28, 256)),
      ("inverted residual t=6 28x28x32", blocks.InvertedResidual(32, 6), (28, 28, 32)),
      ("fire 56x56x96 (fire2)", blocks.FireModule(16, 64, 64), (56, 56, 96)),
      ("inception 3a 28x28x192", blocks.InceptionModule(64, 96, 128, 16, 32, 32), (28, 28, 192)),
      ("shuffle g=3 28x28x240", blocks.ShuffleUnit(240, groups=3), (28, 28, 240)),
      ("mlpconv L=2 28x28x96", blocks.MLPConv(96, pointwise_layers=2), (28, 28, 96)),
  ]
  if quick:
    families = families[1:3]
  for name, block, shape in families:
    cases.append(Case(name, block, block.dense_equivalent(shape[-1]), (n, *shape), "block"))
  cases += fused_mbconv_cases(n, quick)
  # Structural re-parameterization: RepVGG-A0's stage-2 block in deploy form (one 3x3 conv + bias)
  # against its train form (3x3 + BN, 1x1 + BN, identity BN); theory x = 10/9.
  cases.append(Case("repvgg deploy vs train form 28x28x96", blocks.RepVGGBlock(96, deploy=True),
                    blocks.RepVGGBlock(96), (n, 28, 28, 96), "block"))
  return cases


def fused_mbconv_cases(n: int, quick: bool) -> list[Case]:
  """Fused-MBConv (candidate) against MBConv (baseline) at EfficientNetV2-S's fused stages.

  The stride-1 repeats of stages 2 and 3 of EfficientNetV2-S at 224x224 (Tan & Le 2021, Table 4):
  56x56x48 and 28x28x64, expansion 4, 3x3, swish, no SE (the fused stages have none); ``--quick``
  keeps the second. theory x is below 1: fusing the 1x1 expand and the depthwise 3x3 into one dense
  3x3 multiplies the expand's MACs by about 9, which the paper (Table 3) finds pays off in speed
  when only the early stages are fused.
  """
  shapes = ((28, 28, 64),) if quick else ((56, 56, 48), (28, 28, 64))
  return [Case(f"fused-mbconv vs mbconv t=4 3x3 {h}x{w}x{c}",
               blocks.FusedMBConv(c, 4, act=nn.swish), blocks.MBConv(c, 4, act=nn.swish),
               (n, h, w, c), "block") for h, w, c in shapes]


def _uses_depthwise(case: Case) -> bool:
  """Whether the candidate runs a depthwise conv (so each ``--impl`` gets a row)."""
  prof = pwconv.profile(case.candidate, jax.ShapeDtypeStruct(case.shape, jnp.float32))
  return any("depthwise" in row.op for row in prof.rows)


def _with_impl(module: nn.Module, impl: str) -> nn.Module:
  """``module`` with its depthwise convs run by ``impl``."""
  if isinstance(module, pwconv.DepthwiseConv):
    return module.clone(impl=impl)
  return module.clone(depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl=impl))


def _has_field(module: nn.Module, name: str) -> bool:
  return name in {f.name for f in dataclasses.fields(module)}


def _forward(module: nn.Module, variables: Any) -> Callable[[jax.Array], jax.Array]:
  kwargs = {"train": False} if isinstance(module, blocks.Knobs) else {}
  return lambda x: module.apply(variables, x, **kwargs)


def _forward_backward(module: nn.Module, variables: Any) -> Callable[[jax.Array], Any]:
  """Gradients of a scalar loss w.r.t. params and input; BatchNorm in training mode."""
  train = isinstance(module, blocks.Knobs)
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(params, x):
    if train:
      y, _ = module.apply({"params": params, **rest}, x, train=True, mutable=["batch_stats"])
    else:
      y = module.apply({"params": params, **rest}, x)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  return lambda x: jax.grad(loss, argnums=(0, 1))(variables["params"], x)


def measure(case: Case, dtype: Any, repeats: int, peaks: Peaks,
            efficiency: dict[str, float] | None = None) -> dict[str, Any]:
  """Times one case and returns its row (see the module docstring for the columns)."""
  x = jax.random.normal(jax.random.key(0), case.shape, dtype)
  n = case.shape[0]
  row: dict[str, Any] = {"case": case.name, "kind": case.kind, "shape": list(case.shape),
                         "dtype": jnp.dtype(dtype).name}
  for role, module in (("candidate", case.candidate), ("baseline", case.baseline)):
    if _has_field(module, "dtype"):
      module = module.clone(dtype=dtype)
    variables = module.init(jax.random.key(1), x)
    prof = pwconv.profile(module, jax.ShapeDtypeStruct(case.shape, dtype))
    forward = _forward(module, variables)
    fwd = timing.time_fn(forward, x, repeats=repeats)
    fwd_bwd = timing.time_fn(_forward_backward(module, variables), x, repeats=repeats)
    pure = prof.predict(peaks, batch=n)
    row[role] = {"module": type(module).__name__, "macs": prof.macs, "params": prof.params,
                 "bytes": sum((r.bytes - r.weight_bytes) * n + r.weight_bytes for r in prof.rows),
                 "activation_bytes": prof.activation_bytes * n,
                 "forward_s": fwd.median_s, "forward_backward_s": fwd_bwd.median_s,
                 "compile_s": fwd.compile_s + fwd_bwd.compile_s, "roofline_s": pure.seconds,
                 "predicted_s": prof.predict(peaks, batch=n, efficiency=efficiency).seconds}
  cand, base = row["candidate"], row["baseline"]
  theory = base["macs"] / cand["macs"]
  fwd_x = base["forward_s"] / cand["forward_s"]
  fb_x = base["forward_backward_s"] / cand["forward_backward_s"]
  row.update(theory_ratio=theory, forward_speedup=fwd_x, forward_backward_speedup=fb_x,
             forward_realized=fwd_x / theory, forward_backward_realized=fb_x / theory,
             roofline_speedup=base["roofline_s"] / cand["roofline_s"],
             predicted_speedup=base["predicted_s"] / cand["predicted_s"],
             flops_per_s=2 * cand["macs"] * n / cand["forward_s"],
             bytes_per_s=cand["bytes"] / cand["forward_s"],
             roofline_fraction=cand["roofline_s"] / cand["forward_s"])
  return row


def correlations(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
  """Spearman rank correlations, over the rows, of the measured forward speedup with the MAC ratio
  ("theory"), the pure roofline's predicted speedup ("roofline") and the calibrated one
  ("predicted")."""
  if len(rows) < 2:
    return {}
  measured = [r["forward_speedup"] for r in rows]
  return {name: roofline.spearman([r[key] for r in rows], measured)
          for name, key in (("theory", "theory_ratio"), ("roofline", "roofline_speedup"),
                            ("predicted", "predicted_speedup"))}


def _torch_mirror(module: nn.Module, channels: int) -> dict[str, Any] | None:
  """What PyTorch must run to do the same work as ``module``; None when it has no plain mirror."""
  if isinstance(module, pwconv.DepthwiseConv):
    return dict(k=module.kernel_size[0], groups=channels, cout=channels, bias=False, bn=False,
                relu=False)
  if isinstance(module, pwconv.PointwiseConv):
    return dict(k=1, groups=1, cout=module.features, bias=False, bn=False, relu=False)
  if (isinstance(module, blocks.DenseConv) and tuple(module.strides) == (1, 1)
      and tuple(module.dilation) == (1, 1) and module.norm in (None, blocks.batch_norm)
      and module.act in (None, nn.relu) and module.kernel_size[0] == module.kernel_size[1]):
    bn = module.norm is not None
    return dict(k=module.kernel_size[0], groups=1, cout=module.features,
                bias=(not bn) if module.use_bias is None else module.use_bias, bn=bn,
                relu=module.act is not None)
  return None


def _torch_times(mirror: dict[str, Any], shape: Sequence[int], dtype: Any,
                 repeats: int) -> tuple[float, float]:
  """Median seconds of PyTorch's forward and forward+backward of ``mirror`` on an NHWC ``shape``."""
  import torch  # optional: only with --torch
  import torch.nn.functional as F

  device = "cuda" if torch.cuda.is_available() else "cpu"
  tdtype = torch.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else torch.float32
  n, h, w, c = shape
  k, groups, cout = mirror["k"], mirror["groups"], mirror["cout"]
  new = lambda *size: torch.randn(*size, device=device, dtype=tdtype, requires_grad=True)
  x = torch.randn(n, c, h, w, device=device, dtype=tdtype).to(memory_format=torch.channels_last)
  x.requires_grad_(True)
  weight = new(cout, c // groups, k, k)
  bias = new(cout) if mirror["bias"] else None
  scale, shift = (new(cout), new(cout)) if mirror["bn"] else (None, None)
  mean = torch.zeros(cout, device=device, dtype=tdtype)
  var = torch.ones(cout, device=device, dtype=tdtype)
  params = [p for p in (weight, bias, scale, shift) if p is not None]

  def apply(training: bool):
    y = F.conv2d(x, weight, bias, padding=k // 2, groups=groups)
    if mirror["bn"]:
      y = F.batch_norm(y, mean, var, scale, shift, training=training, momentum=0.1, eps=1e-5)
    return F.relu(y) if mirror["relu"] else y

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def timed(fn):  # each call ends with the device idle, as jax.block_until_ready leaves it
    return timing.time_calls(lambda: (fn(), sync())[-1], repeats=repeats).median_s

  with torch.no_grad():
    fwd = timed(lambda: apply(False))
  return fwd, timed(lambda: torch.autograd.grad(apply(True).float().pow(2).sum(), (x, *params)))


def torch_rows(cases: Sequence[Case], dtype: Any, repeats: int) -> list[dict[str, Any]]:
  """PyTorch (channels-last) doing what the bare depthwise, pointwise and dense modules do.

  A dense baseline block (conv -> BatchNorm -> ReLU) is mirrored as ``conv2d`` -> ``batch_norm`` ->
  ``relu``, with running statistics in the forward timing and batch statistics in the
  forward+backward one, as pwconv's rows are timed; blocks with no plain mirror are skipped.
  """
  rows = []
  for case in cases:
    module = case.candidate if case.kind == "impl" else case.baseline
    mirror = _torch_mirror(module, case.shape[-1])
    if mirror is None:
      continue
    fwd, fwd_bwd = _torch_times(mirror, case.shape, dtype, repeats)
    op = (f"conv2d {mirror['k']}x{mirror['k']} groups={mirror['groups']}"
          + (" + batch_norm" if mirror["bn"] else "") + (" + relu" if mirror["relu"] else ""))
    rows.append({"case": case.name, "module": "candidate" if case.kind == "impl" else "baseline",
                 "torch_op": op, "torch_forward_s": fwd, "torch_forward_backward_s": fwd_bwd})
  return rows


def table(rows: Sequence[dict[str, Any]], peaks: Peaks, header: str) -> str:
  """The rows as an aligned text table."""
  cols = ("case", "impl", "theory x", "roof x", "pred x", "fwd x", "realized", "f+b x", "realized",
          "GFLOP/s", "GB/s", "roofline")
  # "realized" is a share of a theoretical saving; the same op in another implementation saves none.
  realized = lambda r, key: f"{100 * r[key]:.0f}%" if r["kind"] == "block" else "-"
  body = [(r["case"], r.get("impl", ""), f"{r['theory_ratio']:.2f}", f"{r['roofline_speedup']:.2f}",
           f"{r['predicted_speedup']:.2f}", f"{r['forward_speedup']:.2f}",
           realized(r, "forward_realized"), f"{r['forward_backward_speedup']:.2f}",
           realized(r, "forward_backward_realized"), f"{r['flops_per_s'] / 1e9:.1f}",
           f"{r['bytes_per_s'] / 1e9:.1f}", f"{100 * r['roofline_fraction']:.1f}%") for r in rows]
  widths = [max(len(str(x)) for x in col) for col in zip(cols, *body)]
  lines = [header, f"peaks ({peaks.source}): {peaks.flops / 1e12:.2f} TFLOP/s, "
           f"{peaks.bandwidth / 1e9:.0f} GB/s"]
  for i, r in enumerate([cols, *body]):
    lines.append("  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                           for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0:
      lines.append("-" * len(lines[-1]))
  return "\n".join(lines)


def run(*, quick: bool = False, impls: Sequence[str] = ("auto",), dtype: str = "float32",
        batch: int | None = None, repeats: int | None = None, cases: Sequence[str] = (),
        with_torch: bool = False, calibrate: bool = True) -> dict[str, Any]:
  """Runs the suite and returns ``{"device", "peaks", "efficiency", "rows", "correlations",
  "torch"}``; what ``main`` prints. ``calibrate`` measures the roofline efficiencies of each layer kind
  first (:func:`pwconv.roofline.calibrate`, on shapes no case uses); without it "pred x" is the pure
  roofline."""
  for impl in impls:
    if impl not in kernels.names():
      raise ValueError(f"bench: --impl must name implementations from {list(kernels.names())}, "
                       f"got {impl!r}")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"bench: --dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  jdtype = jnp.dtype(dtype)
  if repeats is None:
    repeats = 5 if quick else 20
  validate.positive_int("bench", "--repeats", repeats)
  selected = [c for c in suite(quick, batch) if not cases or any(s in c.name for s in cases)]
  if not selected:
    raise ValueError(f"bench: --cases {list(cases)} matches no case")
  peaks = device_peaks(jdtype)
  kinds = None if jax.default_backend() != "cpu" else [k for k in roofline.KINDS
                                                       if k != "depthwise:pallas"]
  efficiency = (roofline.calibrate(jdtype, peaks=peaks, repeats=repeats, kinds=kinds)
                if calibrate else {})
  rows = []
  for case in selected:
    if not _uses_depthwise(case):  # no depthwise conv inside: one row
      rows.append(dict(measure(case, jdtype, repeats, peaks, efficiency), impl="-"))
      continue
    for impl in impls:
      row = measure(dataclasses.replace(case, candidate=_with_impl(case.candidate, impl)), jdtype,
                    repeats, peaks, efficiency)
      rows.append(dict(row, impl=f"{impl}->{kernels.resolve(impl)}"))
  return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "jax": jax.__version__, "peaks": dataclasses.asdict(peaks), "efficiency": efficiency,
          "rows": rows, "correlations": correlations(rows),
          "torch": torch_rows(selected, jdtype, repeats) if with_torch else []}


def _define_flags() -> None:
  """The command line's flags; defined only when this module runs as a program, so that
  :mod:`pwconv.bench_gpu` can import it while it does."""
  flags.DEFINE_bool("quick", False, "A CPU-sized suite (small batch, few cases and repeats).")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")
  flags.DEFINE_list("impl", ["auto"], "Depthwise implementations to compare.")
  flags.DEFINE_bool("torch", False, "Add PyTorch conv2d timings (needs torch installed).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  flags.DEFINE_integer("batch", None, "Batch size (default 8 with --quick, else 64).")
  flags.DEFINE_integer("repeats", None, "Timed calls per measurement (median).")
  flags.DEFINE_list("cases", [], "Only cases whose names contain one of these strings.")
  flags.DEFINE_enum("suite", "default", ["default", "gpu"],
                    "default: the block and fast-path comparisons; gpu: the accelerator suite of "
                    "pwconv.bench_gpu (ceilings, depthwise GB/s per impl, Pallas tiles, pointwise "
                    "share of matmul, seed blocks at N=256, MobileNetV2 train step), in Markdown.")
  flags.DEFINE_list("sections", [], "--suite gpu: only these sections (default all).")
  flags.DEFINE_bool("calibrate", True, "Calibrate the roofline per layer kind first "
                    "(--nocalibrate: 'pred x' is the pure roofline).")


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.suite == "gpu":
    from pwconv import bench_gpu  # it builds on this module
    impls = FLAGS.impl if FLAGS["impl"].present else ("auto", *kernels.names()[1:])
    bench_gpu.run(quick=FLAGS.quick, impls=impls, sections=FLAGS.sections or bench_gpu.SECTIONS,
                  json_path=FLAGS.json, emit=lambda line: print(line, flush=True))
    return
  if FLAGS.torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      raise app.UsageError("--torch needs PyTorch installed (pip install torch); it is never a "
                           "dependency of pwconv") from None
  result = run(quick=FLAGS.quick, impls=FLAGS.impl, dtype=FLAGS.dtype, batch=FLAGS.batch,
               repeats=FLAGS.repeats, cases=FLAGS.cases, with_torch=FLAGS.torch,
               calibrate=FLAGS.calibrate)
  header = (f"pwconv.bench on {result['device']} ({result['backend']}, jax {result['jax']}), "
            f"{FLAGS.dtype}; x = baseline time / candidate time, medians in one process")
  print(table(result["rows"], Peaks(**result["peaks"]), header))
  if result["efficiency"]:
    print("calibrated roofline efficiency per layer kind (roofline time / measured, on shapes no "
          "case uses): " + ", ".join(f"{k} {v:.3f}" for k, v in result["efficiency"].items()))
  if result["correlations"]:
    c = result["correlations"]
    print(f"Spearman rank correlation with the measured fwd x over {len(result['rows'])} rows: "
          f"theory x (MACs) {c['theory']:.2f}, roof x (pure roofline) {c['roofline']:.2f}, "
          f"pred x (calibrated roofline) {c['predicted']:.2f}")
  ours: dict[str, dict[str, Any]] = {}
  for r in result["rows"]:
    ours.setdefault(r["case"], r)  # the first --impl's row
  for r in result["torch"]:
    row = ours[r["case"]]
    mine = row[r["module"]]
    impl = f", impl {row['impl']}" if r["module"] == "candidate" and row["impl"] != "-" else ""
    print(f"torch {r['torch_op']} on {r['case']} ({r['module']}): fwd "
          f"{1e3 * r['torch_forward_s']:.3f} ms vs pwconv {1e3 * mine['forward_s']:.3f} ms{impl}; "
          f"f+b {1e3 * r['torch_forward_backward_s']:.3f} ms vs "
          f"{1e3 * mine['forward_backward_s']:.3f} ms")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2)
  sys.stdout.flush()


if __name__ == "__main__":
  _define_flags()
  app.run(main)
