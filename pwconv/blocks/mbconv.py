"""The mobile inverted bottleneck family: MBConv (MobileNetV3, EfficientNet) and Fused-MBConv
(EfficientNetV2), with the hard-swish / hard-sigmoid activations MobileNetV3 introduced.

Both blocks expand the input to a hidden width E, optionally squeeze-and-excite it, and project it
back with a linear 1x1 conv. MBConv expands with a 1x1 and filters with a depthwise kxk;
Fused-MBConv does both with one dense kxk conv, which costs more MACs but runs as one large
matmul-shaped op. Costs are MACs per example, padded taps counted; H, W is the input size and Ho, Wo
the output's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from pwconv import validate
from pwconv.blocks.base import CONV_PAIRS, Activation, Block, _kw, pair
from pwconv.blocks.classic import SqueezeExcite
from pwconv.layers import DropPath

Rounding = Callable[[float], int]


# relu6(x + 3) / 6 and x · relu6(x + 3) / 6: PyTorch's nn.Hardsigmoid (MobileNetV3's and GhostNet's
# SE gate) and nn.Hardswish (MobileNetV3's activation), as JAX defines them.
hard_sigmoid = jax.nn.hard_sigmoid
hard_swish = jax.nn.hard_swish


SE_BASES = ("input", "hidden")


class ExpandedBlock(Block):
  """What MBConv and Fused-MBConv share: the hidden width, the squeeze-excite and the residual.

  A base class: its subclasses define ``features``, ``expansion`` (t), ``kernel_size``, ``strides``
  and ``dilation``; the fields here are keyword-only.

  Attributes:
    round_hidden: rounds Cin·t to the hidden width E (``round``; timm and the TF references use
      ``pwconv.models.make_divisible``: multiples of 8).
    se_ratio: squeeze-excite on the hidden width with R reduced channels; None: no SE.
    se_from: what ``se_ratio`` is relative to. "input" (EfficientNet): the block input, so
      R = se_round(E·se_ratio/t), which is se_round(Cin·se_ratio) when E = Cin·t. "hidden"
      (MobileNetV3): R = se_round(E·se_ratio).
    se_round: rounds R (``round``: EfficientNet; MobileNetV3 rounds to multiples of 8 with
      ``make_divisible``). R is at least 1.
    se_act: the activation inside SE; None: the block's ``act`` (EfficientNet: swish; MobileNetV3
      forces ReLU).
    se_gate: the SE gate (sigmoid; MobileNetV3: :func:`hard_sigmoid`).
    residual: identity shortcut; None: where strides are 1 and Cin == F (False: timm's "noskip").
      True with other shapes adds a strided 1x1 projection + norm.
    drop_path_rate: stochastic depth on the residual branch (only with a shortcut); 0 is the
      identity.
  """
  round_hidden: Rounding = _kw(round)
  se_ratio: float | None = _kw(None)
  se_from: str = _kw("input")
  se_round: Rounding = _kw(round)
  se_act: Activation | None = _kw(None)
  se_gate: Activation = _kw(nn.sigmoid)
  residual: bool | None = _kw(None)
  drop_path_rate: float = _kw(0.0)

  def __post_init__(self):
    owner = type(self).__name__
    validate.number(owner, "expansion", self.expansion, low=0, low_open=True)
    if self.se_ratio is not None:
      validate.number(owner, "se_ratio", self.se_ratio, low=0, high=1, low_open=True)
    validate.one_of(owner, "se_from", self.se_from, SE_BASES)
    for name in ("round_hidden", "se_round", "se_gate"):
      if not callable(getattr(self, name)):
        raise TypeError(f"{owner}: {name} must be a callable, got {getattr(self, name)!r}")
    if self.se_act is not None and not callable(self.se_act):
      raise TypeError(f"{owner}: se_act must be a callable or None, got {self.se_act!r}")
    validate.boolean(owner, "residual", self.residual, allow_none=True)
    validate.number(owner, "drop_path_rate", self.drop_path_rate, low=0, high=1, high_open=True)
    super().__post_init__()

  def hidden_width(self, cin: int) -> int:
    """E = max(1, round_hidden(Cin·t)), the width of the expand conv (t != 1)."""
    return max(1, int(self.round_hidden(cin * self.expansion)))

  def se_width(self, hidden: int) -> int:
    """R, the reduced channels of the squeeze-excite on ``hidden`` channels."""
    ratio = self.se_ratio if self.se_from == "hidden" else self.se_ratio / self.expansion
    return max(1, int(self.se_round(hidden * ratio)))

  def excite(self, y: jax.Array, *, train: bool) -> jax.Array:
    """Squeeze-excite ``y`` (named "se") when ``se_ratio`` is set; 2·E·R MACs."""
    if self.se_ratio is None:
      return y
    se = SqueezeExcite(reduced_features=self.se_width(y.shape[-1]), gate=self.se_gate,
                       act=self.act if self.se_act is None else self.se_act, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="se")
    return se(y, train=train)

  def has_shortcut(self, cin: int) -> bool:
    if self.residual is None:
      return pair(self.strides) == (1, 1) and cin == self.features
    return self.residual

  def add_shortcut(self, x: jax.Array, y: jax.Array, *, train: bool) -> jax.Array:
    """Drop path on the branch ``y``, plus the shortcut of ``x``."""
    y = DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)
    return y + self.shortcut_branch(x, self.features, pair(self.strides), train=train)


class MBConv(ExpandedBlock):
  """Mobile inverted bottleneck: 1x1 expand -> depthwise kxk -> (SE) -> linear 1x1 project.

  MobileNetV3's and EfficientNet's block (MobileNetV2's inverted residual with any expansion, SE and
  a per-block activation). With t = 1 there is no expand conv: depthwise -> (SE) -> 1x1, the
  depthwise-separable first block of MobileNetV2/V3 and EfficientNet (timm's "ds").

  Attributes:
    features: output channels F.
    expansion: t, any ratio > 0 (MobileNetV3 uses 2.3, 2.5, 3.67 ...); E = round_hidden(Cin·t).
    kernel_size: (kh, kw) of the depthwise conv.
    strides: applied by the depthwise conv.
    dilation: (dh, dw) of the depthwise conv.
    (and the keyword fields of :class:`ExpandedBlock`: ``se_ratio``, ``se_from``, ``residual``,
    ``drop_path_rate`` ...)

  ``act`` follows the expand and the depthwise norms; the projection is linear.

  x: (N, H, W, Cin) -> (N, Ho, Wo, F). Cost: H·W·Cin·E (t != 1) + Ho·Wo·kh·kw·E + 2·E·R (SE)
  + Ho·Wo·E·F, plus Ho·Wo·Cin·F for a projection shortcut.
  """
  features: int
  expansion: float = 4.0
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  dilation: Sequence[int] = (1, 1)

  def __post_init__(self):
    validate.fields(self, positive=("features",), pairs=CONV_PAIRS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    y = x
    if self.expansion != 1:
      y = self.conv_norm_act(y, self.pointwise_layer(self.hidden_width(cin)), name="expand",
                             train=train)
    depthwise = self.depthwise_layer(self.kernel_size, pair(self.strides), self.dilation)
    y = self.conv_norm_act(y, depthwise, name="depthwise", train=train)
    y = self.excite(y, train=train)
    shortcut = self.has_shortcut(cin)
    y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="project", train=train,
                           act=False, last=shortcut)
    return self.add_shortcut(x, y, train=train) if shortcut else y


class FusedMBConv(ExpandedBlock):
  """Fused-MBConv (EfficientNet-EdgeTPU, EfficientNetV2): dense kxk expand -> (SE) -> linear 1x1.

  The 1x1 expand and the depthwise kxk of :class:`MBConv` fused into one dense kxk conv Cin -> E.
  With t = 1 it is a single kxk conv Cin -> F + norm + act (EfficientNetV2's first stage; timm's
  "cn" block), and a shortcut, when there is one, is added after the activation.

  Attributes:
    features: output channels F.
    expansion: t; E = round_hidden(Cin·t).
    kernel_size: (kh, kw) of the dense conv.
    strides: applied by the dense conv.
    dilation: (dh, dw) of the dense conv.
    (and the keyword fields of :class:`ExpandedBlock`; SE needs t != 1.)

  x: (N, H, W, Cin) -> (N, Ho, Wo, F). Cost: Ho·Wo·kh·kw·Cin·E + 2·E·R (SE) + Ho·Wo·E·F, or
  Ho·Wo·kh·kw·Cin·F for t = 1; plus Ho·Wo·Cin·F for a projection shortcut. Against MBConv at the
  same E: Ho·Wo·kh·kw·Cin·E in place of H·W·Cin·E + Ho·Wo·kh·kw·E, about kh·kw times the expand.
  """
  features: int
  expansion: float = 4.0
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  dilation: Sequence[int] = (1, 1)

  def __post_init__(self):
    validate.fields(self, positive=("features",), pairs=CONV_PAIRS)
    if self.expansion == 1 and self.se_ratio is not None:
      raise ValueError(f"{type(self).__name__}: se_ratio needs expansion != 1 (with t = 1 the "
                       f"block is one conv, with no hidden width to excite), got "
                       f"se_ratio={self.se_ratio}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    strides = pair(self.strides)
    shortcut = self.has_shortcut(cin)
    if self.expansion == 1:
      conv = self.conv_layer(self.features, self.kernel_size, strides, self.dilation)
      y = self.conv_norm_act(x, conv, name="conv", train=train, last=shortcut)
    else:
      conv = self.conv_layer(self.hidden_width(cin), self.kernel_size, strides, self.dilation)
      y = self.conv_norm_act(x, conv, name="expand", train=train)
      y = self.excite(y, train=train)
      y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="project", train=train,
                             act=False, last=shortcut)
    return self.add_shortcut(x, y, train=train) if shortcut else y
