"""Inference forms: structural re-parameterization and BatchNorm folding, for any pwconv network.

``reparameterize(module, variables) -> (deploy_module, deploy_variables)``, with
``deploy_module.apply(deploy_variables, x)`` equal to ``module.apply(variables, x)`` (eval mode) up
to float rounding:

- every re-parameterizable block (a block with a ``deploy`` field and a ``fold_branches`` method:
  :class:`~pwconv.blocks.RepVGGBlock`, :class:`~pwconv.blocks.MobileOneBlock`) becomes its deploy
  form, one conv with a bias;
- every BatchNorm whose input is a conv's output (the conv -> norm units blocks are built of) folds
  into that conv: with a = scale / sqrt(var + eps), the kernel's output channels are scaled by a
  and the bias becomes (bias - mean)·a + beta.

The deploy module is the same class with ``deploy=True`` (networks of re-parameterizable blocks hand
it to them; a SmallNet design whose ``make`` binds ``deploy=False`` gets ``deploy=True``) and, when
its ``norm`` is BatchNorm, ``norm=None`` (and ``use_bias=None`` for ``False``): so a bias on every
conv that no norm follows, each folded one. Norms that are not BatchNorm (ConvNeXt's LayerNorm, GroupNorm) stay as
they are. A BatchNorm the deploy form drops that follows no conv (a pre-norm, a norm on a
concatenation) cannot fold and is an error, as is a module with nothing to fold.
``pwconv.profile(deploy_module, ...)`` counts the deploy form.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors

from pwconv.blocks.rep import Affine
from pwconv.layers import DepthwiseConv, PointwiseConv
from pwconv.models.smallnet import SmallNet

OWNER = "reparameterize"
# The layers a BatchNorm folds into: linear maps whose kernel's last axis is the output channels.
LINEAR_LAYERS = (nn.Conv, nn.Dense, PointwiseConv, DepthwiseConv)
_SHOWN = 5
# What a trace of a module on an input it does not fit raises.
_TRACE_ERRORS = (ValueError, TypeError, flax_errors.FlaxError)

# {collection: {layer path "a/b": {leaf name: array}}}
Flat = dict[str, dict[str, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class _Call:
  """One module call seen while tracing: its layer path, the module, its inputs and output."""
  path: str
  module: nn.Module
  inputs: tuple[Any, ...]
  output: Any


def reparameterize(module: nn.Module, variables: Mapping[str, Any], *,
                   input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, Any]]:
  """The inference form of ``module`` and its variables (see the module docstring).

  Args:
    module: a pwconv network or block (unbound), in train form.
    variables: its variables (``{"params": ..., "batch_stats": ...}``), e.g. from ``init`` or
      :func:`pwconv.weights.from_timm`.
    input_shape: the shape of an input (N, H, W, C) the module takes; by default 224x224 images
      with 3 channels, else with a channel count the variables' kernels tell.

  Returns:
    ``(deploy_module, deploy_variables)``.

  Raises:
    ValueError: the variables do not fit the module, nothing can be folded, a BatchNorm the deploy
      form drops follows no conv, or a re-parameterizable block would stay in train form.
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"{OWNER}: module must be a flax linen Module, got {type(module).__name__}")
  if module.scope is not None:
    raise ValueError(f"{OWNER}: module must be unbound (the module itself, not one inside apply)")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError(f"{OWNER}: variables must be a mapping with a 'params' collection (what init "
                    f"returns), got {type(variables).__name__}")
  x, calls = _find_input(module, variables, input_shape)
  flat = _flatten(variables)
  deploy = deploy_form(module)
  template, deploy_calls = _trace(lambda x: deploy.init(jax.random.key(0), x), x)
  deploy_modules = {c.path: c.module for c in deploy_calls}
  norms = {c.path: c for c in calls if isinstance(c.module, nn.BatchNorm)}

  new: dict[str, dict[str, Any]] = {}  # params layers the folds compute
  consumed: set[tuple[str, str]] = set()  # (collection, layer) of the original folds read
  reps = _rep_blocks(calls)
  for call in reps.values():
    if getattr(deploy_modules.get(call.path), "deploy", False) is not True:
      raise ValueError(f"{OWNER}: {type(call.module).__name__} at {call.path!r} would stay in "
                       f"train form: {type(module).__name__} must hand a deploy field to its "
                       "blocks")
    params = _subtree(flat["params"], call.path)
    block_affines = {layer: _affine(norms[_join(call.path, layer)], flat) for layer in params
                     if _join(call.path, layer) in norms}
    folded = call.module.fold_branches(call.inputs[0].shape[-1], params, block_affines)
    new.update({_join(call.path, layer): leaves for layer, leaves in folded.items()})
    consumed.update((c, layer) for c in flat for layer in flat[c] if _under(layer, call.path))

  template_flat = _flatten(template)
  kept = {layer for layers in template_flat.values() for layer in layers}
  producers = {id(c.output): c for c in calls if isinstance(c.module, LINEAR_LAYERS)}
  folds = 0
  for call in calls:
    if (not isinstance(call.module, nn.BatchNorm) or call.path in kept
        or any(_under(call.path, r) for r in reps)):
      continue
    conv = _producer(call, producers, calls)
    leaves = template_flat["params"].get(conv.path, {})
    if "bias" not in leaves:
      raise ValueError(f"{OWNER}: the deploy form's {conv.path!r} has no bias to hold the folded "
                       f"BatchNorm {call.path!r} (is use_bias False inside a block?)")
    a, b = _affine(call, flat)
    layer = flat["params"][conv.path]
    kernel = np.asarray(layer["kernel"], np.float64)
    bias = np.asarray(layer.get("bias", 0.0), np.float64)
    new[conv.path] = {"kernel": kernel * a, "bias": bias * a + b}
    consumed.update({("params", conv.path), ("params", call.path), ("batch_stats", call.path)})
    folds += 1
  if not reps and not folds:
    raise ValueError(f"{OWNER}: nothing to fold in {type(module).__name__}: no BatchNorm follows a "
                     "conv and no block is re-parameterizable (norms other than BatchNorm stay as "
                     "they are)")
  deploy_variables = _fill(template_flat, flat, new, consumed)
  _check_same_function(module, variables, deploy, deploy_variables, x)
  return deploy, deploy_variables


def _check_same_function(module: nn.Module, variables: Mapping[str, Any], deploy: nn.Module,
                         deploy_variables: Mapping[str, Any], x: Any) -> None:
  """Raises unless both forms give the same eval-mode output on a random input (relative 1e-3): a
  fold is only exact if nothing but the norm reads the conv's output, which plain array code
  inside a block could do unseen."""
  probe = jax.random.normal(jax.random.key(0), (1, *x.shape[1:]), jnp.float32)
  kwargs = {"train": False} if "train" in inspect.signature(module.__call__).parameters else {}
  want = np.asarray(jax.tree.leaves(module.apply(variables, probe, **kwargs))[0], np.float64)
  got = np.asarray(jax.tree.leaves(deploy.apply(deploy_variables, probe, **kwargs))[0], np.float64)
  error = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
  if not np.isfinite(error) or error > 1e-3:
    raise ValueError(f"{OWNER}: the deploy form of {type(module).__name__} computes something else "
                     f"(relative difference {error:.3g} on a random input): a folded conv's output "
                     "must be read by its BatchNorm alone")


def deploy_form(module: nn.Module) -> nn.Module:
  """``module`` with its blocks in deploy form and, when its norm is BatchNorm, no norms and a bias
  on every conv no norm follows (``use_bias`` False becomes None). The variables are
  :func:`reparameterize`'s."""
  names = {f.name for f in dataclasses.fields(module)}
  updates: dict[str, Any] = {}
  if "deploy" in names and module.deploy is False:
    updates["deploy"] = True
  if "norm" in names and _is_batch_norm(module.norm):
    updates["norm"] = None
    if module.use_bias is False:
      updates["use_bias"] = None
  if isinstance(module, SmallNet):
    spec = module.spec
    make = spec.make
    if isinstance(make, functools.partial) and make.keywords.get("deploy") is False:
      updates["block"] = dataclasses.replace(spec, make=functools.partial(make, deploy=True))
  return module.clone(**updates)


def _is_batch_norm(factory: Any) -> bool:
  while isinstance(factory, functools.partial):
    factory = factory.func
  return isinstance(factory, type) and issubclass(factory, nn.BatchNorm)


def _trace(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[_Call]]:
  """The output shapes of ``fn(*args)`` and every module call it makes, traced abstractly."""
  calls: list[_Call] = []

  def record(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == "__call__":
      calls.append(_Call("/".join(context.module.path), context.module, call_args, out))
    return out

  def run(*args):
    with nn.intercept_methods(record):
      return fn(*args)

  try:
    return jax.eval_shape(run, *args), calls
  except _TRACE_ERRORS as e:
    raise _TraceError(e, len(calls)) from e


class _TraceError(ValueError):
  """A trace that failed after ``calls`` module calls."""

  def __init__(self, error: Exception, calls: int):
    super().__init__(f"{type(error).__name__}: {error}")
    self.calls = calls


def _find_input(module: nn.Module, variables: Mapping[str, Any],
                input_shape: Sequence[int] | None) -> tuple[jax.ShapeDtypeStruct, list[_Call]]:
  """An input ``module`` applies ``variables`` to, and the calls it makes (eval mode).

  Without ``input_shape``: 224x224 images with 3 channels, else with as many channels as a kernel
  of the variables reads (times a divisor of its outputs: grouped convs). A wrong channel count
  fails at the first conv, so trying costs little.
  """
  if input_shape is not None:
    shapes = [tuple(int(d) for d in input_shape)]
  else:
    kernels = [np.shape(leaves["kernel"])[-2:] for leaves in _flatten(variables)["params"].values()
               if np.ndim(leaves.get("kernel")) >= 2]
    channels = [3, *(d for dims in kernels for d in dims),
                *(d * g for d, o in kernels for g in range(2, o + 1) if o % g == 0)]
    shapes = [(1, 224, 224, c) for c in dict.fromkeys(channels)]
  failures = []
  for shape in shapes:
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    try:
      return x, _trace(lambda v, x: module.apply(v, x), variables, x)[1]
    except _TraceError as e:
      failures.append(e)
  tried = ", ".join(str(s[-1]) for s in shapes[:_SHOWN]) + (", ..." if len(shapes) > _SHOWN else "")
  furthest = max(failures, key=lambda e: e.calls)
  raise ValueError(f"{OWNER}: the variables do not fit {type(module).__name__} on inputs of "
                   f"{tried} channels ({furthest}); pass input_shape= if it takes another input")


def _rep_blocks(calls: Sequence[_Call]) -> dict[str, _Call]:
  """The train-form re-parameterizable blocks, by layer path (the first call of each)."""
  reps: dict[str, _Call] = {}
  for call in calls:
    if (callable(getattr(call.module, "fold_branches", None)) and call.module.deploy is False
        and call.path not in reps):
      reps[call.path] = call
  return reps


def _producer(norm: _Call, producers: Mapping[int, _Call], calls: Sequence[_Call]) -> _Call:
  """The conv whose output is ``norm``'s input and nothing else's, or a ValueError."""
  uses = sum(c.path == norm.path for c in calls)
  if uses > 1:
    raise ValueError(f"{OWNER}: BatchNorm {norm.path!r} is called {uses} times; only a norm "
                     "called once folds into a conv")
  x = norm.inputs[0] if norm.inputs else None
  conv = producers.get(id(x))
  if conv is None:
    raise ValueError(f"{OWNER}: BatchNorm {norm.path!r} does not follow a conv (its input is no "
                     "conv's output), so it cannot be folded and the deploy form would drop it")
  readers = [c.path for c in calls if any(a is x for a in c.inputs) and c.path != norm.path]
  if readers:
    raise ValueError(f"{OWNER}: cannot fold BatchNorm {norm.path!r} into {conv.path!r}: the conv's "
                     f"output is also read by {readers[:_SHOWN]}")
  return conv


def _affine(call: _Call, flat: Flat) -> Affine:
  """The (a, b) per channel of an eval-mode BatchNorm: y = a·x + b."""
  bn = call.module
  if bn.axis not in (-1, 3):
    raise ValueError(f"{OWNER}: BatchNorm {call.path!r} normalizes axis {bn.axis}; only the "
                     "channel axis (-1) folds into a conv")
  params = flat["params"].get(call.path, {})
  stats = flat.get("batch_stats", {}).get(call.path, {})
  mean = np.asarray(stats["mean"], np.float64)
  var = np.asarray(stats["var"], np.float64)
  scale = np.asarray(params.get("scale", 1.0), np.float64)
  a = scale / np.sqrt(var + bn.epsilon)
  return a, np.asarray(params.get("bias", 0.0), np.float64) - mean * a


def _fill(template: Flat, flat: Flat, new: Mapping[str, Mapping[str, Any]],
          consumed: set[tuple[str, str]]) -> dict[str, Any]:
  """The deploy variables: folded leaves, else the original's, else zero biases; every original
  leaf either folded or kept."""
  out: Flat = {}
  missing, used = [], set()
  for collection, layers in template.items():
    for layer, leaves in layers.items():
      for leaf, spec in leaves.items():
        original = flat.get(collection, {}).get(layer, {})
        if collection == "params" and layer in new:
          value = new[layer].get(leaf)
        elif leaf in original and (collection, layer) not in consumed:
          value = original[leaf]
          used.add((collection, layer, leaf))
        else:
          value = np.zeros(spec.shape) if (collection, leaf) == ("params", "bias") else None
        if value is None or tuple(np.shape(value)) != tuple(spec.shape):
          missing.append(f"{collection}/{layer}/{leaf}")
          continue
        out.setdefault(collection, {}).setdefault(layer, {})[leaf] = jnp.asarray(value, spec.dtype)
  dropped = [f"{c}/{layer}/{leaf}" for c in flat for layer in flat[c] for leaf in flat[c][layer]
             if (c, layer) not in consumed and (c, layer, leaf) not in used]
  if missing or dropped:
    raise ValueError(f"{OWNER}: the deploy form does not match the folded variables: missing "
                     f"{missing[:_SHOWN]}, dropped unfolded {dropped[:_SHOWN]}")
  return _unflatten(out)


def _flatten(variables: Mapping[str, Any]) -> Flat:
  flat: Flat = {}
  for collection, tree in variables.items():
    layers: dict[str, dict[str, Any]] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
      for key, value in node.items():
        if isinstance(value, Mapping):
          walk(value, (*path, str(key)))
        else:
          layers.setdefault("/".join(path), {})[str(key)] = value

    walk(tree, ())
    flat[collection] = layers
  return flat


def _unflatten(flat: Flat) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for collection, layers in flat.items():
    tree = out.setdefault(collection, {})
    for layer, leaves in layers.items():
      node = tree
      for key in filter(None, layer.split("/")):
        node = node.setdefault(key, {})
      node.update(leaves)
  return out


def _subtree(layers: Mapping[str, Any], path: str) -> dict[str, Any]:
  """The layers under ``path``, by their path relative to it."""
  return {layer[len(path) + 1:] if path else layer: leaves for layer, leaves in layers.items()
          if _under(layer, path) and layer != path}


def _under(layer: str, path: str) -> bool:
  return not path or layer == path or layer.startswith(path + "/")


def _join(path: str, layer: str) -> str:
  return f"{path}/{layer}" if path else layer
