"""Counting a jaxpr: MACs per conv/dot equation, memory traffic per layer, saved residuals.

The pieces :func:`pwconv.profile` is built from. Layers are found by the name stack of each equation
(``eqn.source_info.name_stack``): linen puts module paths there ("Root/child/Class.method/grandchild").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

def layer_path(stack: str) -> str:
  """The module path of a name stack: "Root/child/Class.method/grandchild" -> "child/grandchild".

  The first entry is the root module (or a transformation of it, e.g. "jvp(Root)"); "Class.method"
  entries are methods other than ``__call__``.
  """
  return "/".join(p for p in stack.split("/")[1:] if "." not in p)


def nbytes(v: Any) -> int:
  """Bytes of a jaxpr variable's array (0 for literals, tokens and PRNG keys)."""
  aval = getattr(v, "aval", None)
  if (aval is None or not hasattr(aval, "dtype") or isinstance(v, jax_core.Literal)
      or jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended)):
    return 0
  return int(np.prod(aval.shape)) * jnp.dtype(aval.dtype).itemsize


# Call-like equations whose body runs once per call, with the call's operands and results: their
# equations count as the body's layers (a rematerialised block moves what the plain block moves).
_INLINED = ("remat2", "checkpoint", "pjit", "jit", "closed_call", "core_call")


def flat_equations(jaxpr: jax_core.Jaxpr, prefix: str = "", rename: dict[Any, Any] | None = None
                   ) -> Iterator[tuple[str, list[Any], list[Any]]]:
  """(name stack, operands, results) of each equation, call-like equations (:data:`_INLINED`)
  replaced by their bodies, whose variables are renamed to the call's operands and results."""
  rename = rename or {}
  get = lambda v: rename.get(v, v) if isinstance(v, jax_core.Var) else v
  for eqn in jaxpr.eqns:
    stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
    body = eqn.params.get("jaxpr")
    if eqn.primitive.name in _INLINED and body is not None:
      body = getattr(body, "jaxpr", body)
      inner = {i: get(o) for i, o in zip(body.invars, eqn.invars)}
      inner.update({i: get(o) for i, o in zip(body.outvars, eqn.outvars)
                    if isinstance(i, jax_core.Var) and i not in inner})
      yield from flat_equations(body, stack, inner)
    else:
      yield stack, [get(v) for v in eqn.invars], [get(v) for v in eqn.outvars]


def traffic(jaxpr: jax_core.Jaxpr, weights: set[Any],
            path_of: Callable[[str], str] = layer_path) -> dict[str, tuple[int, int]]:
  """Per layer path (``path_of`` of each equation's name stack): (activation bytes read and written
  across the layer's boundary, weight bytes read), for the whole batch. Loops, conditionals and
  custom-derivative calls count as one equation: their operands and results."""
  producer: dict[Any, str] = {}
  readers: dict[Any, set[str]] = {}
  reads: dict[str, set[Any]] = {}
  made: dict[str, list[Any]] = {}
  for stack, invars, outvars in flat_equations(jaxpr):
    path = path_of(stack)
    for v in invars:
      if isinstance(v, jax_core.Var):
        readers.setdefault(v, set()).add(path)
        reads.setdefault(path, set()).add(v)
    for v in outvars:
      producer[v] = path
      made.setdefault(path, []).append(v)
  outputs = {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  traffic = {}
  for path in {*reads, *made}:
    outside = [v for v in reads.get(path, ()) if producer.get(v) != path]
    weight = sum(nbytes(v) for v in outside if v in weights)
    moved = sum(nbytes(v) for v in outside if v not in weights)
    moved += sum(nbytes(v) for v in made.get(path, ())
                 if v in outputs or readers.get(v, set()) - {path})
    traffic[path] = (moved, weight)
  return traffic


# The batch the residuals are traced at: a prime no channel count or kernel size is likely to be, so
# a residual whose leading dimension is it grew with the batch (an activation), and one that is not
# (a batch statistic, a bf16 copy of a kernel) did not.
_TRACE_BATCH = 97


def residuals(apply: Callable[..., Any], variables: Any, args: list[Any], batch: int, *,
              wrt: str | None = "params", path_of: Callable[[str], str] = layer_path
              ) -> dict[str, float]:
  """Per layer path, the bytes per example that ``jax.vjp`` saves for the backward pass of
  ``apply(variables, *args) -> (y, state)``, differentiated in the ``wrt`` collection (None: every
  variable) and the floating inputs.

  Counted: the residuals that depend on the inputs and scale with the batch (traced, abstractly, at a
  batch of :data:`_TRACE_BATCH`, and divided by it). Not counted: variables, values computed from
  variables alone, and per-batch values such as batch statistics."""
  args = [jax.ShapeDtypeStruct((_TRACE_BATCH, *a.shape[1:]), a.dtype)
          if getattr(a, "shape", ()) and a.shape[0] == batch else a for a in args]
  floating = [i for i, a in enumerate(args)
              if jnp.issubdtype(getattr(a, "dtype", jnp.int32), jnp.floating)]

  def saved(variables, *args):
    def f(differentiated, *diff):
      full = list(args)
      for i, d in zip(floating, diff):
        full[i] = d
      return apply({**variables, wrt: differentiated} if wrt else differentiated, *full)[0]
    primal = variables.get(wrt, {}) if wrt else variables
    return jax.vjp(f, primal, *[args[i] for i in floating])[1]

  jaxpr = jax.make_jaxpr(saved)(variables, *args).jaxpr
  n_variables = len(jax.tree.leaves(variables))
  dependent = set(jaxpr.invars[n_variables:])
  producer: dict[Any, str] = {}
  for stack, invars, outvars in flat_equations(jaxpr):
    if any(isinstance(v, jax_core.Var) and v in dependent for v in invars):
      dependent.update(outvars)
    for v in outvars:
      producer[v] = path_of(stack)
  kept: dict[str, float] = {}
  for v in {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}:
    shape = v.aval.shape
    if v not in dependent or not shape or shape[0] != _TRACE_BATCH:
      continue
    path = producer.get(v, "")
    kept[path] = kept.get(path, 0.0) + nbytes(v) / _TRACE_BATCH
  return kept


def compute_dtype(jaxpr: jax_core.Jaxpr) -> str:
  """The dtype of the first convolution or matmul (float32 when there is none)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in COUNTED:
      return jnp.dtype(eqn.outvars[0].aval.dtype).name
    for sub in jax_core.jaxprs_in_params(eqn.params):
      found = compute_dtype(sub)
      if found != "float32" or any(e.primitive.name in COUNTED for e in sub.eqns):
        return found
  return "float32"



COUNTED = ("conv_general_dilated", "dot_general")
# Equations whose inner jaxprs are not run once per outer call (or not at all at this level).
_OPAQUE = ("pallas_call",)


@dataclasses.dataclass(frozen=True)
class Counted:
  """One conv/dot equation: its name stack, MACs (times the loop trips it runs), a detail for the
  row's op ("3x3 /2 depthwise"), its kind ("conv", "conv1x1", "grouped", "depthwise", "dot"), its
  per-example in/out shapes, the equation and how many times it runs."""
  stack: str
  macs: int
  exact: int
  detail: str
  kind: str
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  eqn: jax_core.JaxprEqn
  times: int


def count(jaxpr: jax_core.Jaxpr, prefix: str = "", times: int = 1) -> Iterator[Counted]:
  """Yields a :class:`Counted` per conv/dot equation, inner jaxprs included."""
  for eqn in jaxpr.eqns:
    stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      macs, exact, detail, kind = _conv_macs(eqn)
    elif name == "dot_general":
      macs, detail = _dot_macs(eqn)
      exact, kind = macs, "dot"
    else:
      if name in _OPAQUE:
        continue
      inner_times = times * int(eqn.params.get("length", 1)) if name == "scan" else times
      if name == "while" and any(m for sub in jax_core.jaxprs_in_params(eqn.params)
                                 for m in (c.macs for c in count(sub, stack, 1))):
        raise ValueError(f"profile: a lax.while_loop at {stack or 'the top level'} contains "
                         "convolutions or matmuls, and its trip count is unknown when tracing "
                         "abstractly, so its MACs cannot be counted; use lax.scan or lax.fori_loop "
                         "with static bounds (a scan), or a Python loop")
      branches = eqn.params.get("branches")
      if branches is not None:  # lax.cond: count the most expensive branch
        counts = [list(count(b.jaxpr, stack, inner_times)) for b in branches]
        yield from max(counts, key=lambda c: sum(x.macs for x in c))
        continue
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from count(sub, stack, inner_times)
      continue
    lhs = eqn.invars[0].aval.shape
    yield Counted(stack, macs * times, exact * times, detail, kind, tuple(lhs[1:]),
                   tuple(eqn.outvars[0].aval.shape[1:]), eqn, times)


def _conv_macs(eqn: jax_core.JaxprEqn) -> tuple[int, int, str, str]:
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
  grouping = ("depthwise" if groups == cin and groups > 1 else f"g={groups}" if groups > 1 else "")
  strides = tuple(p["window_strides"])
  detail = " ".join(s for s in ("x".join(map(str, window)),
                                f"/{strides[0]}" if set(strides) != {1} else "", grouping) if s)
  kind = ("depthwise" if grouping == "depthwise" else "grouped" if groups > 1
          else "conv1x1" if int(np.prod(window)) == 1 else "conv")
  return macs, exact, detail, kind


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


def weight_inputs(jaxpr: jax_core.Jaxpr) -> list[jax_core.Var]:
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
    elif name in COUNTED:
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
