"""The padding knob: every classic block under "SAME" and "symmetric" against the same block
written out with explicit ``lax`` padding (pads computed by hand), and how :func:`pwconv.profile`
counts each."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import pwconv
from pwconv import ops

HIGHEST = lax.Precision.HIGHEST
KNOBS = {"norm": None, "use_bias": False}


def pads(convention, size, k, stride):
  """(before, after) padding of one axis of ``size`` for a k-window at ``stride``, by hand.

  SAME: out = ceil(size / stride) and the total padding that needs, the odd one at the end (bottom
  or right). symmetric: (k - 1) // 2 on both sides, whatever the size and stride (PyTorch).
  """
  if convention == "symmetric":
    return ((k - 1) // 2, (k - 1) // 2)
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return (total // 2, total - total // 2)


def _window_pads(convention, x, k, stride):
  return [pads(convention, x.shape[1], k, stride), pads(convention, x.shape[2], k, stride)]


def conv(x, kernel, convention, stride=1, groups=1):
  """kxk conv of an HWIO kernel (depthwise when groups = C) with the convention's explicit pads."""
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  _window_pads(convention, x, kernel.shape[0], stride),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups, precision=HIGHEST)


def pointwise(x, kernel, groups=1, stride=1):
  """1x1 conv of a (Cin/g, Cout) kernel: no padding under either convention."""
  return lax.conv_general_dilated(x, kernel[None, None], (stride, stride), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups, precision=HIGHEST)


def depthwise(x, kernel, convention, stride=1):
  return conv(x, kernel, convention, stride, groups=x.shape[-1])


def max_pool(x, k, stride, convention):
  window_pads = [(0, 0), *_window_pads(convention, x, k, stride), (0, 0)]
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, stride, stride, 1), window_pads)


def avg_pool(x, k, stride, convention):
  """Average over the real inputs of each window (padding not counted, as ShuffleNet's pool)."""
  window_pads = [(0, 0), *_window_pads(convention, x, k, stride), (0, 0)]
  window = ((1, k, k, 1), (1, stride, stride, 1), window_pads)
  total = lax.reduce_window(x, 0.0, lax.add, *window)
  count = lax.reduce_window(jnp.ones_like(x[..., :1]), 0.0, lax.add, *window)
  return total / count


relu = jax.nn.relu


def dense_ref(p, x, c, s, block):
  del block
  return relu(conv(x, p["conv"]["kernel"], c, s))


def bottleneck_ref(p, x, c, s, block):
  y = relu(pointwise(x, p["reduce"]["kernel"]))
  y = relu(conv(y, p["conv"]["kernel"], c, s))
  y = pointwise(y, p["expand"]["kernel"])
  shortcut = pointwise(x, p["shortcut"]["kernel"], stride=s) if "shortcut" in p else x
  return relu(y + shortcut)


def separable_ref(p, x, c, s, block):
  del block
  return relu(pointwise(relu(depthwise(x, p["depthwise"]["kernel"], c, s)),
                        p["pointwise"]["kernel"]))


def inverted_residual_ref(p, x, c, s, block):
  y = relu(pointwise(x, p["expand"]["kernel"]))
  y = relu(depthwise(y, p["depthwise"]["kernel"], c, s))
  y = pointwise(y, p["project"]["kernel"])
  return y + x if s == 1 and x.shape[-1] == block.features else y


def shuffle_ref(p, x, c, s, block):
  g = block.groups
  y = relu(pointwise(x, p["reduce"]["kernel"], groups=g))
  y = depthwise(ops.channel_shuffle(y, g), p["depthwise"]["kernel"], c, s)
  y = pointwise(y, p["expand"]["kernel"], groups=g)
  if s == 2:
    return relu(jnp.concatenate([y, avg_pool(x, 3, 2, c)], axis=-1))
  return relu(y + x)


def mlpconv_ref(p, x, c, s, block):
  y = relu(conv(x, p["conv"]["kernel"], c, s))
  for i in range(block.pointwise_layers):
    y = relu(pointwise(y, p[f"pointwise{i}"]["kernel"]))
  return y


def inception_ref(p, x, c, s, block):
  del s, block
  unit = lambda y, name: relu(pointwise(y, p[name]["kernel"]))
  b3 = relu(conv(unit(x, "branch3x3_reduce"), p["branch3x3"]["kernel"], c))
  b5 = relu(conv(unit(x, "branch5x5_reduce"), p["branch5x5"]["kernel"], c))
  return jnp.concatenate([unit(x, "branch1x1"), b3, b5, unit(max_pool(x, 3, 1, c), "pool_proj")],
                         axis=-1)


def fire_ref(p, x, c, s, block):
  del s, block
  squeezed = relu(pointwise(x, p["squeeze"]["kernel"]))
  return jnp.concatenate([relu(pointwise(squeezed, p["expand1x1"]["kernel"])),
                          relu(conv(squeezed, p["expand3x3"]["kernel"], c))], axis=-1)


CIN = 8
# name -> (block at stride s under convention c, its lax reference, kernel sizes it takes).
BLOCKS = {
    "dense": (lambda s, k, c: pwconv.DenseConv(12, k, s, padding=c, **KNOBS), dense_ref, (3, 5, 7)),
    "bottleneck": (lambda s, k, c: pwconv.Bottleneck(16, 4, k, s, padding=c, **KNOBS),
                   bottleneck_ref, (3, 5)),
    "separable": (lambda s, k, c: pwconv.DepthwiseSeparable(12, k, s, padding=c, **KNOBS),
                  separable_ref, (3, 5)),
    "inverted_residual": (lambda s, k, c: pwconv.InvertedResidual(CIN, 3, k, s, padding=c, **KNOBS),
                          inverted_residual_ref, (3, 5)),
    "shuffle": (lambda s, k, c: pwconv.ShuffleUnit(CIN if s == 1 else 2 * CIN, groups=2, strides=s,
                                                   padding=c, **KNOBS), shuffle_ref, (3,)),
    "mlpconv": (lambda s, k, c: pwconv.MLPConv(12, k, s, pointwise_layers=2, padding=c, **KNOBS),
                mlpconv_ref, (3, 5)),
    "inception": (lambda s, k, c: pwconv.InceptionModule(4, 4, 6, 2, 4, 4, padding=c, **KNOBS),
                  inception_ref, (3,)),
    "fire": (lambda s, k, c: pwconv.FireModule(4, 6, 6, padding=c, **KNOBS), fire_ref, (3,)),
}
UNSTRIDED = ("inception", "fire")
CASES = [(name, stride, k, size) for name, (_, _, kernels) in BLOCKS.items()
         for stride in ((1,) if name in UNSTRIDED else (1, 2)) for k in kernels for size in (8, 9)]


def _params(block, x):
  """Random params in the block's shapes (no compiled initialiser)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(functools.partial(block.init, jax.random.key(0)), x)["params"]
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("name, stride, k, size", CASES)
def test_block_pads_as_written_by_hand(name, stride, k, size):
  make, reference, _ = BLOCKS[name]
  x = jax.random.normal(jax.random.key(1), (1, size, size, CIN))
  outputs = {}
  for convention in ("SAME", "symmetric"):
    block = make(stride, k, convention)
    params = _params(block, x)
    y = block.apply({"params": params}, x)
    chex.assert_trees_all_close(y, reference(params, x, convention, stride, block),
                                rtol=1e-5, atol=1e-5)
    outputs[convention] = y
  # The conventions differ exactly where a strided window meets an even size.
  differ = not np.allclose(outputs["SAME"], outputs["symmetric"], atol=1e-5)
  assert differ == (stride == 2 and size % 2 == 0)


@pytest.mark.parametrize("size, stride, k", [(8, 2, 3), (9, 2, 3), (8, 2, 7), (224, 2, 7)])
def test_hand_pads(size, stride, k):
  """The pads the tests hold the blocks to: SAME puts the odd one at the bottom/right."""
  expected = {(8, 2, 3): ((0, 1), (1, 1)), (9, 2, 3): ((1, 1), (1, 1)),
              (8, 2, 7): ((2, 3), (3, 3)), (224, 2, 7): ((2, 3), (3, 3))}[size, stride, k]
  assert (pads("SAME", size, k, stride), pads("symmetric", size, k, stride)) == expected


def _valid_taps(size, k, stride, convention):
  """Sum over output positions of the window taps that land on real input, along one axis."""
  before, after = pads(convention, size, k, stride)
  starts = np.arange((size + before + after - k) // stride + 1) * stride - before
  return int(sum(np.clip(s + k, 0, size) - np.clip(s, 0, size) for s in starts))


@pytest.mark.parametrize("size, stride, k", [(9, 3, 3), (8, 2, 3), (10, 2, 7), (9, 1, 5)])
def test_dense_exact_macs_follow_the_padding(size, stride, k):
  x = jax.ShapeDtypeStruct((1, size, size, CIN), jnp.float32)
  profiles = {c: pwconv.profile(pwconv.DenseConv(12, k, stride, padding=c, **KNOBS), x)
              for c in ("SAME", "symmetric")}
  out = -(-size // stride)
  assert profiles["SAME"].macs == profiles["symmetric"].macs == out * out * k * k * CIN * 12
  for c, profile in profiles.items():
    taps = _valid_taps(size, k, stride, c)
    assert profile.exact_macs == taps * taps * CIN * 12
  # At stride 3 the two conventions cover different taps: SAME pads (0, 0), symmetric (1, 1).
  assert ((profiles["SAME"].exact_macs != profiles["symmetric"].exact_macs)
          == ((size, stride) == (9, 3)))


def test_separable_exact_macs_follow_the_padding():
  x = jax.ShapeDtypeStruct((1, 9, 9, CIN), jnp.float32)
  for c in ("SAME", "symmetric"):
    p = pwconv.profile(pwconv.DepthwiseSeparable(12, (3, 3), 3, padding=c, **KNOBS), x)
    taps = _valid_taps(9, 3, 3, c)
    assert p.exact_macs == taps * taps * CIN + 3 * 3 * CIN * 12
    assert p.macs == 3 * 3 * 9 * CIN + 3 * 3 * CIN * 12


@pytest.mark.parametrize("name", BLOCKS)
def test_macs_do_not_depend_on_the_padding(name):
  make, _, _ = BLOCKS[name]
  stride = 1 if name in UNSTRIDED else 2
  x = jax.ShapeDtypeStruct((1, 8, 8, CIN), jnp.float32)
  same = pwconv.profile(make(stride, 3, "SAME"), x)
  symmetric = pwconv.profile(make(stride, 3, "symmetric"), x)
  assert same.macs == symmetric.macs > 0
  assert same.params == symmetric.params
  assert [r.path for r in same.rows] == [r.path for r in symmetric.rows]
