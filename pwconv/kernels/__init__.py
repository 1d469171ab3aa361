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

from pwconv.kernels import pallas_depthwise
from pwconv.kernels import shifted
from pwconv.kernels import xla

DepthwiseFn = Callable[..., jax.Array]

_IMPLS: dict[str, DepthwiseFn] = {"xla": xla.depthwise_conv}

# What "auto" picks on each backend. Only a path measured faster than XLA on that backend goes here.
_AUTO: dict[str, str] = {}

_FORCE_REFERENCE = contextvars.ContextVar("pwconv_force_reference", default=False)


def register(name: str, fn: DepthwiseFn, *, auto_on: tuple[str, ...] = ()) -> None:
  """Adds an implementation; ``auto_on`` lists the backends where ``impl="auto"`` picks it."""
  _IMPLS[name] = fn
  for backend in auto_on:
    _AUTO[backend] = name


# XLA:CPU runs grouped convolutions 20-50x slower than shifted multiply-adds (DESIGN.md).
register("shifted", shifted.depthwise_conv, auto_on=("cpu",))
# Unmeasured on GPU/TPU, so not an "auto" choice anywhere; interpreted on CPU.
register("pallas", pallas_depthwise.depthwise_conv)


def names() -> tuple[str, ...]:
  """The accepted ``impl`` values, ``"auto"`` first."""
  return ("auto", *_IMPLS)


def resolve(impl: str, backend: str | None = None) -> str:
  """The implementation name that ``impl`` stands for on ``backend`` (default: JAX's default backend)."""
  if _FORCE_REFERENCE.get():
    return "xla"
  return chosen(impl, backend)


def chosen(impl: str, backend: str | None = None) -> str:
  """What ``impl`` runs on ``backend`` outside :func:`reference_only` (what cost counting reports)."""
  if impl != "auto":
    return impl
  return _AUTO.get(backend or jax.default_backend(), "xla")


def get(impl: str, backend: str | None = None) -> DepthwiseFn:
  return _IMPLS[resolve(impl, backend)]


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
  """Within this context every ``impl`` runs the ``"xla"`` reference (used by cost counting)."""
  token = _FORCE_REFERENCE.set(True)
  try:
    yield
  finally:
    _FORCE_REFERENCE.reset(token)
