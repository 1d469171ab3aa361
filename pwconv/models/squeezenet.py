"""SqueezeNet 1.0: Fire modules between max pools, and a 1x1 conv as the classifier."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv.blocks import DenseConv, FireModule
from pwconv.layers import PointwiseConv
from pwconv.models import registry
from pwconv.models.network import Network, kw_only, max_pool_ceil

# Fire modules fire2..fire9 as (squeeze, expand1x1, expand3x3), in groups separated by max pool 3x3/2.
SQUEEZENET1_0 = (((16, 64, 64), (16, 64, 64), (32, 128, 128)),
                 ((32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256)),
                 ((64, 256, 256),))


class SqueezeNet(Network):
  """SqueezeNet (Iandola et al. 2016): conv 7x7/2 VALID, Fire modules between max pools, conv 1x1.

  conv1 -> max pool -> fires -> max pool -> fires -> max pool -> fires -> dropout -> conv10 1x1 to
  num_classes -> act -> global average pool. The pools are 3x3/2 unpadded, rounding up as in the
  reference implementation. There is no FC layer: conv10 is the classifier. Unpadded, so the
  ``padding`` convention changes nothing here (the Fire modules' 3x3 convs are stride 1).

  Attributes:
    num_classes: channels of conv10.
    stem: filters of conv1 (7x7/2).
    fires: groups of :class:`~pwconv.FireModule` (squeeze, expand1x1, expand3x3), each group after a
      max pool.
    dropout_rate: dropout before conv10 (paper: 0.5).
  """
  num_classes: int = 1000
  stem: int = kw_only()
  fires: Sequence[Sequence[tuple[int, int, int]]] = kw_only()
  dropout_rate: float = kw_only(default=0.0)

  @property
  def head_layers(self) -> tuple[str, ...]:
    """The final 1x1 conv, conv10 for the paper's eight Fire modules."""
    return (f"conv{2 + sum(len(group) for group in self.fires)}",)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = DenseConv(self.stem, (7, 7), strides=(2, 2), **self.knobs(padding="VALID"),
                  name="conv1")(x, train=train)
    k = 1
    for group in self.fires:
      x = max_pool_ceil(x)
      for squeeze, expand1x1, expand3x3 in group:
        k += 1
        x = FireModule(squeeze, expand1x1, expand3x3, **self.knobs(), name=f"fire{k}")(x, train=train)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = PointwiseConv(self.num_classes, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"conv{k + 1}")(x)
    return jnp.mean(self.activate(x), axis=(1, 2))


squeezenet1_0 = functools.partial(SqueezeNet, stem=96, fires=SQUEEZENET1_0, dropout_rate=0.5,
                                  norm=None)
squeezenet1_0.__doc__ = ("SqueezeNet 1.0 (Table 1), torchvision's squeezenet1_0: no norm (a bias "
                         "on every conv), He fan-out init. With norm=pwconv.batch_norm: BatchNorm "
                         "momentum 0.9 (PyTorch's 0.1), epsilon 1e-5.")


def _torchvision_names(module: SqueezeNet, layers: Sequence[str]) -> dict[str, str]:
  """pwconv layer -> torchvision's ``features.i`` (conv1, ReLU, pool, fire2, ...), classifier.1."""
  del layers
  names = {"conv1/conv": "features.0"}
  index, k = 1, 1  # features.1 is conv1's ReLU
  for group in module.fires:
    index += 1  # the max pool before the group
    for _ in group:
      index, k = index + 1, k + 1
      names.update({f"fire{k}/{conv}": f"features.{index}.{conv}"
                    for conv in ("squeeze", "expand1x1", "expand3x3")})
  names[f"conv{k + 1}"] = "classifier.1"
  return names


registry.register(
    "squeezenet1_0", squeezenet1_0, family="squeezenet",
    source="Iandola et al. 2016, SqueezeNet, Table 1 (params, exact); the paper gives no MACs: "
           "0.82 G is torchvision's figure for squeezenet1_0",
    figures={"macs": 820_000_000, "params": 1_248_424},
    references=[registry.Reference(library="torchvision", name="squeezenet1_0",
                                   classifier="classifier.1.weight", names=_torchvision_names,
                                   kwargs={"padding": "symmetric"})])
