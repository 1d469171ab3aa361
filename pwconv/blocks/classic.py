"""The classic blocks built around the 1x1 convolution (Flax linen).

Every block is a linen dataclass whose fields read like its paper's table, plus the shared keyword-only
knobs of :class:`~pwconv.blocks.base.Knobs` (``norm``, ``act``, ``use_bias``, ``zero_init_last``,
``padding``, ``depthwise_conv``, ``dtype``, ``param_dtype``). ``__call__(x, *, train=False)`` takes
x (N, H, W, C); ``train`` switches BatchNorm to batch statistics. ``dense_equivalent(in_features)`` returns the
module the block stands in for, so :func:`pwconv.savings` can compare the two.

Costs below are MACs per example in the paper convention (padded taps counted); Ho, Wo is the output size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pwconv import ops
from pwconv import validate
from pwconv.blocks.base import CONV_PAIRS, Block, Identity, pair
from pwconv.layers import PointwiseConv

Activation = Callable[[jax.Array], jax.Array]


class Bottleneck(Block):
  """1x1 reduce -> kxk -> (1x1 expand): the bottleneck of ResNet (expand=True) or Inception (False).

  Attributes:
    features: output channels F.
    reduced_features: channels R after the 1x1 reduction.
    kernel_size: (kh, kw) of the middle conv.
    strides: applied by the kxk conv (ResNet v1.5).
    expand: True: 1x1 reduce to R, kxk R -> R, 1x1 expand to F (ResNet). False: 1x1 reduce to R, then
      kxk R -> F (the Inception reduction).
    residual: add a shortcut (a 1x1 projection when shapes differ) before the last activation;
      None means True when ``expand`` else False.
    dilation: (dh, dw) of the kxk conv.

  Cost: H·W·Cin·R + Ho·Wo·kh·kw·R·R + Ho·Wo·R·F (expand=True), or H·W·Cin·R + Ho·Wo·kh·kw·R·F (False),
  plus Ho·Wo·Cin·F for a projection shortcut. The seed example, 28x28x128 -> 64, 5x5, R=32:
  3,211,264 + 40,140,800 = 43,352,064 MACs against 160,563,200 for the dense 5x5.
  """
  features: int
  reduced_features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  expand: bool = True
  residual: bool | None = None
  dilation: Sequence[int] = (1, 1)

  def __post_init__(self):
    validate.fields(self, positive=("features", "reduced_features"), pairs=CONV_PAIRS,
                    booleans=("expand",), optional_booleans=("residual",))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    strides = pair(self.strides)
    residual = self.expand if self.residual is None else self.residual
    y = self.conv_norm_act(x, self.pointwise_layer(self.reduced_features),
                           name="reduce", train=train)
    mid = self.reduced_features if self.expand else self.features
    y = self.conv_norm_act(y, self.conv_layer(mid, self.kernel_size, strides, self.dilation), name="conv",
                           train=train, act=self.expand or not residual,
                           last=residual and not self.expand)
    if self.expand:
      y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="expand",
                             train=train, act=False, last=residual)
    if residual:
      y = y + self.shortcut_branch(x, self.features, strides, train=train)
    return self.activate(y) if (residual or self.expand) else y


class DepthwiseSeparable(Block):
  """Depthwise kxk -> pointwise 1x1: MobileNet's (and Xception's) factorised convolution.

  Attributes:
    features: output channels F.
    kernel_size: (kh, kw) of the depthwise conv.
    strides: applied by the depthwise conv.
    depth_multiplier: m; the depthwise conv outputs Cin·m channels.
    dilation: (dh, dw) of the depthwise conv.
    mid_act: activation between depthwise and pointwise (MobileNet: True; Xception found it better
      without: False).
    residual: add a shortcut (1x1 projection when shapes differ) before the last activation.

  Cost: Ho·Wo·kh·kw·Cin·m + Ho·Wo·Cin·m·F (+ Ho·Wo·Cin·F for a projection shortcut), against
  Ho·Wo·kh·kw·Cin·F dense: a ratio of 1/F + 1/(kh·kw) (MobileNet, eq. 5) for m = 1.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  depth_multiplier: int = 1
  dilation: Sequence[int] = (1, 1)
  mid_act: bool = True
  residual: bool = False

  def __post_init__(self):
    validate.fields(self, positive=("features", "depth_multiplier"), pairs=CONV_PAIRS,
                    booleans=("mid_act", "residual"))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    strides = pair(self.strides)
    depthwise = self.depthwise_layer(self.kernel_size, strides, self.dilation, self.depth_multiplier)
    y = self.conv_norm_act(x, depthwise, name="depthwise", train=train, act=self.mid_act)
    y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="pointwise",
                           train=train, act=not self.residual, last=self.residual)
    if self.residual:
      y = self.activate(y + self.shortcut_branch(x, self.features, strides, train=train))
    return y


class SqueezeExcite(Block):
  """Squeeze-and-Excitation: global pool -> 1x1 to R -> act -> 1x1 to C -> gate -> rescale channels.

  Attributes:
    ratio: R = max(1, int(C·ratio)) unless ``reduced_features`` is given.
    reduced_features: R directly (EfficientNet sizes it from the block's input, not its width).
    gate: the channel gate (sigmoid; MobileNetV3 uses hard sigmoid).

  Of :class:`Block`'s knobs: ``act`` follows the reduction (ReLU); ``use_bias`` defaults to True (the
  two 1x1 convs act on pooled vectors and have biases, as in the paper); ``norm`` and
  ``zero_init_last`` are accepted, so a network can hand every block the same knobs, and unused: SE
  has no norm.

  Cost: 2·C·R MACs per example, params 2·C·R + R + C. ``dense_equivalent`` is the identity: SE adds
  cost and saves none, so its savings ratio is 0.
  """
  ratio: float = 0.25
  reduced_features: int | None = None
  gate: Activation = nn.sigmoid

  def __post_init__(self):
    owner = type(self).__name__
    validate.number(owner, "ratio", self.ratio, low=0, high=1, low_open=True)
    if self.reduced_features is not None:
      validate.positive_int(owner, "reduced_features", self.reduced_features)
    if not callable(self.gate):
      raise TypeError(f"{owner}: gate must be a callable (e.g. nn.sigmoid), got {self.gate!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no norm inside
    c = self.input_channels(x)
    reduced = self.reduced_features or max(1, int(c * self.ratio))
    conv = functools.partial(PointwiseConv, use_bias=self.unnormed_bias(),
                             dtype=self.dtype, param_dtype=self.param_dtype)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.activate(conv(reduced, name="reduce")(s))
    s = self.gate(conv(c, name="expand")(s))
    x = self.in_dtype(x)
    return x * s.astype(x.dtype)

  def dense_equivalent(self, in_features: int) -> Identity:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return Identity(parent=None)


class InvertedResidual(Block):
  """MobileNetV2's inverted residual: 1x1 expand -> depthwise kxk -> (SE) -> linear 1x1 project.

  Attributes:
    features: output channels F.
    expansion: t; the hidden width is E = Cin·t (no expand conv when t = 1).
    kernel_size: (kh, kw) of the depthwise conv.
    strides: applied by the depthwise conv.
    se_ratio: add Squeeze-Excite on the hidden width with R = max(1, int(Cin·se_ratio)) (EfficientNet).
    residual: identity shortcut; None means "when strides are 1 and Cin == F" (MobileNetV2). True with
      different shapes adds a 1x1 projection.
    dilation: (dh, dw) of the depthwise conv.

  The projection has no activation (the "linear bottleneck"). Cost: H·W·Cin·E (t > 1)
  + Ho·Wo·kh·kw·E + Ho·Wo·E·F (+ 2·E·R with SE, + Ho·Wo·Cin·F for a projection shortcut).
  """
  features: int
  expansion: int = 6
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  se_ratio: float | None = None
  residual: bool | None = None
  dilation: Sequence[int] = (1, 1)

  def __post_init__(self):
    validate.fields(self, positive=("features", "expansion"), pairs=CONV_PAIRS,
                    optional_booleans=("residual",))
    if self.se_ratio is not None:
      validate.number(type(self).__name__, "se_ratio", self.se_ratio, low=0, high=1, low_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cin = self.input_channels(x)
    strides = pair(self.strides)
    hidden = cin * self.expansion
    y = x
    if self.expansion != 1:
      y = self.conv_norm_act(y, self.pointwise_layer(hidden), name="expand", train=train)
    depthwise = self.depthwise_layer(self.kernel_size, strides, self.dilation)
    y = self.conv_norm_act(y, depthwise, name="depthwise", train=train)
    if self.se_ratio is not None:
      y = SqueezeExcite(reduced_features=max(1, int(cin * self.se_ratio)), act=self.act or nn.relu,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="se")(y, train=train)
    residual = (strides == (1, 1) and cin == self.features) if self.residual is None else self.residual
    y = self.conv_norm_act(y, self.pointwise_layer(self.features), name="project",
                           train=train, act=False, last=residual)
    if residual:
      y = y + self.shortcut_branch(x, self.features, strides, train=train)
    return y


class InceptionModule(Block):
  """GoogLeNet's Inception module: four parallel branches concatenated on channels.

  Branches: 1x1 (f1x1); 1x1 reduce (f3x3_reduce) -> 3x3 (f3x3); 1x1 reduce (f5x5_reduce) -> 5x5 (f5x5);
  3x3 max pool (stride 1) -> 1x1 projection (pool_proj). Output channels f1x1 + f3x3 + f5x5 + pool_proj.

  Attributes:
    naive: the paper's naive module (Fig. 2a): no 1x1 reductions and no pool projection, so the output
      has f1x1 + f3x3 + f5x5 + Cin channels. ``dense_equivalent`` returns this form.
    branch5x5_kernel_size: (kh, kw) of the "5x5" branch's conv: (5, 5) as the paper; torchvision's
      GoogLeNet has (3, 3) there (a known bug its weights were trained with, pytorch/vision#906).

  Cost: H·W·(Cin·(f1x1 + f3x3_reduce + f5x5_reduce + pool_proj) + 9·f3x3_reduce·f3x3
  + kh·kw·f5x5_reduce·f5x5) with (kh, kw) = branch5x5_kernel_size; inception (3a), 28x28x192:
  128,049,152 MACs.
  """
  f1x1: int
  f3x3_reduce: int
  f3x3: int
  f5x5_reduce: int
  f5x5: int
  pool_proj: int
  naive: bool = False
  branch5x5_kernel_size: Sequence[int] = (5, 5)

  def __post_init__(self):
    validate.fields(self, positive=("f1x1", "f3x3_reduce", "f3x3", "f5x5_reduce", "f5x5",
                                    "pool_proj"), booleans=("naive",),
                    pairs=("branch5x5_kernel_size",))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    unit = functools.partial(self.conv_norm_act, train=train)
    b1 = unit(x, self.pointwise_layer(self.f1x1), name="branch1x1")
    pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=self.pad((3, 3)))
    if self.naive:
      b3 = unit(x, self.conv_layer(self.f3x3, (3, 3)), name="branch3x3")
      b5 = unit(x, self.conv_layer(self.f5x5, self.branch5x5_kernel_size), name="branch5x5")
      return jnp.concatenate([b1, b3, b5, pooled.astype(b1.dtype)], axis=-1)
    b3 = unit(unit(x, self.pointwise_layer(self.f3x3_reduce), name="branch3x3_reduce"),
              self.conv_layer(self.f3x3, (3, 3)), name="branch3x3")
    b5 = unit(unit(x, self.pointwise_layer(self.f5x5_reduce), name="branch5x5_reduce"),
              self.conv_layer(self.f5x5, self.branch5x5_kernel_size), name="branch5x5")
    bp = unit(pooled, self.pointwise_layer(self.pool_proj), name="pool_proj")
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)

  def dense_equivalent(self, in_features: int) -> InceptionModule:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.clone(naive=True, parent=None, name=None)


class FireModule(Block):
  """SqueezeNet's Fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated.

  Attributes:
    squeeze: channels S of the 1x1 squeeze.
    expand1x1: channels of the 1x1 expand branch.
    expand3x3: channels of the 3x3 expand branch.
    residual: SqueezeNet's bypass (Sec. 6): the input is added to the activated, concatenated expand
      output, with no activation after the sum; the "simple" identity bypass when the channels
      match, else the "complex" one, a 1x1 conv (+ norm).

  Cost: H·W·(Cin·S + S·expand1x1 + 9·S·expand3x3), plus H·W·Cin·(expand1x1 + expand3x3) for a
  complex bypass; dense equivalent: one 3x3 conv Cin -> expand1x1 + expand3x3.
  """
  squeeze: int
  expand1x1: int
  expand3x3: int
  residual: bool = False

  def __post_init__(self):
    validate.fields(self, positive=("squeeze", "expand1x1", "expand3x3"), booleans=("residual",))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    s = self.conv_norm_act(x, self.pointwise_layer(self.squeeze), name="squeeze", train=train)
    e1 = self.conv_norm_act(s, self.pointwise_layer(self.expand1x1), name="expand1x1", train=train,
                            last=self.residual)
    e3 = self.conv_norm_act(s, self.conv_layer(self.expand3x3, (3, 3)), name="expand3x3", train=train,
                            last=self.residual)
    y = jnp.concatenate([e1, e3], axis=-1)
    if self.residual:
      y = y + self.shortcut_branch(x, y.shape[-1], (1, 1), train=train)
    return y

  def dense_equivalent(self, in_features: int) -> nn.Module:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.dense_conv(self.expand1x1 + self.expand3x3, (3, 3))


class ShuffleUnit(Block):
  """ShuffleNet (v1) unit: grouped 1x1 -> channel shuffle -> depthwise 3x3 -> grouped 1x1.

  Attributes:
    features: output channels F.
    groups: g, the groups of both 1x1 convs; divides the bottleneck width and F.
    strides: (1, 1): the residual is added (a 1x1 projection when Cin != F). (2, 2): the input, average
      pooled 3x3/2, is concatenated, so the main branch outputs F - Cin channels (requires F > Cin).
    bottleneck_ratio: bottleneck width B = F·ratio, rounded down to a multiple of g (paper: 1/4).
    group_first: group the first 1x1 (the paper does not in its first stage, where Cin = 24).

  Cost: H·W·Cin·B/g' + Ho·Wo·9·B + Ho·Wo·B·F'/g (g' = g if group_first else 1; F' the main branch's
  output), + H·W·Cin·F for the 1x1 projection shortcut of a stride-1 unit with Cin != F (ShuffleNet
  has none). The depthwise conv has no activation after it, as in the paper.
  """
  features: int
  groups: int = 3
  strides: Sequence[int] = (1, 1)
  bottleneck_ratio: float = 0.25
  group_first: bool = True

  def __post_init__(self):
    owner = type(self).__name__
    validate.fields(self, positive=("features", "groups"), booleans=("group_first",))
    if tuple(validate.int_pair(owner, "strides", self.strides)) not in ((1, 1), (2, 2)):
      raise ValueError(f"{owner}: strides must be (1, 1) or (2, 2), got {self.strides!r}")
    validate.number(owner, "bottleneck_ratio", self.bottleneck_ratio, low=0, high=1, low_open=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    owner = type(self).__name__
    cin = self.input_channels(x)
    strides = validate.int_pair(owner, "strides", self.strides)
    downsample = strides == (2, 2)
    out = self.features - cin if downsample else self.features
    if out < 1:
      raise ValueError(f"{owner}: with strides (2, 2) features must exceed the input channels {cin} "
                       f"(the pooled input is concatenated), got features={self.features}")
    if out % self.groups:
      raise ValueError(f"{owner}: groups={self.groups} must divide the main branch's output "
                       f"channels {out}")
    bottleneck = int(self.features * self.bottleneck_ratio) // self.groups * self.groups
    if bottleneck < 1:
      raise ValueError(f"{owner}: features·bottleneck_ratio = {self.features * self.bottleneck_ratio} "
                       f"leaves no channels for groups={self.groups}")
    first_groups = self.groups if self.group_first else 1
    if cin % first_groups:
      raise ValueError(f"{owner}: groups={self.groups} must divide the input channels {cin} "
                       "(or set group_first=False)")
    y = self.conv_norm_act(x, self.pointwise_layer(bottleneck, groups=first_groups),
                           name="reduce", train=train)
    y = ops.channel_shuffle(y, self.groups)
    depthwise = self.depthwise_layer((3, 3), strides)
    y = self.conv_norm_act(y, depthwise, name="depthwise", train=train, act=False)
    y = self.conv_norm_act(y, self.pointwise_layer(out, groups=self.groups),
                           name="expand", train=train, act=False, last=not downsample)
    if downsample:
      pooled = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=self.pad((3, 3)),
                           count_include_pad=False)
      return self.activate(jnp.concatenate([y, pooled.astype(y.dtype)], axis=-1))
    return self.activate(y + self.shortcut_branch(x, out, strides, train=train))

  def dense_equivalent(self, in_features: int) -> nn.Module:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.dense_conv(self.features, (3, 3), self.strides)


class MLPConv(Block):
  """Network-in-Network's mlpconv: a kxk conv followed by 1x1 conv + activation layers.

  The third claim of the 1x1 conv: each extra 1x1 layer adds a non-linearity for H·W·F² MACs.

  Attributes:
    features: output channels F of every layer.
    kernel_size: (kh, kw) of the first conv.
    strides: applied by the first conv.
    pointwise_layers: L, the number of 1x1 conv + activation layers after it (NiN: 2).

  Cost: Ho·Wo·kh·kw·Cin·F + L·Ho·Wo·F²; ``dense_equivalent`` is the kxk conv alone.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  pointwise_layers: int = 2

  def __post_init__(self):
    validate.fields(self, positive=("features",), pairs=("kernel_size", "strides"))
    validate.positive_int(type(self).__name__, "pointwise_layers", self.pointwise_layers, minimum=0)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    y = self.conv_norm_act(x, self.conv_layer(self.features, self.kernel_size, self.strides), name="conv",
                           train=train)
    for i in range(self.pointwise_layers):
      y = self.conv_norm_act(y, self.pointwise_layer(self.features), name=f"pointwise{i}", train=train)
    return y
