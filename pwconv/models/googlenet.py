"""GoogLeNet (Inception v1) as the paper builds it, and torchvision's variant (its weights load)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks import Bottleneck, DenseConv, InceptionModule
from pwconv.models import registry
from pwconv.models.network import Network, kw_only, max_pool_ceil

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
  ``padding`` convention (or unpadded, rounding up, with ``ceil_mode``). Local response
  normalisation has neither parameters nor MACs and is left out, as in later reimplementations.

  Attributes:
    num_classes: outputs of the FC layer.
    stem: (conv 7x7/2, #3x3 reduce, #3x3) filters.
    inceptions: groups of :class:`~pwconv.InceptionModule` rows, the first group after the stem's
      max pool, each next group after another max pool; named inception_3a, 3b, 4a, ...
    dropout_rate: dropout before the FC layer (paper: 0.4).
    ceil_mode: max pools without padding that round the output size up (PyTorch's
      ``ceil_mode=True``, as torchvision's GoogLeNet); False pads them by the ``padding``
      convention.
    pool_windows: the window of each stride-2 max pool: after the stem's conv 7x7, after its conv
      3x3, then before each later inception group (paper: all 3; torchvision's last is 2).
    branch5x5_kernel_size: the kernel of every inception's "5x5" branch (torchvision: 3x3).
  """
  num_classes: int = 1000
  stem: tuple[int, int, int] = kw_only()
  inceptions: Sequence[Sequence[tuple[int, int, int, int, int, int]]] = kw_only()
  dropout_rate: float = kw_only(default=0.0)
  ceil_mode: bool = kw_only(default=False)
  pool_windows: Sequence[int] = kw_only(default=(3, 3, 3, 3))
  branch5x5_kernel_size: Sequence[int] = kw_only(default=(5, 5))

  def __post_init__(self):
    owner = type(self).__name__
    validate.boolean(owner, "ceil_mode", self.ceil_mode)
    if (isinstance(self.pool_windows, str) or not isinstance(self.pool_windows, Sequence)
        or len(self.pool_windows) != len(self.inceptions) + 1):
      raise ValueError(f"{owner}: pool_windows must give one window per max pool "
                       f"({len(self.inceptions) + 1}: the stem's and one before each later "
                       f"inception group), got {self.pool_windows!r}")
    for window in self.pool_windows:
      validate.positive_int(owner, "pool_windows", window)
    validate.int_pair(owner, "branch5x5_kernel_size", self.branch5x5_kernel_size)
    super().__post_init__()

  def max_pool(self, x: jax.Array, window: int) -> jax.Array:
    if self.ceil_mode:
      return max_pool_ceil(x, window)
    return nn.max_pool(x, (window, window), strides=(2, 2), padding=self.pad((window, window)))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv1, reduce, conv2 = self.stem
    x = DenseConv(conv1, (7, 7), strides=(2, 2), **self.knobs(), name="conv1")(x, train=train)
    x = self.max_pool(x, self.pool_windows[0])
    x = Bottleneck(conv2, reduce, expand=False, **self.knobs(), name="conv2")(x, train=train)
    for stage, (group, window) in enumerate(zip(self.inceptions, self.pool_windows[1:]), start=3):
      x = self.max_pool(x, window)
      for j, row in enumerate(group):
        x = InceptionModule(*row, branch5x5_kernel_size=self.branch5x5_kernel_size, **self.knobs(),
                            name=f"inception_{stage}{chr(ord('a') + j)}")(x, train=train)
    return self.classify(x, self.num_classes, train=train, dropout_rate=self.dropout_rate)


googlenet = functools.partial(GoogLeNet, stem=(64, 64, 192), inceptions=GOOGLENET, dropout_rate=0.4,
                              norm=None)
googlenet.__doc__ = """GoogLeNet as the paper (Table 1): no norm (biases on every conv), 5x5
branches, 3x3/2 max pools padded by the ``padding`` convention, dropout 0.4. With
``norm=pwconv.batch_norm``: BatchNorm momentum 0.9 (PyTorch's 0.1), epsilon 1e-5."""

# torchvision.models.googlenet: BatchNorm (eps 1e-3) after every conv, a 3x3 conv in the "5x5"
# branch, max pools with ceil_mode (the last 2x2/2), dropout 0.2; PyTorch's symmetric padding.
googlenet_torchvision = functools.partial(
    GoogLeNet, stem=(64, 64, 192), inceptions=GOOGLENET, dropout_rate=0.2,
    norm=functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-3), padding="symmetric",
    ceil_mode=True, pool_windows=(3, 3, 3, 2), branch5x5_kernel_size=(3, 3))
googlenet_torchvision.__doc__ = """torchvision's GoogLeNet (``torchvision.models.googlenet``
without its auxiliary classifiers): conv -> BatchNorm (momentum 0.9 = PyTorch's 0.1, epsilon 1e-3)
-> ReLU everywhere, 3x3 convs in the "5x5" branches, unpadded ceil-mode max pools (the last 2x2/2),
dropout 0.2, symmetric padding. Its pretrained weights expect ``transform_input`` (see BUILD.md)."""

# pwconv layer -> torchvision's module: BasicConv2d ("x.conv", "x.bn") per conv.
_TORCHVISION_INCEPTION = {"branch1x1": "branch1", "branch3x3_reduce": "branch2.0",
                          "branch3x3": "branch2.1", "branch5x5_reduce": "branch3.0",
                          "branch5x5": "branch3.1", "pool_proj": "branch4.1"}
_TORCHVISION_STEM = {"conv1/conv": "conv1", "conv2/reduce": "conv2", "conv2/conv": "conv3"}


def _torchvision_names(module: GoogLeNet, layers: Sequence[str]) -> dict[str, str]:
  del module
  names = {"classifier": "fc"}
  for layer in layers:
    conv, norm = (layer[:-len("_norm")], ".bn") if layer.endswith("_norm") else (layer, ".conv")
    if conv in _TORCHVISION_STEM:
      names[layer] = _TORCHVISION_STEM[conv] + norm
    elif conv.startswith("inception_"):
      block, branch = conv.split("/")
      names[layer] = f"{block.replace('_', '')}.{_TORCHVISION_INCEPTION[branch]}{norm}"
  return names


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
registry.register(
    "googlenet_torchvision", googlenet_torchvision, family="googlenet",
    source="torchvision.models.googlenet (its documentation: 6,624,904 params, 1.50 GFLOPS, which "
           "count multiply-adds): BatchNorm, 3x3 convs in the 5x5 branches, ceil-mode pools; "
           "1,498,376,192 MACs",
    figures={"macs": 1_500_000_000, "params": 6_624_904},
    references=[registry.Reference(
        library="torchvision", name="googlenet", classifier="fc.weight", names=_torchvision_names,
        kwargs={"padding": "symmetric"}, ignore=("aux1.", "aux2."))])
