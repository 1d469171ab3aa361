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

Memory, per example and in the dtypes the model computes in:

- ``bytes``: the least traffic of each layer, assuming what a layer makes and uses itself never leaves
  the chip: every array it reads that another layer made (its input activations, once each however
  often it reads them), every parameter and batch statistic it reads (``weight_bytes``), and every
  array it makes that another layer reads or the model returns. A layer is a module path; a block's
  own elementwise work (activations, residual adds, concatenations, pools) is the row of the block's
  path. So a conv -> BatchNorm -> ReLU unit moves its input, the conv output twice (written, read),
  the norm output twice and the ReLU output once, plus the weights. Weights count once per example
  here (batch 1); :meth:`Profile.predict` reads them once per batch.
- ``activation_bytes``: what a training step keeps for the backward pass: the residuals
  ``jax.vjp`` saves (train mode, no rematerialisation), parameters excluded, attributed to the layer
  that computed them (the input, when saved, to the root row). It is the number that limits the
  batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
from flax import nnx
from flax.nnx import bridge
import jax
import jax.numpy as jnp
import numpy as np

from pwconv import jaxpr_costs
from pwconv import kernels
from pwconv import roofline


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
  bytes: int = 0
  weight_bytes: int = 0
  activation_bytes: int = 0
  kind: str = "memory"


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
    bytes: least memory traffic of a forward pass per example (see the module docstring).
    activation_bytes: what a training step keeps for the backward pass, per example.
    dtype: the dtype the convolutions and matmuls compute in.
  """
  name: str
  input_shape: tuple[int, ...]
  params: int
  macs: int
  exact_macs: int
  rows: tuple[LayerCost, ...]
  bytes: int = 0
  activation_bytes: int = 0
  dtype: str = "float32"

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

  def predict(self, device: roofline.Peaks | str | None = None, *, batch: int | None = None,
              efficiency: Mapping[str, float] | None = None) -> roofline.Prediction:
    """Each layer's roofline time, max(2·macs / peak FLOP/s, bytes / peak bandwidth), and their sum.

    See :func:`pwconv.roofline.predict` (``device``: a ``Peaks``, a device kind such as "H100", or
    None for the current device; ``efficiency``: from :func:`pwconv.roofline.calibrate`).
    """
    return roofline.predict(self, device, batch=batch, efficiency=efficiency)

  def table(self) -> str:
    """A text table: layer, op, output shape, params, MACs and their share, bytes moved and kept."""
    header = ("layer", "op", "output", "params", "MACs", "share", "bytes", "kept")
    body = [(r.path or "(root)", r.op, _shape(r.out_shape), f"{r.params:,}", human(r.macs),
             f"{100 * r.macs / self.macs:.1f}%" if self.macs else "-", human_bytes(r.bytes),
             human_bytes(r.activation_bytes)) for r in self.rows]
    total = ("total", "", "", f"{self.params:,}", human(self.macs), "100.0%" if self.macs else "-",
             human_bytes(self.bytes), human_bytes(self.activation_bytes))
    lines = [f"{self.name} on input {_shape(self.input_shape)}, per example"]
    lines += _columns([header, *body, total], right=(3, 4, 5, 6, 7), rule_before=len(body) + 1)
    lines.append(f"MACs {self.macs:,} (padded taps counted; FLOPs = 2·MACs = {self.flops:,}); "
                 f"exact MACs {self.exact_macs:,} (padded taps excluded); bytes: least memory "
                 f"traffic of a forward pass ({self.dtype}); kept: saved for the backward pass")
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
    if isinstance(module_or_fn, nnx.Module):
      return _profile_nnx(module_or_fn, args, example_kwargs, batch, shape)
    if not callable(module_or_fn):
      raise TypeError("profile: module_or_fn must be a flax.linen or flax.nnx Module or a "
                      f"callable, got {type(module_or_fn).__name__}")
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


def human_bytes(n: float) -> str:
  """3211264 -> '3.1 MiB'."""
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n:g} B"


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
  kind: str = "memory"
  kind_macs: int = 0
  bytes: float = 0.0
  weight_bytes: int = 0
  activation_bytes: float = 0.0

  def add_macs(self, macs: int, exact: int, detail: str, kind: str) -> None:
    self.macs += macs
    self.exact_macs += exact
    self.detail = self.detail or detail
    if macs > self.kind_macs:  # the layer's kind is that of its largest conv or matmul
      self.kind, self.kind_macs = kind, macs


def _profile_module(module: nn.Module, args: list[Any], kwargs: dict[str, Any], batch: int,
                    shape: tuple[int, ...]) -> Profile:
  if "train" in inspect.signature(module.__call__).parameters:
    kwargs = {"train": False, **kwargs}
  # Training-mode calls (train=True) may update batch statistics and draw dropout masks; neither
  # changes a count, so every collection is mutable and a dropout key is supplied.
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(lambda *a: module.init(rngs, *a, **kwargs), *args)
  layers: dict[str, _Layer] = {}
  impls: dict[str, str] = {}
  class_names: set[str] = set()

  def record(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    class_names.update(cls.__name__ for cls in type(context.module).__mro__)
    if context.method_name == "__call__":
      path = "/".join(context.module.path)
      if path not in layers:
        layers[path] = _Layer(type(context.module).__name__, _per_example(call_args[0]),
                              _per_example(out), order=len(layers))
      if isinstance(getattr(context.module, "impl", None), str):
        taps = int(np.prod(context.module.kernel_size))
        impls[path] = kernels.chosen(context.module.impl, taps=taps)
    return out

  with nn.intercept_methods(record):
    jaxpr = jax.make_jaxpr(lambda v, *a: module.apply(v, *a, mutable=True, rngs=rngs, **kwargs))(
        variables, *args).jaxpr
  flat = jax.tree_util.tree_flatten_with_path(variables.get("params", {}))[0]
  for key_path, leaf in flat:
    path = "/".join(str(getattr(k, "key", k)) for k in key_path[:-1])
    layer = layers.setdefault(path, _Layer(type(module).__name__, (), (), order=len(layers)))
    layer.params += int(np.prod(leaf.shape))
  root = type(module).__name__
  new_layer = lambda path, in_shape=(), out_shape=(): layers.setdefault(
      path, _Layer(root, in_shape, out_shape, order=len(layers)))
  path_of = _module_paths(set(layers), class_names)
  for c in jaxpr_costs.count(jaxpr):
    path = path_of(c.stack)
    kind = f"depthwise:{impls.get(path, 'xla')}" if c.kind == "depthwise" else c.kind
    new_layer(path, c.in_shape, c.out_shape).add_macs(c.macs, c.exact, c.detail, kind)
  weight_vars = set(jaxpr.invars[:len(jax.tree.leaves(variables))])
  for path, (moved, weight) in jaxpr_costs.traffic(jaxpr, weight_vars, path_of).items():
    layer = new_layer(path)
    layer.bytes += moved / batch + weight
    layer.weight_bytes += weight
  train_apply = lambda v, *a: module.apply(v, *a, mutable=True, rngs=rngs, **_train(kwargs))
  kept_bytes = jaxpr_costs.residuals(train_apply, variables, args, batch, path_of=path_of)
  for path, kept in kept_bytes.items():
    new_layer(path).activation_bytes += kept
  rows = [_row(path, f"{l.op} {l.detail}".strip(), l, batch)
          for path, l in sorted(layers.items(), key=lambda kv: kv[1].order)
          if l.params or l.macs or l.bytes or l.activation_bytes]
  params = sum(int(np.prod(leaf.shape)) for _, leaf in flat)
  return _finish(root, shape, params, rows, jaxpr_costs.compute_dtype(jaxpr))


def _profile_fn(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], batch: int,
                shape: tuple[int, ...]) -> Profile:
  jaxpr = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args).jaxpr
  weights = jaxpr_costs.weight_inputs(jaxpr)
  rows = []
  for i, c in enumerate(jaxpr_costs.count(jaxpr)):
    layer = _Layer(c.detail, c.in_shape, c.out_shape, order=i)
    layer.add_macs(c.macs, c.exact, "", "depthwise:xla" if c.kind == "depthwise" else c.kind)
    # A function has no layers: each conv/dot moves its operands and its result, every time it runs;
    # its right-hand operand (the kernel) is its weights.
    weight = jaxpr_costs.nbytes(c.eqn.invars[1])
    moved = sum(jaxpr_costs.nbytes(v) for v in (*c.eqn.invars, *c.eqn.outvars)) - weight
    layer.bytes, layer.weight_bytes = c.times * (moved / batch + weight), c.times * weight
    rows.append(_row(c.stack or f"op{i}", c.detail, layer, batch))
  params = sum(int(np.prod(v.aval.shape)) for v in weights)
  return _finish(getattr(fn, "__name__", type(fn).__name__), shape, params, rows,
                 jaxpr_costs.compute_dtype(jaxpr))


def _profile_nnx(model: nnx.Module, args: list[Any], kwargs: dict[str, Any], batch: int,
                 shape: tuple[int, ...]) -> Profile:
  """An NNX module, split into its graph and state and traced as a pure function; each submodule's
  call runs in a ``jax.named_scope`` of its attribute name, so rows are named by attribute path.
  Linen modules inside (``nnx.bridge.ToNNX``) keep their own paths below their attribute. Counts are
  of the module in the mode it is in; its activation bytes are taken in eval mode (NNX state cannot
  change under ``jax.vjp``), so they leave out what batch statistics would add."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  variables = {"params": params, "rest": rest}
  root = type(model).__name__
  classes = {type(m) for _, m in nnx.iter_modules(model)}
  linen_roots = {("/".join(map(str, path)), type(getattr(m, "to_nnx__module", m)).__name__)
                 for path, m in nnx.iter_modules(model) if isinstance(m, bridge.ToNNX)}
  layers: dict[str, _Layer] = {"": _Layer(root, (), (), order=0)}

  def record(path: str, m: nnx.Module, x: Any, y: Any) -> None:
    if path not in layers:
      layers[path] = _Layer(type(m).__name__, _per_example(x), _per_example(y), order=len(layers))

  def apply(frozen: bool, calls: Callable[..., None] | None = None):
    def run(variables, *a):
      m = nnx.merge(graphdef, variables["params"], variables["rest"])
      if frozen:  # batch statistics stay fixed: no state changes under jax.vjp
        m.eval()
      with _named_calls(m, classes, calls), jax.named_scope(root):
        y = m(*a, **kwargs)
      return y, nnx.state(m)
    return run

  def path_of(stack: str) -> str:
    parts = jaxpr_costs.layer_path(stack).split("/")
    return "/".join(p for i, p in enumerate(parts) if ("/".join(parts[:i]), p) not in linen_roots)

  jaxpr = jax.make_jaxpr(apply(False, record))(variables, *args).jaxpr
  new_layer = lambda path, in_shape=(), out_shape=(): layers.setdefault(
      path, _Layer("", in_shape, out_shape, order=len(layers)))
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]:
    new_layer("/".join(str(getattr(k, "key", k)) for k in key_path[:-1])).params += int(
        np.prod(leaf.shape))
  for c in jaxpr_costs.count(jaxpr):
    kind = "depthwise:xla" if c.kind == "depthwise" else c.kind
    new_layer(path_of(c.stack), c.in_shape, c.out_shape).add_macs(c.macs, c.exact, c.detail, kind)
  weight_vars = set(jaxpr.invars[:len(jax.tree.leaves(variables))])
  for path, (moved, weight) in jaxpr_costs.traffic(jaxpr, weight_vars, path_of).items():
    layer = new_layer(path)
    layer.bytes += moved / batch + weight
    layer.weight_bytes += weight
  kept_bytes = jaxpr_costs.residuals(apply(True), variables, args, batch, wrt=None,
                                     path_of=path_of)
  for path, kept in kept_bytes.items():
    new_layer(path).activation_bytes += kept
  rows = [_row(path, f"{l.op} {l.detail}".strip(), l, batch)
          for path, l in sorted(layers.items(), key=lambda kv: kv[1].order)
          if l.params or l.macs or l.bytes or l.activation_bytes]
  params_count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
  return _finish(root, shape, params_count, rows, jaxpr_costs.compute_dtype(jaxpr))


@contextlib.contextmanager
def _named_calls(model: nnx.Module, classes: set[type], record: Callable[..., None] | None
                 ) -> Iterator[None]:
  """Within this context, each submodule of ``model`` (a merged instance) calls in a
  ``jax.named_scope`` of its attribute name; ``record(path, module, x, y)`` sees each call."""
  paths = {id(m): "/".join(map(str, path)) for path, m in nnx.iter_modules(model) if path}
  originals = {cls: (cls.__call__, cls.__dict__.get("__call__")) for cls in classes}

  def scoped(original):
    def call(self, *a, **k):
      path = paths.get(id(self))
      if path is None:
        return original(self, *a, **k)
      with jax.named_scope(path.split("/")[-1]):
        y = original(self, *a, **k)
      if record is not None and a:
        record(path, self, a[0], y)
      return y
    return call

  for cls, (resolved, _) in originals.items():
    cls.__call__ = scoped(resolved)
  try:
    yield
  finally:
    for cls, (_, own) in originals.items():
      if own is None:
        del cls.__call__
      else:
        cls.__call__ = own


def _module_paths(known: set[str], class_names: set[str]) -> Callable[[str], str]:
  """Name stack -> module path. Lifted transforms (nn.remat, nn.scan: pwconv.remat, pwconv.scan)
  push their modules' class names onto the stack ("Remat/InvertedResidual/InvertedResidual/expand");
  an entry that is a class name and leads to no module path the call recorded is dropped."""
  prefixes = {"/".join(path.split("/")[:i]) for path in known for i in range(1, path.count("/") + 2)}

  def path_of(stack: str) -> str:
    kept: list[str] = []
    for part in jaxpr_costs.layer_path(stack).split("/"):
      if part in class_names and "/".join([*kept, part]) not in prefixes:
        continue
      kept.append(part)
    return "/".join(kept)

  return path_of


def _row(path: str, op: str, layer: _Layer, batch: int) -> LayerCost:
  return LayerCost(path, op, layer.in_shape, layer.out_shape, layer.params,
                   _divide(layer.macs, batch, path), _divide(layer.exact_macs, batch, path),
                   int(round(layer.bytes)), layer.weight_bytes, int(round(layer.activation_bytes)),
                   layer.kind)


def _finish(name: str, shape: tuple[int, ...], params: int, rows: list[LayerCost],
            dtype: str) -> Profile:
  return Profile(name=name, input_shape=shape, params=params, macs=sum(r.macs for r in rows),
                 exact_macs=sum(r.exact_macs for r in rows), rows=tuple(rows),
                 bytes=sum(r.bytes for r in rows),
                 activation_bytes=sum(r.activation_bytes for r in rows), dtype=dtype)


def _train(kwargs: dict[str, Any]) -> dict[str, Any]:
  """The call's keyword arguments in training mode (where the module takes ``train``)."""
  return {**kwargs, "train": True} if "train" in kwargs else kwargs


def _per_example(x: Any) -> tuple[int, ...]:
  shape = tuple(getattr(x, "shape", ()))
  return shape[1:]


def _divide(count: int, batch: int, path: str) -> int:
  if count % batch:
    raise ValueError(f"profile: the MACs of layer {path!r} ({count:,}) are not a multiple of the batch "
                     f"size {batch}; profile with a batch of 1")
  return count // batch


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
