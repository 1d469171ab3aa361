"""Exact parameter and MAC counts, per layer, without compiling or running anything.

:func:`profile` traces the model to a jaxpr (abstract shapes only, any backend) and counts every
convolution and matrix product in it. Linen puts module paths in each equation's name stack, so each count
is attributed to the layer that issued it. Two conventions, both per example (the batch is divided out):

- ``macs``: the papers' convention (MobileNet, GoogLeNet, ResNet): every kernel tap of every output
  position is a multiply-accumulate, including taps that land on zero padding. Conv and dense only.
- ``exact_macs``: taps that land on padding (or between the samples of a dilated input) are excluded.
  This is what XLA's ``cost_analysis()`` counts (flops = 2·exact_macs for a conv-only graph).

FLOPs = 2·MACs. Depthwise convolutions are counted as the reference ``lax`` convolution whatever ``impl``
would run, so counts do not depend on the implementation or the backend.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from pwconv import kernels


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One layer's share of a :class:`Profile`; shapes are per example, (H, W, C) for images."""
  path: str
  op: str
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  params: int
  macs: int
  exact_macs: int


@dataclasses.dataclass(frozen=True)
class Profile:
  """Parameters and MACs of one model on one input shape, per example.

  Attributes:
    name: what was profiled (the module's class name or the function's name).
    input_shape: the example input's shape, batch included.
    params: trainable parameters (the ``params`` collection; BatchNorm statistics excluded).
    macs: conv + dense multiply-accumulates per example, padded taps counted (paper convention).
    exact_macs: the same with padded taps excluded (XLA's convention).
    rows: one :class:`LayerCost` per layer, in call order.
  """
  name: str
  input_shape: tuple[int, ...]
  params: int
  macs: int
  exact_macs: int
  rows: tuple[LayerCost, ...]

  @property
  def flops(self) -> int:
    """2·macs (paper convention)."""
    return 2 * self.macs

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["flops"] = self.flops
    out["input_shape"] = list(self.input_shape)
    out["rows"] = [dict(dataclasses.asdict(r), in_shape=list(r.in_shape), out_shape=list(r.out_shape))
                   for r in self.rows]
    return out

  def table(self) -> str:
    """A text table: layer, op, output shape, params, MACs and each layer's share of the MACs."""
    header = ("layer", "op", "output", "params", "MACs", "share")
    body = [(r.path or "(root)", r.op, _shape(r.out_shape), f"{r.params:,}", human(r.macs),
             f"{100 * r.macs / self.macs:.1f}%" if self.macs else "-") for r in self.rows]
    total = ("total", "", "", f"{self.params:,}", human(self.macs), "100.0%" if self.macs else "-")
    lines = [f"{self.name} on input {_shape(self.input_shape)}, per example"]
    lines += _columns([header, *body, total], right=(3, 4, 5), rule_before=len(body) + 1)
    lines.append(f"MACs {self.macs:,} (padded taps counted; FLOPs = 2·MACs = {self.flops:,}); "
                 f"exact MACs {self.exact_macs:,} (padded taps excluded)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Savings:
  """A block against its dense equivalent; ratios are dense / block (> 1 means the block is cheaper)."""
  block: Profile
  dense: Profile

  @property
  def params_ratio(self) -> float:
    return _ratio(self.dense.params, self.block.params)

  @property
  def macs_ratio(self) -> float:
    return _ratio(self.dense.macs, self.block.macs)

  def to_dict(self) -> dict[str, Any]:
    return {"block": self.block.to_dict(), "dense": self.dense.to_dict(),
            "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio}

  def table(self) -> str:
    rows = [("", "params", "MACs", "exact MACs"),
            (f"dense: {self.dense.name}", f"{self.dense.params:,}",
             f"{self.dense.macs:,} ({human(self.dense.macs)})", f"{self.dense.exact_macs:,}"),
            (f"block: {self.block.name}", f"{self.block.params:,}",
             f"{self.block.macs:,} ({human(self.block.macs)})", f"{self.block.exact_macs:,}"),
            ("dense / block", f"{self.params_ratio:.2f}x", f"{self.macs_ratio:.2f}x",
             f"{_ratio(self.dense.exact_macs, self.block.exact_macs):.2f}x")]
    lines = [f"Savings on input {_shape(self.block.input_shape)}, per example "
             "(MACs: padded taps counted, as the papers count)"]
    lines += _columns(rows, right=(1, 2, 3), rule_before=len(rows) - 1)
    return "\n".join([*lines, "", self.block.table(), "", self.dense.table()])


def profile(module_or_fn: nn.Module | Callable[..., Any], *example_args: Any,
            **example_kwargs: Any) -> Profile:
  """Counts parameters and MACs of a linen module or a function on example inputs.

  Nothing is compiled or run: inputs may be arrays or ``jax.ShapeDtypeStruct``. The batch size is the
  leading dimension of the first argument and is divided out.

  Args:
    module_or_fn: a linen Module (initialised abstractly; called with ``train=False`` when its
      ``__call__`` takes ``train``), or a function of arrays. For a function, ``params`` counts the
      conv/dot weight operands that are its own inputs.
    *example_args: example inputs, e.g. ``jax.ShapeDtypeStruct((1, 28, 28, 128), jnp.float32)``.
    **example_kwargs: keyword arguments passed through to the module or function (``train=True``
      works too: batch statistics and dropout change no count).

  Returns:
    A :class:`Profile`. ``lax.scan`` bodies (and ``fori_loop`` with static bounds) count once per
    iteration, ``lax.cond`` counts its most expensive branch, and a ``lax.while_loop`` whose body
    holds convolutions or matmuls is a ``ValueError``: its trip count is unknown.
  """
  if not example_args:
    raise ValueError("profile: needs at least one example input after the module or function")
  shape = tuple(getattr(example_args[0], "shape", ()))
  if not shape:
    raise ValueError("profile: the first example input must be an array with a leading batch "
                     f"dimension, got {type(example_args[0]).__name__}")
  batch = int(shape[0])
  if batch < 1:
    raise ValueError(f"profile: the batch dimension of the first input must be >= 1, got {shape}")
  args = [_abstract(a) for a in example_args]
  # Traced with jit disabled, so jitted functions inside are traced afresh with the reference
  # depthwise implementation: jit's trace cache knows nothing of reference_only(), and would hand
  # back (or keep) a trace made with another implementation.
  with kernels.reference_only(), jax.disable_jit():
    if isinstance(module_or_fn, nn.Module):
      return _profile_module(module_or_fn, args, example_kwargs, batch, shape)
    if not callable(module_or_fn):
      raise TypeError("profile: module_or_fn must be a flax.linen Module or a callable, got "
                      f"{type(module_or_fn).__name__}")
    return _profile_fn(module_or_fn, args, example_kwargs, batch, shape)


def savings(block: nn.Module, input_shape: Sequence[int]) -> Savings:
  """Profiles ``block`` and ``block.dense_equivalent(C)`` on ``input_shape`` = (N, H, W, C) or (H, W, C)."""
  if not isinstance(block, nn.Module) or not hasattr(block, "dense_equivalent"):
    raise TypeError(f"savings: block must be a pwconv block with dense_equivalent(), got "
                    f"{type(block).__name__}")
  shape = tuple(input_shape)
  if len(shape) == 3:
    shape = (1, *shape)
  if len(shape) != 4 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
    raise ValueError(f"savings: input_shape must be (N, H, W, C) or (H, W, C) of positive ints, got "
                     f"{tuple(input_shape)!r}")
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return Savings(block=profile(block, x), dense=profile(block.dense_equivalent(shape[-1]), x))


def human(n: float) -> str:
  """160563200 -> '160.6M'."""
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.1f}{unit}"
  return f"{n:g}"


# ---------------------------------------------------------------------------------------------------
# Tracing.


def _abstract(a: Any) -> Any:
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v))
                      if hasattr(v, "shape") else v, a)


@dataclasses.dataclass
class _Layer:
  op: str
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  order: int
  params: int = 0
  macs: int = 0
  exact_macs: int = 0
  detail: str = ""


def _profile_module(module: nn.Module, args: list[Any], kwargs: dict[str, Any], batch: int,
                    shape: tuple[int, ...]) -> Profile:
  if "train" in inspect.signature(module.__call__).parameters:
    kwargs = {"train": False, **kwargs}
  # Training-mode calls (train=True) may update batch statistics and draw dropout masks; neither
  # changes a count, so every collection is mutable and a dropout key is supplied.
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda *a: module.init(rngs, *a, **kwargs), *args)
  layers: dict[str, _Layer] = {}

  def record(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == "__call__":
      path = "/".join(context.module.path)
      if path not in layers:
        layers[path] = _Layer(type(context.module).__name__, _per_example(call_args[0]),
                              _per_example(out), order=len(layers))
    return out

  with nn.intercept_methods(record):
    jaxpr = jax.make_jaxpr(lambda v, *a: module.apply(v, *a, mutable=True, rngs=rngs, **kwargs))(
        variables, *args)
  flat = jax.tree_util.tree_flatten_with_path(variables.get("params", {}))[0]
  for key_path, leaf in flat:
    path = "/".join(str(getattr(k, "key", k)) for k in key_path[:-1])
    layer = layers.setdefault(path, _Layer(type(module).__name__, (), (), order=len(layers)))
    layer.params += int(np.prod(leaf.shape))
  root = type(module).__name__
  for eqn_path, macs, exact, detail, in_shape, out_shape in _count(jaxpr.jaxpr):
    # The name stack is "Root/child/grandchild", with "Class.method" entries for methods other than
    # __call__; the module path is what is left without the root and the method entries.
    path = "/".join(p for p in eqn_path.split("/")[1:] if "." not in p)
    layer = layers.setdefault(path, _Layer(root, in_shape, out_shape, order=len(layers)))
    layer.macs += macs
    layer.exact_macs += exact
    layer.detail = layer.detail or detail
  rows = [LayerCost(path, f"{l.op} {l.detail}".strip(), l.in_shape, l.out_shape, l.params,
                    _divide(l.macs, batch, path), _divide(l.exact_macs, batch, path))
          for path, l in sorted(layers.items(), key=lambda kv: kv[1].order)
          if l.params or l.macs]
  params = sum(int(np.prod(leaf.shape)) for _, leaf in flat)
  return _finish(root, shape, params, rows)


def _profile_fn(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], batch: int,
                shape: tuple[int, ...]) -> Profile:
  jaxpr = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args).jaxpr
  weights = _weight_inputs(jaxpr)
  rows = []
  for i, (path, macs, exact, detail, in_shape, out_shape) in enumerate(_count(jaxpr)):
    rows.append(LayerCost(path or f"op{i}", detail, in_shape, out_shape, 0,
                          _divide(macs, batch, path or f"op{i}"),
                          _divide(exact, batch, path or f"op{i}")))
  params = sum(int(np.prod(v.aval.shape)) for v in weights)
  return _finish(getattr(fn, "__name__", type(fn).__name__), shape, params, rows)


def _finish(name: str, shape: tuple[int, ...], params: int, rows: list[LayerCost]) -> Profile:
  return Profile(name=name, input_shape=shape, params=params, macs=sum(r.macs for r in rows),
                 exact_macs=sum(r.exact_macs for r in rows), rows=tuple(rows))


def _per_example(x: Any) -> tuple[int, ...]:
  shape = tuple(getattr(x, "shape", ()))
  return shape[1:]


def _divide(count: int, batch: int, path: str) -> int:
  if count % batch:
    raise ValueError(f"profile: the MACs of layer {path!r} ({count:,}) are not a multiple of the batch "
                     f"size {batch}; profile with a batch of 1")
  return count // batch


# ---------------------------------------------------------------------------------------------------
# Counting equations.

_COUNTED = ("conv_general_dilated", "dot_general")
# Equations whose inner jaxprs are not run once per outer call (or not at all at this level).
_OPAQUE = ("pallas_call",)


def _count(jaxpr: jax_core.Jaxpr, prefix: str = "", times: int = 1
           ) -> Iterator[tuple[str, int, int, str, tuple[int, ...], tuple[int, ...]]]:
  """Yields (name stack, macs, exact macs, detail, in shape, out shape) per conv/dot equation."""
  for eqn in jaxpr.eqns:
    stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      macs, exact, detail = _conv_macs(eqn)
    elif name == "dot_general":
      macs, detail = _dot_macs(eqn)
      exact = macs
    else:
      if name in _OPAQUE:
        continue
      inner_times = times * int(eqn.params.get("length", 1)) if name == "scan" else times
      if name == "while" and any(m for sub in jax_core.jaxprs_in_params(eqn.params)
                                 for _, m, *_ in _count(sub, stack, 1)):
        raise ValueError(f"profile: a lax.while_loop at {stack or 'the top level'} contains "
                         "convolutions or matmuls, and its trip count is unknown when tracing "
                         "abstractly, so its MACs cannot be counted; use lax.scan or lax.fori_loop "
                         "with static bounds (a scan), or a Python loop")
      branches = eqn.params.get("branches")
      if branches is not None:  # lax.cond: count the most expensive branch
        counts = [list(_count(b.jaxpr, stack, inner_times)) for b in branches]
        yield from max(counts, key=lambda c: sum(m for _, m, *_ in c))
        continue
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from _count(sub, stack, inner_times)
      continue
    lhs = eqn.invars[0].aval.shape
    yield stack, macs * times, exact * times, detail, tuple(lhs[1:]), tuple(eqn.outvars[0].aval.shape[1:])


def _conv_macs(eqn: jax_core.JaxprEqn) -> tuple[int, int, str]:
  p = eqn.params
  dn = p["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  window = [rhs[d] for d in dn.rhs_spec[2:]]
  rhs_in = rhs[dn.rhs_spec[1]]
  batch_groups = p.get("batch_group_count", 1)
  macs = int(np.prod(out)) * int(np.prod(window)) * rhs_in // batch_groups
  valid = 1
  per_tap_positions = int(np.prod(out)) // int(np.prod([out[d] for d in dn.out_spec[2:]]))
  for i, (ld, od) in enumerate(zip(dn.lhs_spec[2:], dn.out_spec[2:])):
    valid *= _valid_pairs(lhs[ld], out[od], window[i], p["window_strides"][i], p["padding"][i],
                          p["lhs_dilation"][i], p["rhs_dilation"][i])
  exact = per_tap_positions * valid * rhs_in // batch_groups
  groups = p["feature_group_count"]
  cin = lhs[dn.lhs_spec[1]]
  kind = ("depthwise" if groups == cin and groups > 1 else f"g={groups}" if groups > 1 else "")
  strides = tuple(p["window_strides"])
  detail = " ".join(s for s in ("x".join(map(str, window)),
                                f"/{strides[0]}" if set(strides) != {1} else "", kind) if s)
  return macs, exact, detail


def _valid_pairs(size: int, out: int, k: int, stride: int, pad: tuple[int, int], lhs_dilation: int,
                 rhs_dilation: int) -> int:
  """(output position, kernel tap) pairs along one axis whose input sample is real, as XLA counts."""
  o = np.arange(out)[:, None]
  t = np.arange(k)[None, :]
  idx = o * stride + t * rhs_dilation - pad[0]
  real = (idx >= 0) & (idx <= (size - 1) * lhs_dilation) & (idx % lhs_dilation == 0)
  return int(real.sum())


def _dot_macs(eqn: jax_core.JaxprEqn) -> tuple[int, str]:
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  k = int(np.prod([lhs[d] for d in lhs_contract]))
  groups = int(np.prod([lhs[d] for d in lhs_batch])) if lhs_batch else 1
  detail = "1x1" if len(lhs) >= 4 else "dense"
  if groups > 1:
    detail += f" g={groups}"
  return int(np.prod(out)) * k, detail


_PASS_THROUGH = ("convert_element_type", "reshape", "transpose", "squeeze", "expand_dims", "copy")


def _weight_inputs(jaxpr: jax_core.Jaxpr) -> list[jax_core.Var]:
  """The function inputs that reach a conv/dot as its right-hand operand through reshapes/casts,
  also inside jit, scan, cond and custom-derivative calls."""
  found: dict[Any, None] = {}
  _trace_weights(jaxpr, {v: v for v in jaxpr.invars}, found)
  return list(found)


def _trace_weights(jaxpr: jax_core.Jaxpr, source: dict[Any, Any], found: dict[Any, None]) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    operands = [v for v in eqn.invars if isinstance(v, jax_core.Var)]
    if name in _PASS_THROUGH and operands and operands[0] in source:
      source[eqn.outvars[0]] = source[operands[0]]
    elif name in _COUNTED:
      if isinstance(eqn.invars[1], jax_core.Var) and eqn.invars[1] in source:
        found[source[eqn.invars[1]]] = None
    else:
      for sub in jax_core.jaxprs_in_params(eqn.params):
        # Calls pass their operands to the inner jaxpr's inputs in order (cond drops its index).
        if len(sub.invars) > len(eqn.invars):
          continue
        outer = eqn.invars[len(eqn.invars) - len(sub.invars):]
        inner = {i: source[o] for i, o in zip(sub.invars, outer)
                 if isinstance(o, jax_core.Var) and o in source}
        _trace_weights(sub, inner, found)


def _ratio(dense: float, block: float) -> float:
  return dense / block if block else float("inf")


def _shape(shape: Sequence[int]) -> str:
  return "x".join(map(str, shape)) if shape else "-"


def _columns(rows: list[Sequence[str]], *, right: Sequence[int], rule_before: int) -> list[str]:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  def fmt(r):
    return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  lines = [fmt(r) for r in rows]
  rule = "-" * len(max(lines, key=len))
  return [lines[0], rule, *lines[1:rule_before], rule, *lines[rule_before:]]
