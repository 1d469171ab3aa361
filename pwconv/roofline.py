"""A roofline time per layer, from a :class:`~pwconv.costs.Profile` and a device's peaks.

Each layer is bounded by its compute or its memory traffic::

    time = max(2·macs / peak_flops, bytes / peak_bandwidth)

summed over the layers of a forward pass (layers run one after another). This is what the device allows,
not what a compiler reaches: XLA:CPU runs grouped convolutions 20-50x below its dense-conv rate, and
fusion removes traffic between layers. :func:`calibrate` measures, on a calibration set of shapes of its
own (none of them a case of ``pwconv.bench``), how far each kind of layer stays from its bound on the
current device: its *efficiency*, roofline time / measured time. A prediction divides each layer's
roofline time by its kind's efficiency; without a calibration every efficiency is 1 (the pure roofline).

Layer kinds (:attr:`~pwconv.costs.LayerCost.kind`): "conv" (dense kxk), "conv1x1" (a 1x1
``conv_general_dilated``, as ``nn.Conv`` runs it), "grouped", "depthwise:<impl>" (the implementation that
runs it: "xla", "shifted", "pallas"), "dot" (``dot_general``: pwconv's pointwise convs and ``nn.Dense``)
and "memory" (no MACs: norms, activations, adds, pools, concatenations).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pwconv import timing
from pwconv import validate

# Peak dense matmul FLOP/s (bf16, f32) and memory bandwidth (bytes/s) per JAX device, from the
# vendors' data sheets (dense, no sparsity). Matched as regular expressions against
# ``jax.devices()[0].device_kind``, most specific first; the first match wins. f32 is the rate f32
# matmuls get at JAX's default precision: TF32 on NVIDIA GPUs since Ampere (the T4 has none), one
# bf16 pass on TPUs. TPU v2 and v3 expose each of a chip's two TensorCores as a device, so their
# rows are per core; v4 and v5p cores pair into one device per chip.
DEVICE_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    (r"\bH200\b", 989e12, 494e12, 4.8e12),
    (r"\bH100\b.*\bPCIe\b", 756e12, 378e12, 2.0e12),
    (r"\bH100\b", 989e12, 494e12, 3.35e12),
    (r"\bA100\b", 312e12, 156e12, 2.0e12),
    (r"\bL40S\b", 362e12, 183e12, 0.864e12),
    (r"\bL40\b", 181e12, 90.5e12, 0.864e12),
    (r"\bL4\b", 121e12, 60e12, 0.3e12),
    (r"\bT4\b", 65e12, 8.1e12, 0.32e12),
    (r"\bTPU v6 ?(lite|e)\b", 918e12, 918e12, 1.64e12),
    (r"\bTPU v5p\b", 459e12, 459e12, 2.76e12),
    (r"\bTPU v5 ?(lite|e)\b", 197e12, 197e12, 0.82e12),
    (r"\bTPU v4\b", 275e12, 275e12, 1.2e12),
    (r"\bTPU v3\b", 61.5e12, 61.5e12, 0.45e12),
    (r"\bTPU v2\b", 22.5e12, 22.5e12, 0.3e12),
)

KINDS = ("conv", "conv1x1", "grouped", "depthwise:xla", "depthwise:shifted", "depthwise:pallas",
         "dot", "memory")


@dataclasses.dataclass(frozen=True)
class Peaks:
  """A device's compute and bandwidth ceilings and where they came from ("table" or "probe")."""
  flops: float
  bandwidth: float
  source: str


def table_peaks(device_kind: str, dtype: Any) -> Peaks | None:
  """The :data:`DEVICE_PEAKS` row of ``device_kind`` (e.g. "NVIDIA H100 80GB HBM3"), or None."""
  for pattern, bf16, f32, bandwidth in DEVICE_PEAKS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      return Peaks(bf16 if jnp.dtype(dtype) == jnp.bfloat16 else f32, bandwidth, "table")
  return None


def device_peaks(dtype: Any, probe_size: int = 2048) -> Peaks:
  """The current device's peaks: from :data:`DEVICE_PEAKS`, else measured by a matmul and a read."""
  peaks = table_peaks(jax.devices()[0].device_kind, dtype)
  if peaks is not None:
    return peaks
  a = jnp.ones((probe_size, probe_size), dtype)
  matmul = timing.time_fn(lambda a: a @ a, a, repeats=10)
  # Bandwidth: reading 256 MiB (a sum). A copy would measure the page faults of its fresh output
  # buffer on CPU (5-7 GB/s here, where reads reach 35-45 GB/s).
  big = jnp.ones((256 * 2**20 // jnp.dtype(dtype).itemsize,), dtype)
  read = timing.time_fn(jnp.sum, big, repeats=10)
  # The fastest call is the best estimate of a ceiling.
  return Peaks(2 * probe_size**3 / matmul.min_s, big.nbytes / read.min_s, "probe")


@dataclasses.dataclass(frozen=True)
class LayerTime:
  """One layer's predicted forward time for a whole batch.

  Attributes:
    path, op, kind: as the profile's row.
    compute_s: 2·macs·batch / peak FLOP/s.
    memory_s: bytes moved for the batch / peak bandwidth.
    bound: "compute" or "memory", whichever is larger.
    efficiency: the kind's calibrated efficiency (1 without calibration).
    seconds: max(compute_s, memory_s) / efficiency.
  """
  path: str
  op: str
  kind: str
  compute_s: float
  memory_s: float
  bound: str
  efficiency: float
  seconds: float


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A forward pass's predicted time on one device.

  Attributes:
    name: the profiled model.
    batch: the batch the times are for.
    peaks: the device's peaks used.
    rows: one :class:`LayerTime` per layer.
    seconds: the whole forward pass on ``batch`` examples (the sum of the rows).
    calibrated: whether the efficiencies came from :func:`calibrate`.
  """
  name: str
  batch: int
  peaks: Peaks
  rows: tuple[LayerTime, ...]
  seconds: float
  calibrated: bool

  @property
  def per_example_s(self) -> float:
    return self.seconds / self.batch

  def table(self) -> str:
    lines = [f"{self.name}: predicted forward {1e3 * self.seconds:.3f} ms for a batch of {self.batch} "
             f"({'calibrated' if self.calibrated else 'pure roofline'}; peaks ({self.peaks.source}) "
             f"{self.peaks.flops / 1e12:.2f} TFLOP/s, {self.peaks.bandwidth / 1e9:.0f} GB/s)"]
    width = max([len(r.path or "(root)") for r in self.rows] + [5])
    lines.append(f"{'layer'.ljust(width)}  {'kind':<17} {'bound':<7} {'eff':>5} {'ms':>9} {'share':>6}")
    for r in self.rows:
      share = f"{100 * r.seconds / self.seconds:.1f}%" if self.seconds else "-"
      lines.append(f"{(r.path or '(root)').ljust(width)}  {r.kind:<17} {r.bound:<7} "
                   f"{r.efficiency:5.2f} {1e3 * r.seconds:9.4f} {share:>6}")
    return "\n".join(lines)


def predict(profile: Any, device: Peaks | str | None = None, *, batch: int | None = None,
            efficiency: Mapping[str, float] | None = None) -> Prediction:
  """Each layer's roofline time and the forward pass's total, for ``batch`` examples.

  Args:
    profile: a :class:`~pwconv.costs.Profile`.
    device: a :class:`Peaks`; a device kind matched against :data:`DEVICE_PEAKS` ("H100", "TPU v4");
      or None for the current device (its table row, else measured by :func:`device_peaks`).
    batch: examples per forward pass (default: the profiled batch). Activations scale with it;
      weights are read once per pass.
    efficiency: per layer kind, the fraction of its roofline the device reaches (from
      :func:`calibrate`); kinds it lacks count as 1.

  Returns:
    A :class:`Prediction`.
  """
  owner = "predict"
  if batch is None:
    batch = int(profile.input_shape[0])
  batch = validate.positive_int(owner, "batch", batch)
  if device is None:
    peaks = device_peaks(profile.dtype)
  elif isinstance(device, Peaks):
    peaks = device
  elif isinstance(device, str):
    peaks = table_peaks(device, profile.dtype)
    if peaks is None:
      raise ValueError(f"{owner}: device {device!r} matches no row of pwconv.roofline.DEVICE_PEAKS; "
                       "pass a Peaks(flops, bandwidth, source) instead")
  else:
    raise TypeError(f"{owner}: device must be None, a Peaks or a device kind string, got "
                    f"{type(device).__name__}")
  efficiency = dict(efficiency or {})
  for kind, value in efficiency.items():
    validate.number(owner, f"efficiency[{kind!r}]", value, low=0, low_open=True)
  rows = []
  for row in profile.rows:
    compute = 2 * row.macs * batch / peaks.flops
    memory = ((row.bytes - row.weight_bytes) * batch + row.weight_bytes) / peaks.bandwidth
    eff = efficiency.get(row.kind, 1.0)
    rows.append(LayerTime(row.path, row.op, row.kind, compute, memory,
                          "compute" if compute >= memory else "memory", eff,
                          max(compute, memory) / eff))
  return Prediction(profile.name, batch, peaks, tuple(rows), sum(r.seconds for r in rows),
                    bool(efficiency))


def _calibration_set(dtype: Any) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
  """(kind, module, input shape): one layer of each kind, at shapes no bench case uses."""
  from pwconv.layers import DepthwiseConv, PointwiseConv
  cases = []
  for shape in ((4, 20, 20, 48), (2, 36, 36, 24)):
    c = shape[-1]
    cases += [
        ("conv", nn.Conv(c, (3, 3), use_bias=False, dtype=dtype), shape),
        ("conv1x1", nn.Conv(2 * c, (1, 1), use_bias=False, dtype=dtype), shape),
        ("grouped", nn.Conv(c, (3, 3), feature_group_count=4, use_bias=False, dtype=dtype), shape),
        ("depthwise:xla", nn.Conv(c, (3, 3), feature_group_count=c, use_bias=False, dtype=dtype),
         shape),
        ("depthwise:shifted", DepthwiseConv((3, 3), impl="shifted", dtype=dtype), shape),
        ("dot", PointwiseConv(2 * c, dtype=dtype), shape),
        ("memory", _Elementwise(dtype=dtype), shape),
    ]
  return cases


class _Elementwise(nn.Module):
  """BatchNorm (running statistics) -> ReLU -> + input: the memory-bound tail of a block."""
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(nn.BatchNorm(use_running_average=True, dtype=self.dtype)(x)) + x


def calibrate(dtype: Any = jnp.float32, *, peaks: Peaks | None = None, repeats: int = 5,
              kinds: Sequence[str] | None = None) -> dict[str, float]:
  """Per layer kind, roofline time / measured forward time on this device (geometric mean over the
  calibration set's shapes).

  The calibration set (one lone layer per kind at shapes that no ``pwconv.bench`` case uses) is
  separate from what the predictions are checked against. "depthwise:pallas" is calibrated only off
  CPU (Pallas is interpreted there); kinds not calibrated predict at efficiency 1.
  """
  from pwconv.costs import profile as profile_fn
  repeats = validate.positive_int("calibrate", "repeats", repeats)
  peaks = peaks or device_peaks(dtype)
  found: dict[str, list[float]] = {}
  for kind, module, shape in _calibration_set(dtype):
    if kinds is not None and kind not in kinds:
      continue
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    variables = module.init(jax.random.key(1), x)
    measured = timing.time_fn(lambda x: module.apply(variables, x), x, repeats=repeats).median_s
    bound = predict(profile_fn(module, jax.ShapeDtypeStruct(shape, dtype)), peaks).seconds
    found.setdefault(kind, []).append(bound / measured)
  return {kind: float(np.exp(np.mean(np.log(values)))) for kind, values in found.items()}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman's rank correlation of two equally long sequences (ties get their average rank)."""
  if len(a) != len(b) or len(a) < 2:
    raise ValueError(f"spearman: needs two sequences of the same length >= 2, got {len(a)} and "
                     f"{len(b)}")
  ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
  return float((ra * rb).sum() / denominator) if denominator else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
  order = np.argsort(values, kind="stable")
  ranks = np.empty(len(values))
  ranks[order] = np.arange(1, len(values) + 1)
  for value in np.unique(values):
    tied = values == value
    ranks[tied] = ranks[tied].mean()
  return ranks

