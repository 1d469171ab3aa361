"""Implementations behind :func:`pwconv.ops.depthwise_conv`, chosen by name or per backend.

Every implementation takes already-validated arguments::

    fn(x, kernel, strides, padding, dilation) -> y
    x: (N, H, W, C); kernel: (kh, kw, 1, C * multiplier) as ``nn.Conv(feature_group_count=C)`` stores it;
    strides, dilation: (int, int); padding: ((top, bottom), (left, right)), explicit non-negative ints.

``"xla"`` is the reference (``lax.conv_general_dilated`` with ``feature_group_count``); every other
implementation is tested against it, values and gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
from jax import lax

from pwconv.kernels import pallas_depthwise
from pwconv.kernels import shifted
from pwconv.kernels import xla

DepthwiseFn = Callable[..., jax.Array]

_IMPLS: dict[str, DepthwiseFn] = {"xla": xla.depthwise_conv}

# What "auto" picks on each backend, and up to how many kernel taps (kh·kw). Only a path measured
# faster than XLA on that backend goes here.
_AUTO: dict[str, tuple[str, int]] = {}

# The lowering platforms of each JAX backend name (``jax.default_backend()``).
_PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}

_FORCE_REFERENCE = contextvars.ContextVar("pwconv_force_reference", default=False)


def register(name: str, fn: DepthwiseFn, *, auto_on: tuple[str, ...] = (),
             max_taps: int | None = None) -> None:
  """Adds an implementation; ``auto_on`` lists the backends where ``impl="auto"`` picks it, for
  kernels of at most ``max_taps`` taps (None: any)."""
  _IMPLS[name] = fn
  for backend in auto_on:
    _AUTO[backend] = (name, max_taps if max_taps is not None else 2**31)


# XLA:CPU runs grouped convolutions 20-50x slower than shifted multiply-adds (docs/design.md). The
# shifted sum unrolls kh·kw taps, so its compile time grows with them. Measured 2026-12-02 on this
# 2-core CPU, forward+backward of (8, 28, 28, 64), jitted: 3x3 3.3 ms (compile 1.7 s) vs XLA 35 ms;
# 9x9 32 ms (compile 7 s) vs 130 ms; 11x11 42 ms (compile 15 s) vs 256 ms; 15x15 440 ms (compile
# 19 s) vs 292 ms (XLA 0.3 s to compile at every size). So up to 81 taps (9x9).
register("shifted", shifted.depthwise_conv, auto_on=("cpu",), max_taps=81)
# Unmeasured on GPU/TPU, so not an "auto" choice anywhere; interpreted on CPU.
register("pallas", pallas_depthwise.depthwise_conv)


def names() -> tuple[str, ...]:
  """The accepted ``impl`` values, ``"auto"`` first."""
  return ("auto", *_IMPLS)


def resolve(impl: str, backend: str | None = None, taps: int = 9) -> str:
  """The implementation name that ``impl`` stands for on ``backend`` (default: JAX's default
  backend) for a kernel of ``taps`` taps."""
  if _FORCE_REFERENCE.get():
    return "xla"
  return chosen(impl, backend, taps)


def chosen(impl: str, backend: str | None = None, taps: int = 9) -> str:
  """What ``impl`` runs on ``backend`` outside :func:`reference_only` (what cost counting reports)."""
  if impl != "auto":
    return impl
  name, max_taps = _AUTO.get(backend or jax.default_backend(), ("xla", 0))
  return name if taps <= max_taps else "xla"


def get(impl: str, backend: str | None = None) -> DepthwiseFn:
  """The function ``impl`` runs. "auto" without a ``backend`` picks per platform when the program
  is lowered (``lax.platform_dependent``), not when it is traced, so a program exported for several
  platforms (``jax.export``) runs each one's choice."""
  if _FORCE_REFERENCE.get():
    return _IMPLS["xla"]
  if impl != "auto":
    return _IMPLS[impl]
  if backend is not None:
    return _IMPLS[chosen(impl, backend)]
  return _auto


def _auto(x: jax.Array, kernel: jax.Array, strides, padding, dilation) -> jax.Array:
  taps = kernel.shape[0] * kernel.shape[1]
  call = lambda fn: (lambda x, k: fn(x, k, strides, padding, dilation))
  branches = {platform: call(_IMPLS[name]) for backend, (name, max_taps) in _AUTO.items()
              if taps <= max_taps for platform in _PLATFORMS[backend]}
  if not branches:
    return _IMPLS["xla"](x, kernel, strides, padding, dilation)
  return lax.platform_dependent(x, kernel, default=call(_IMPLS["xla"]), **branches)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
  """Within this context every ``impl`` runs the ``"xla"`` reference (used by cost counting)."""
  token = _FORCE_REFERENCE.set(True)
  try:
    yield
  finally:
    _FORCE_REFERENCE.reset(token)
