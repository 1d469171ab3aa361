"""torchvision and timm state dicts -> a pwconv network and its variables.

The network is the registered pwconv counterpart of the reference model (:mod:`pwconv.models.registry`),
built with what makes it compute the reference's function: symmetric padding, the reference's norm
epsilon, ``num_classes`` read from the classifier's shape. ``module.apply(variables, x)`` on NHWC input
then gives the reference's eval-mode logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate
from pwconv.models import registry
from pwconv.weights.files import to_numpy
from pwconv.weights.mapping import assign, layer_paths


def from_torchvision(name: str, state_dict: Mapping[str, Any], *, num_classes: int | None = None,
                     seed: int = 0, **model_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """The pwconv network of torchvision's ``name`` with ``state_dict``'s weights.

  Args:
    name: torchvision's model name: "mobilenet_v2", "resnet50", "squeezenet1_0", "googlenet" (its
      auxiliary classifiers, when the state dict has them, are dropped: eval mode never runs them).
    state_dict: the model's ``state_dict()`` (or :func:`pwconv.weights.load` of its file): names to
      numpy arrays or torch tensors.
    num_classes: a new head for fine-tuning: when it differs from the checkpoint's, the classifier
      is initialised afresh (from ``seed``) with this many outputs and the checkpoint's is dropped;
      None (or the checkpoint's own count) keeps the loaded classifier.
    seed: the seed of the new classifier's initialisation.
    **model_kwargs: passed to the network (e.g. ``dtype=jnp.bfloat16``, ``depthwise_conv=...``, or a
      reduced ``width_multiplier`` matching a reduced reference model).

  Returns:
    ``(module, variables)`` with ``module.apply(variables, x)`` = the reference's eval-mode logits for
    NHWC ``x`` (``train=True`` trains it: BatchNorm statistics in "batch_stats").
  """
  return _from_reference("torchvision", name, state_dict, num_classes, seed, model_kwargs)


def from_timm(name: str, state_dict: Mapping[str, Any], *, num_classes: int | None = None,
              seed: int = 0, **model_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
  """The pwconv network of timm's ``name`` with ``state_dict``'s weights.

  Args:
    name: timm's model name ("mobilenetv2_100", "resnet50", "mobilenetv3_large_100", ...;
      ``pwconv.models.registry.find_reference`` says which are known).
    state_dict, num_classes, seed, model_kwargs: as :func:`from_torchvision`.

  Returns:
    ``(module, variables)``, as :func:`from_torchvision`.
  """
  return _from_reference("timm", name, state_dict, num_classes, seed, model_kwargs)


def _from_reference(library: str, name: str, state_dict: Mapping[str, Any], num_classes: int | None,
                    seed: int, model_kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
  owner = f"from_{library}"
  entry, ref = registry.find_reference(library, name)
  if not isinstance(state_dict, Mapping):
    raise TypeError(f"{owner}: state_dict must be a mapping of tensor names to arrays (e.g. "
                    f"pwconv.weights.load(path)), got {type(state_dict).__name__}")
  if ref.classifier not in state_dict:
    raise ValueError(f"{owner}: {name!r} state dict has no classifier weight {ref.classifier!r}; is "
                     f"it a {library} {name} checkpoint?")
  if num_classes is not None:
    validate.positive_int(owner, "num_classes", num_classes)
  if "num_classes" in model_kwargs:
    raise TypeError(f"{owner}: pass num_classes as the keyword argument of {owner} (a new head), "
                    "not as a model argument")
  saved_classes = int(to_numpy(state_dict[ref.classifier]).shape[0])
  module = entry.factory(num_classes=saved_classes, **{**ref.kwargs, **model_kwargs})
  x = jnp.zeros((1, entry.resolution, entry.resolution, 3), jnp.float32)
  template = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  names = ref.names(module, layer_paths(template))
  ignore = [k for k in state_dict if ref.ignore and str(k).startswith(ref.ignore)]
  variables = assign(template, state_dict, names, target=f"pwconv {entry.name} ({library} {name})",
                     ignore=ignore)
  if num_classes is None or num_classes == saved_classes:
    return module, variables
  return _new_head(module.clone(num_classes=num_classes), variables, x, seed)


def _new_head(module: nn.Module, loaded: dict[str, Any], x: jax.Array, seed: int
              ) -> tuple[nn.Module, dict[str, Any]]:
  """``loaded`` with the leaves whose shape depends on ``num_classes`` initialised afresh.

  Only those leaves leave the compiled initialiser, so the convolutions it would run for the other
  leaves are dead code, removed before anything runs: about a second for a full ResNet-50 on CPU.
  """
  leaves, treedef = jax.tree.flatten(loaded)

  def head(key: jax.Array) -> dict[int, jax.Array]:
    fresh = treedef.flatten_up_to(module.init(key, x))
    return {i: new for i, (new, old) in enumerate(zip(fresh, leaves)) if new.shape != old.shape}

  for i, value in jax.jit(head)(jax.random.key(seed)).items():
    leaves[i] = value
  return module, treedef.unflatten(leaves)
