"""pwconv.roofline: the bound per layer against its formula, batch scaling, efficiencies, calibration
and the rank correlation."""

import functools

import jax
import jax.numpy as jnp
import pytest

import pwconv
from pwconv import roofline

PEAKS = roofline.Peaks(flops=1e9, bandwidth=1e8, source="test")


def _profile(module, shape):
  return pwconv.profile(module, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_each_layer_is_bounded_by_the_formula():
  block = pwconv.DepthwiseSeparable(32, norm=None, act=None, use_bias=False)
  p = _profile(block, (1, 16, 16, 32))
  pred = p.predict(PEAKS)
  assert [r.path for r in pred.rows] == [r.path for r in p.rows]
  for row, t in zip(p.rows, pred.rows):
    compute, memory = 2 * row.macs / PEAKS.flops, row.bytes / PEAKS.bandwidth
    assert t.seconds == pytest.approx(max(compute, memory))
    assert t.bound == ("compute" if compute >= memory else "memory")
  assert pred.seconds == pytest.approx(sum(t.seconds for t in pred.rows))
  # The depthwise 3x3 does 9 MACs per element it reads and writes (2.25 FLOP/byte in f32), under
  # these peaks' 10 FLOP/byte: memory-bound.
  bounds = {t.path: t.bound for t in pred.rows}
  assert bounds["depthwise"] == "memory"


def test_batch_scales_activations_not_weights():
  p = _profile(pwconv.PointwiseConv(64), (1, 4, 4, 32))
  (row,) = p.rows
  one, eight = p.predict(PEAKS, batch=1), p.predict(PEAKS, batch=8)
  activations = row.bytes - row.weight_bytes
  assert eight.rows[0].memory_s == pytest.approx((8 * activations + row.weight_bytes) / 1e8)
  assert one.rows[0].memory_s == pytest.approx(row.bytes / 1e8)
  assert eight.rows[0].compute_s == pytest.approx(8 * one.rows[0].compute_s)
  assert eight.per_example_s < one.per_example_s  # weights amortised over the batch


def test_efficiency_divides_its_kind_only():
  block = pwconv.DepthwiseSeparable(16, norm=None, act=None,
                                    depthwise_conv=functools.partial(pwconv.DepthwiseConv,
                                                                     impl="xla"))
  p = _profile(block, (1, 8, 8, 16))
  plain = {t.path: t.seconds for t in p.predict(PEAKS).rows}
  slow = {t.path: t.seconds for t in p.predict(PEAKS, efficiency={"depthwise:xla": 0.1}).rows}
  assert slow["depthwise"] == pytest.approx(10 * plain["depthwise"])
  assert slow["pointwise"] == pytest.approx(plain["pointwise"])


def test_device_by_name_and_errors():
  p = _profile(pwconv.PointwiseConv(8), (1, 4, 4, 8))
  h100 = p.predict("NVIDIA H100 80GB HBM3")
  assert (h100.peaks.flops, h100.peaks.bandwidth) == (494e12, 3.35e12)  # f32 row
  with pytest.raises(ValueError, match="predict: device 'abacus' matches no row"):
    p.predict("abacus")
  with pytest.raises(ValueError, match="predict: batch must be >= 1, got 0"):
    p.predict(PEAKS, batch=0)
  with pytest.raises(ValueError, match=r"predict: efficiency\['dot'\] must be > 0"):
    p.predict(PEAKS, efficiency={"dot": 0.0})


def test_calibrate_measures_the_kinds_asked_for():
  eff = roofline.calibrate(peaks=PEAKS, repeats=1, kinds=["dot", "memory"])
  assert set(eff) == {"dot", "memory"}
  assert all(v > 0 for v in eff.values())


@pytest.mark.parametrize("a, b, rho", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3], [1, 3, 2], 0.5),
    ([1, 1, 2, 3], [1, 2, 3, 4], 0.9486832980505138),  # ties take their average rank
])
def test_spearman(a, b, rho):
  assert roofline.spearman(a, b) == pytest.approx(rho)


def test_spearman_needs_two_equal_lengths():
  with pytest.raises(ValueError, match="spearman: needs two sequences of the same length"):
    roofline.spearman([1, 2], [1])
