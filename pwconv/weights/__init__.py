"""Bringing weights in: read a file, map a torchvision or timm state dict onto a pwconv network.

- :func:`load`: ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` -> ``{name: numpy array}``.
- :func:`from_torchvision`, :func:`from_timm`: ``(name, state_dict) -> (module, variables)`` whose
  ``module.apply(variables, x_nhwc)`` gives the reference's eval-mode logits.
- :func:`assign`: the general tool underneath (a layer-name map -> variables), for user models.

Nothing is downloaded at run time: fetch a checkpoint by hand, then load it (see BUILD.md).
"""

from pwconv.weights.files import load, to_numpy
from pwconv.weights.mapping import LEAF_NAMES, assign, convert, layer_paths
from pwconv.weights.reference import from_timm, from_torchvision

__all__ = ["LEAF_NAMES", "assign", "convert", "from_timm", "from_torchvision", "layer_paths", "load",
           "to_numpy"]
