"""Backbones: any registered network's feature maps at chosen strides, for detection and segmentation
heads (timm's ``features_only``).

:class:`FeatureNet` runs a network up to its head and returns, for each requested stride s, the output
of the network's last top-level layer whose output is 1/s of the input's size (s rounded to a power of
two): for ResNet-50 at
strides (4, 8, 16, 32), the last block of each stage (256, 512, 1024, 2048 channels); for
MobileNetV2, the last inverted residual at each stride (24, 32, 96, 320). The head (the layers a
network lists in ``head_layers``: the classifier, conv heads) never runs, so it has no variables here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import validate


class _HeadReached(Exception):
  """Raised when the backbone reaches its first head layer: every feature has been seen."""


class FeatureNet(nn.Module):
  """A network's feature maps at ``out_strides``; its variables live under "backbone".

  Attributes:
    backbone: a pwconv network (any :class:`~pwconv.models.Network` with ``head_layers``).
    out_strides: reductions of the input size to return, increasing (e.g. (4, 8, 16, 32)).

  ``__call__(x, *, train=False)``: x (N, H, W, C) -> a tuple of (N, H/s, W/s, C_s), one per stride.
  """
  backbone: nn.Module
  out_strides: Sequence[int] = (4, 8, 16, 32)

  def __post_init__(self):
    owner = type(self).__name__
    if not hasattr(self.backbone, "head_layers"):
      raise TypeError(f"{owner}: backbone must be a pwconv network (one with head_layers), got "
                      f"{type(self.backbone).__name__}")
    strides = [validate.positive_int(owner, "out_strides", s) for s in self.out_strides]
    if not strides or strides != sorted(set(strides)):
      raise ValueError(f"{owner}: out_strides must be increasing and not empty, got "
                       f"{tuple(self.out_strides)!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
    maps = self._run(x, train)
    missing = [s for s in self.out_strides if s not in maps]
    if missing:
      raise ValueError(f"{type(self).__name__}: {type(self.backbone).__name__} has no layer at "
                       f"stride {missing} of a {x.shape[1]}x{x.shape[2]} input; it reaches "
                       f"{sorted(maps)}")
    return tuple(maps[s][1] for s in self.out_strides)

  def _run(self, x: jax.Array, train: bool) -> dict[int, tuple[str, jax.Array]]:
    """{stride: (layer name, its output)} of the backbone's top-level layers before its head."""
    head = set(self.backbone.head_layers)
    height = x.shape[1]
    maps: dict[int, tuple[str, jax.Array]] = {}

    def capture(next_fun, args, kwargs, context):
      path = context.module.path
      top_level = (context.method_name == "__call__" and len(path) == 2 and path[0] == "backbone"
                   and not isinstance(context.module, nn.Dropout))
      if top_level and path[1] in head:
        raise _HeadReached
      out = next_fun(*args, **kwargs)
      if top_level and getattr(out, "ndim", 0) == 4:
        maps[_stride(height, out.shape[1])] = (path[1], out)
      return out

    with nn.intercept_methods(capture):
      try:
        self.backbone(x, train=train)
      except _HeadReached:
        pass
    return maps

  def feature_info(self, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """Per requested stride: {"stride", "module" (the layer it is taken from), "channels"}, for an
    input of ``input_shape`` (N, H, W, C); nothing is compiled."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    names: dict[int, str] = {}

    def info(module: FeatureNet, x: jax.Array) -> dict[int, jax.Array]:
      maps = module._run(x, False)
      names.update({s: name for s, (name, _) in maps.items()})
      return {s: out for s, (_, out) in maps.items()}

    variables = jax.eval_shape(lambda x: self.init(jax.random.key(0), x), x)
    outs = jax.eval_shape(lambda v, x: self.apply(v, x, method=info), variables, x)
    missing = [s for s in self.out_strides if s not in outs]
    if missing:
      raise ValueError(f"{type(self).__name__}: {type(self.backbone).__name__} has no layer at "
                       f"stride {missing} of a {x.shape[1]}x{x.shape[2]} input")
    return [{"stride": s, "module": names[s], "channels": int(outs[s].shape[-1])}
            for s in self.out_strides]


def _stride(height: int, out_height: int) -> int:
  """The power of two nearest height / out_height: an unpadded stem (SqueezeNet's 224 -> 109) or an
  odd size (65 -> 33) still reads as stride 2."""
  return 2 ** max(0, round(math.log2(height / out_height)))


def backbone_variables(variables: dict[str, Any], head_layers: Sequence[str]) -> dict[str, Any]:
  """A network's variables (e.g. from :mod:`pwconv.weights`) as its :class:`FeatureNet`'s: under
  "backbone", without the head's."""
  return {collection: {"backbone": {k: v for k, v in tree.items() if k not in head_layers}}
          for collection, tree in variables.items()}
