"""GoogLeNet (Inception v1) as the paper builds it."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv.blocks import Bottleneck, DenseConv, InceptionModule
from pwconv.models import registry
from pwconv.models.network import Network, kw_only

# Table 1: inception modules as (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), grouped by
# max pool 3x3/2; the groups are the paper's 3a-3b, 4a-4e, 5a-5b.
GOOGLENET = (((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
             ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
              (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
             ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)))


class GoogLeNet(Network):
  """GoogLeNet (Szegedy et al. 2014), without the auxiliary classifiers and local response norms.

  conv 7x7/2 64 -> max pool -> conv 1x1 64 -> conv 3x3 192 (a :class:`~pwconv.Bottleneck` with
  ``expand=False``, the table's "depth 2" row) -> max pool -> inception 3a, 3b -> max pool -> 4a-4e ->
  max pool -> 5a, 5b -> global average pool -> dropout -> FC. Max pools are 3x3/2, padded by the
  ``padding`` convention. Local response normalisation has neither parameters nor MACs and is left
  out, as in later reimplementations.

  Attributes:
    num_classes: outputs of the FC layer.
    stem: (conv 7x7/2, #3x3 reduce, #3x3) filters.
    inceptions: groups of :class:`~pwconv.InceptionModule` rows, the first group after the stem's max pool,
      each next group after another max pool; named inception_3a, 3b, 4a, ...
    dropout_rate: dropout before the FC layer (paper: 0.4).
  """
  num_classes: int = 1000
  stem: tuple[int, int, int] = kw_only()
  inceptions: Sequence[Sequence[tuple[int, int, int, int, int, int]]] = kw_only()
  dropout_rate: float = kw_only(default=0.0)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv1, reduce, conv2 = self.stem
    x = DenseConv(conv1, (7, 7), strides=(2, 2), **self.knobs(), name="conv1")(x, train=train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.pad((3, 3)))
    x = Bottleneck(conv2, reduce, expand=False, **self.knobs(), name="conv2")(x, train=train)
    for stage, group in enumerate(self.inceptions, start=3):
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.pad((3, 3)))
      for j, row in enumerate(group):
        x = InceptionModule(*row, **self.knobs(), name=f"inception_{stage}{chr(ord('a') + j)}")(
            x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


googlenet = functools.partial(GoogLeNet, stem=(64, 64, 192), inceptions=GOOGLENET, dropout_rate=0.4,
                              norm=None)

registry.register(
    "googlenet", googlenet, family="googlenet",
    source="Szegedy et al. 2014, Going deeper with convolutions, Sec. 5 (about 1.5 billion "
           "multiply-adds) and Table 1 (params: its column sums to 6.8M). Table 1 misprints two ops "
           "entries: conv1 is 112·112·7·7·3·64 = 118M, not 34M; inception (5a), from its own row, is "
           "51M, not 54M; corrected, the column sums to 1.58G",
    figures={
        "macs": 1_500_000_000, "params": 6_800_000,
        # Table 1's params and ops columns, keyed by this module's layer names.
        "rows": {
            "conv1": {"params": 2_700, "macs": 34_000_000},
            "conv2": {"params": 112_000, "macs": 360_000_000},
            "inception_3a": {"params": 159_000, "macs": 128_000_000},
            "inception_3b": {"params": 380_000, "macs": 304_000_000},
            "inception_4a": {"params": 364_000, "macs": 73_000_000},
            "inception_4b": {"params": 437_000, "macs": 88_000_000},
            "inception_4c": {"params": 463_000, "macs": 100_000_000},
            "inception_4d": {"params": 580_000, "macs": 119_000_000},
            "inception_4e": {"params": 840_000, "macs": 170_000_000},
            "inception_5a": {"params": 1_072_000, "macs": 54_000_000},
            "inception_5b": {"params": 1_388_000, "macs": 71_000_000},
            "classifier": {"params": 1_000_000, "macs": 1_000_000},
        }})
