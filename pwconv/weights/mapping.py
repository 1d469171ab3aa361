"""Filling pwconv variables from a PyTorch-style state dict through a map of layer names.

A pwconv layer (a dict of leaves such as ``{"kernel", "bias"}`` in "params", or ``{"mean", "var"}`` in
"batch_stats") corresponds to a reference module whose tensors share a prefix (``features.3.conv.0.0``).
Leaves and tensors pair by name (:data:`LEAF_NAMES`), and each tensor is converted by shape:

- conv weight (O, I/g, kh, kw) -> HWIO kernel (kh, kw, I/g, O), as ``nn.Conv`` and
  :class:`~pwconv.DepthwiseConv` store it;
- 1x1 conv weight (O, I/g, 1, 1) -> :class:`~pwconv.PointwiseConv` kernel (I/g, O);
- linear weight (O, I) -> ``nn.Dense`` kernel (I, O);
- everything else (biases, norm scales, running statistics, layer-scale gammas) as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pwconv.weights.files import to_numpy

# pwconv leaf name -> the reference's tensor name under the layer's prefix.
LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
              "var": "running_var", "gamma": "gamma"}
# Buffers a reference keeps that no computation reads: consumed silently beside their layer.
BOOKKEEPING = ("num_batches_tracked",)
_SHOWN = 5


def layer_paths(variables: Mapping[str, Any]) -> list[str]:
  """The layer paths ("stem/conv", "block1/depthwise_norm") of a variables tree, in order, once each."""
  seen: dict[str, None] = {}
  for collection in variables.values():
    for key_path, _ in jax.tree_util.tree_flatten_with_path(collection)[0]:
      seen["/".join(str(k.key) for k in key_path[:-1])] = None
  return list(seen)


def convert(tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A reference tensor in the layout of a pwconv leaf of ``shape`` (see the module docstring)."""
  if tensor.ndim == 4 and len(shape) == 4:
    return tensor.transpose(2, 3, 1, 0)
  if tensor.ndim == 4 and len(shape) == 2 and tensor.shape[2:] == (1, 1):
    return tensor[:, :, 0, 0].T
  if tensor.ndim == 2 and len(shape) == 2:
    return tensor.T
  return tensor


def reference_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
  """The shape a reference tensor of rank ``ndim`` must have to fill a pwconv leaf of ``shape``
  (the inverse of :func:`convert`)."""
  if ndim == 4 and len(shape) == 4:
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  if ndim == 4 and len(shape) == 2:
    return (shape[1], shape[0], 1, 1)
  if ndim == 2 and len(shape) == 2:
    return (shape[1], shape[0])
  return shape


def assign(template: Mapping[str, Any], state_dict: Mapping[str, Any], names: Mapping[str, str], *,
           target: str = "the network", ignore: Iterable[str] = ()) -> dict[str, Any]:
  """Variables with ``template``'s structure, shapes and dtypes, every leaf from ``state_dict``.

  Args:
    template: the network's variables or their shapes (``jax.eval_shape`` of ``init``).
    state_dict: reference tensor name -> array (numpy, JAX or PyTorch).
    names: pwconv layer path -> the reference's prefix for that layer. A key "layer/leaf" names one
      leaf's tensor in full instead (for a leaf whose name does not follow :data:`LEAF_NAMES`).
    target: what the variables belong to, for error messages.
    ignore: reference tensor names that are known to have no pwconv counterpart.

  Returns:
    ``{collection: nested dict of jnp arrays}``.

  Raises:
    ValueError: unless every tensor is used and every leaf assigned with the right shape; the message
    lists the unused tensors, the missing ones and the shape mismatches (the first few of each).
  """
  tensors = {k: v for k, v in state_dict.items()}
  used: set[str] = set(ignore) & set(tensors)
  missing, mismatched = [], []

  def fill(collection: str, key_path: tuple[Any, ...], leaf: Any) -> Any:
    keys = [str(k.key) for k in key_path]
    layer, name = "/".join(keys[:-1]), keys[-1]
    full = f"{layer}/{name}" if layer else name
    if full in names:
      source = names[full]
    elif layer in names:
      source = f"{names[layer]}.{LEAF_NAMES.get(name, name)}" if names[layer] else name
      for extra in BOOKKEEPING:
        if f"{names[layer]}.{extra}" in tensors:
          used.add(f"{names[layer]}.{extra}")
    else:
      missing.append(f"{collection}/{full} (no reference name)")
      return None
    if source not in tensors:
      missing.append(f"{collection}/{full} <- {source!r}")
      return None
    used.add(source)
    tensor = to_numpy(tensors[source])
    value = convert(tensor, tuple(leaf.shape))
    if tuple(value.shape) != tuple(leaf.shape):
      needs = reference_shape(tuple(leaf.shape), tensor.ndim)
      mismatched.append(f"{source!r} is {tuple(tensor.shape)}, {collection}/{full} "
                        f"{tuple(leaf.shape)} needs {needs}")
      return None
    return jnp.asarray(np.asarray(value), dtype=leaf.dtype)

  out = {collection: jax.tree_util.tree_map_with_path(
             lambda p, leaf, c=collection: fill(c, p, leaf), tree)
         for collection, tree in template.items()}
  unused = [k for k in tensors if k not in used]
  if unused or missing or mismatched:
    parts = []
    for what, items in (("unused tensors", unused), ("missing", missing),
                        ("shape mismatches", mismatched)):
      if items:
        shown = "; ".join(items[:_SHOWN]) + ("; ..." if len(items) > _SHOWN else "")
        parts.append(f"{len(items)} {what}: {shown}")
    raise ValueError(f"weights: the state dict does not fit {target}: " + ". ".join(parts))
  return out
