"""MobileNetV4's Universal Inverted Bottleneck (Qin et al. 2024): where the depthwise convs sit
around the 1x1 expansion is the knob a search can turn.

Costs are MACs per example in the paper convention (padded taps counted); Ho, Wo is the output size.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks.base import Block, DenseConv, pair
from pwconv.layers import DropPath, LayerScale


class UniversalInvertedBottleneck(Block):
  """MobileNetV4's UIB: (start depthwise) -> 1x1 expand -> (middle depthwise) -> linear 1x1 project.

  The two optional depthwise convs give the four variants of the paper (Fig. 4):

  ====================  =============  ==============  ===========================================
  variant               start kernel   middle kernel   what it is
  ====================  =============  ==============  ===========================================
  IB                    None           kxk             MobileNetV2's inverted bottleneck
  ConvNeXt-like         kxk            None            spatial mixing before the expansion
  ExtraDW               kxk            kxk             both: deeper, wider receptive field, cheaply
  FFN                   None           None            two 1x1 convs, the transformer's MLP
  ====================  =============  ==============  ===========================================

  Every conv is followed by the norm; the expand and the middle depthwise by the activation too (the
  start depthwise and the projection are linear, as in timm and the TF reference).

  Attributes:
    features: output channels F.
    expansion: the hidden width is E = max(1, round(Cin·expansion)), unless ``hidden_features``.
    hidden_features: E directly (MobileNetV4 rounds Cin·expansion to a multiple of 8).
    start_kernel_size: (ka, ka') of the depthwise conv on the Cin input channels, or None for none.
    middle_kernel_size: (km, km') of the depthwise conv on the E hidden channels, or None for none.
    strides: applied by the middle depthwise conv when there is one, else by the start one; an FFN
      (no depthwise conv) must have strides 1.
    layer_scale_init: initial value of a per-channel learnt scale on the block's output (LayerScale,
      param "gamma"; MobileNetV4's hybrid models: 1e-5); None: no layer scale.
    drop_path_rate: stochastic depth of the residual branch (used only when the shortcut is there).
    residual: add the input (an identity shortcut) when strides are 1 and Cin == F; False never.

  x: (N, H, W, Cin) -> (N, Ho, Wo, F), Ho = ceil(H / s) for odd kernels.

  Cost, with Hs, Ws the size after the start depthwise (H, W unless it holds the stride):
  Hs·Ws·ka·ka'·Cin + Hs·Ws·Cin·E + Ho·Wo·km·km'·E + Ho·Wo·E·F, each depthwise term only when that
  conv is there; params ka·ka'·Cin + Cin·E + km·km'·E + E·F (+ norm scales and biases, + F with
  layer scale). ``dense_equivalent`` is the dense conv with the block's receptive field: kernel
  ka + km - 1 for ExtraDW (the middle conv sees km rows of the start conv's output, each of which
  sees ka input rows), the one kernel of IB and ConvNeXt-like, 1x1 for FFN.
  """
  features: int
  expansion: float = 4.0
  hidden_features: int | None = None
  start_kernel_size: int | Sequence[int] | None = None
  middle_kernel_size: int | Sequence[int] | None = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  layer_scale_init: float | None = None
  drop_path_rate: float = 0.0
  residual: bool = True

  def __post_init__(self):
    owner = type(self).__name__
    validate.fields(self, positive=("features",), pairs=("strides",), booleans=("residual",))
    validate.number(owner, "expansion", self.expansion, low=0, low_open=True)
    if self.hidden_features is not None:
      validate.positive_int(owner, "hidden_features", self.hidden_features)
    for name in ("start_kernel_size", "middle_kernel_size"):
      if getattr(self, name) is not None:
        validate.int_pair(owner, name, getattr(self, name))
    if (self.start_kernel_size is None and self.middle_kernel_size is None
        and pair(self.strides) != (1, 1)):
      raise ValueError(f"{owner}: strides must be (1, 1) without a depthwise conv (the FFN "
                       f"variant), got {self.strides!r}")
    if self.layer_scale_init is not None:
      validate.number(owner, "layer_scale_init", self.layer_scale_init)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  def hidden_width(self, in_features: int) -> int:
    """E for ``in_features`` input channels."""
    if self.hidden_features is not None:
      return self.hidden_features
    return max(1, round(in_features * self.expansion))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    strides = pair(self.strides)
    start, middle = self.start_kernel_size, self.middle_kernel_size
    y = x
    if start is not None:
      depthwise = self.depthwise_layer(start, strides if middle is None else (1, 1))
      y = self.conv_norm_act(y, depthwise, name="start_depthwise", train=train, act=False)
    y = self.conv_norm_act(y, self.pointwise_layer(self.hidden_width(cin)), name="expand",
                           train=train)
    if middle is not None:
      y = self.conv_norm_act(y, self.depthwise_layer(middle, strides), name="middle_depthwise",
                             train=train)
    residual = self.residual and strides == (1, 1) and cin == self.features
    y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="project", train=train,
                           act=False, last=residual)
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, param_dtype=self.param_dtype, name="layer_scale")(y)
    if residual:
      y = DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)
      y = y + self.in_dtype(x)
    return y

  def dense_equivalent(self, in_features: int) -> DenseConv:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    start = pair(self.start_kernel_size or 1)
    middle = pair(self.middle_kernel_size or 1)
    kernel = tuple(a + m - 1 for a, m in zip(start, middle))
    return self.dense_conv(self.features, kernel, self.strides)
