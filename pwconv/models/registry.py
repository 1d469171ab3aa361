"""The model registry: every network by name, with its paper figures and how its references name it.

Each family module registers its presets (``register("mobilenet_v2", mobilenet_v2, ...)``); users call
:func:`create` and :func:`list_models`, and :mod:`pwconv.weights` finds a torchvision or timm model's
pwconv counterpart through the :class:`Reference` entries.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn

# (module, pwconv layer paths) -> {pwconv layer path: reference state-dict prefix}.
NameMap = Callable[[nn.Module, Sequence[str]], Mapping[str, str]]


@dataclasses.dataclass(frozen=True)
class Reference:
  """A reference implementation of a registered network, and how its state dict maps onto pwconv's.

  Attributes:
    library: "torchvision" or "timm".
    name: the reference's own model name (``"mobilenet_v2"``, ``"mobilenetv3_large_100"``).
    classifier: state-dict key of the classifier's weight; ``num_classes`` is its first dimension.
    names: maps each pwconv layer path (``"block3/expand"``, ``"block3/expand_norm"``) to the
      reference's state-dict prefix (``"features.3.conv.0.0"``, ``"features.3.conv.0.1"``); see
      :func:`pwconv.weights.assign` for how the tensors under a prefix are converted.
    kwargs: keyword arguments that make the pwconv network compute what the reference computes
      (``padding="symmetric"``, a BatchNorm epsilon, ...), passed to the network's factory.
    ignore: state-dict name prefixes of modules the reference's eval-mode logits never use (such as
      torchvision GoogLeNet's auxiliary classifiers, "aux1."): accepted in a state dict and dropped.
  """
  library: str
  name: str
  classifier: str
  names: NameMap
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  ignore: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered network.

  Attributes:
    name: the registry name (``"mobilenet_v2"``).
    factory: called as ``factory(num_classes=..., **kwargs)``; returns a linen Module.
    family: the design family ("mobilenet", "resnet", "smallnet", ...).
    source: the paper (and the reference implementation the preset follows).
    figures: published figures at ``resolution``: ``{"macs": ..., "params": ...}`` (and more), empty
      when the paper gives none.
    resolution: the input size the figures are for.
    references: the reference implementations whose weights :mod:`pwconv.weights` can load.
  """
  name: str
  factory: Callable[..., nn.Module]
  family: str
  source: str = ""
  figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  resolution: int = 224
  references: tuple[Reference, ...] = ()


_REGISTRY: dict[str, Entry] = {}


def register(name: str, factory: Callable[..., nn.Module], *, family: str, source: str = "",
             figures: Mapping[str, Any] | None = None, resolution: int = 224,
             references: Sequence[Reference] = ()) -> Entry:
  """Adds a network to the registry (once per name) and returns its entry."""
  if name in _REGISTRY:
    raise ValueError(f"models.register: {name!r} is registered already")
  for ref in references:
    if ref.library not in ("torchvision", "timm"):
      raise ValueError(f"models.register: {name!r} reference library must be 'torchvision' or "
                       f"'timm', got {ref.library!r}")
  entry = Entry(name, factory, family, source, dict(figures or {}), resolution, tuple(references))
  _REGISTRY[name] = entry
  return entry


def entry(name: str) -> Entry:
  """The registry entry of ``name``; an unknown name is a ValueError with the closest names."""
  if not isinstance(name, str) or name not in _REGISTRY:
    close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"models: unknown model {name!r}{hint} (models.list_models() lists them)")
  return _REGISTRY[name]


def create(name: str, *, features_only: bool = False,
           out_strides: Sequence[int] = (4, 8, 16, 32), **kwargs: Any) -> nn.Module:
  """The network registered as ``name``, built with ``kwargs`` (``num_classes``, knobs, ...).

  ``features_only=True`` gives its backbone instead: a
  :class:`~pwconv.models.features.FeatureNet` returning the feature maps at ``out_strides``
  (``feature_info(input_shape)`` lists each one's layer and channels), as timm's ``features_only``.
  """
  if not isinstance(features_only, bool):
    raise TypeError(f"models.create: features_only must be True or False, got {features_only!r}")
  model = entry(name).factory(**kwargs)
  if not features_only:
    return model
  from pwconv.models.features import FeatureNet
  return FeatureNet(model, tuple(out_strides))


def list_models(pattern: str = "*") -> list[str]:
  """Registered names matching a shell-style ``pattern`` (``"mobilenet*"``), sorted."""
  if not isinstance(pattern, str):
    raise TypeError(f"models.list_models: pattern must be a string, got {type(pattern).__name__}")
  return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def entries() -> list[Entry]:
  """Every entry, in registration order."""
  return list(_REGISTRY.values())


def find_reference(library: str, name: str) -> tuple[Entry, Reference]:
  """The entry and reference whose ``library`` model is called ``name``."""
  known = []
  for e in _REGISTRY.values():
    for ref in e.references:
      if ref.library == library:
        known.append(ref.name)
        if ref.name == name:
          return e, ref
  close = difflib.get_close_matches(str(name), known, n=3)
  hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
  raise ValueError(f"weights: no pwconv network for {library} model {name!r}{hint}; known: "
                   f"{sorted(known)}")
