"""What every block shares: the keyword knobs, the conv -> norm -> act unit, and the dense baseline.

:class:`Knobs` holds the keyword-only fields that a network hands to every block it builds (``norm``,
``act``, ``use_bias``, ``zero_init_last``, ``padding``, ``depthwise_conv``, ``dtype``,
``param_dtype``);
:class:`Block` adds the pieces blocks are made of; :class:`DenseConv` is the kxk conv every block's
``dense_equivalent`` returns.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pwconv import validate
from pwconv.layers import DepthwiseConv, PointwiseConv, he_normal, he_normal_fan_in

ModuleDef = Callable[..., nn.Module]
Activation = Callable[[jax.Array], jax.Array]

batch_norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

# The padding conventions of the ``padding`` knob. "SAME": TensorFlow/XLA, out = ceil(in / stride),
# the odd row/column of padding at the bottom/right. "symmetric": (k - 1)·d // 2 on every side, as
# PyTorch, torchvision and timm pad; the two differ only for strided convs and pools.
PADDINGS = ("SAME", "symmetric")


def conv_padding(convention: str, kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1)
                 ) -> str | tuple[tuple[int, int], tuple[int, int]]:
  """The padding argument of ``nn.Conv``, ``DepthwiseConv`` or a pool under ``convention``.

  "SAME" and "VALID" pass through; "symmetric" gives ((p, p), (q, q)) with p = (kh - 1)·dh // 2,
  q = (kw - 1)·dw // 2.
  """
  if convention in ("SAME", "VALID"):
    return convention
  (kh, kw), (dh, dw) = pair(kernel_size), pair(dilation)
  p, q = (kh - 1) * dh // 2, (kw - 1) * dw // 2
  return ((p, p), (q, q))


def pair(value: int | Sequence[int]) -> tuple[int, int]:
  """(v, v) for an int, else the pair as a tuple (fields are validated when a block is built)."""
  return (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)


def _kw(default: Any) -> Any:
  return dataclasses.field(default=default, kw_only=True)


class Knobs(nn.Module):
  """The keyword-only knobs every block and network shares, and hands down to what it builds.

  Attributes:
    norm: norm module factory called as ``norm(name=..., dtype=..., param_dtype=...)``; BatchNorm
      (momentum 0.9, eps 1e-5: PyTorch's defaults) by default; any ``nn.GroupNorm``/``nn.LayerNorm``
      partial works; None drops every norm. BatchNorm-like norms get ``use_running_average=not train``
      from the block, so the factory must not bind it.
    act: activation after each norm (ReLU by default; ``jax.nn.relu6``, ``nn.swish``, ``nn.gelu`` ...);
      None is the identity. Blocks that end in a linear projection (InvertedResidual) skip it there.
    use_bias: conv biases; None means a bias exactly where no norm follows the conv.
    zero_init_last: initialise the scale of the norm that ends the residual branch to zero, so a
      residual block starts as its shortcut (Goyal et al., 2017); blocks (or configurations) with no
      shortcut ignore it, so a network can pass it to every block.
    padding: "SAME" (TensorFlow/XLA: what TF-slim and TF EfficientNet weights need) or "symmetric"
      ((k - 1)·d // 2 on each side: what PyTorch, torchvision and timm weights need), for every kxk
      conv, depthwise conv and pool. MACs (padded taps counted) do not depend on it; exact MACs do.
    depthwise_conv: the depthwise conv factory, called with ``kernel_size``, ``strides``, ``padding``,
      ``dilation``, ``depth_multiplier``, ``use_bias``, ``dtype``, ``param_dtype`` and ``name``:
      :class:`~pwconv.DepthwiseConv` by default; ``functools.partial(pwconv.DepthwiseConv,
      impl="xla")`` picks an implementation.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); None infers it from inputs and params.
    param_dtype: dtype parameters are stored in.
  """
  norm: ModuleDef | None = _kw(batch_norm)
  act: Activation | None = _kw(nn.relu)
  use_bias: bool | None = _kw(None)
  zero_init_last: bool = _kw(False)
  padding: str = _kw("SAME")
  depthwise_conv: ModuleDef = _kw(DepthwiseConv)
  dtype: Any = _kw(None)
  param_dtype: Any = _kw(jnp.float32)

  # The values ``padding`` may take on this class (DenseConv also takes "VALID").
  paddings = PADDINGS

  def __post_init__(self):
    owner = type(self).__name__
    for name, example in (("norm", "pwconv.batch_norm"), ("act", "jax.nn.relu"),
                          ("depthwise_conv", "functools.partial(pwconv.DepthwiseConv, impl='xla')")):
      value = getattr(self, name)
      if (value is not None or name == "depthwise_conv") and not callable(value):
        raise TypeError(f"{owner}: {name} must be a callable (e.g. {example})"
                        f"{'' if name == 'depthwise_conv' else ' or None'}, got {value!r}")
    for name in ("norm", "depthwise_conv"):
      if isinstance(getattr(self, name), nn.Module):
        raise TypeError(f"{owner}: {name} must be a factory called with name=..., dtype=..., "
                        f"param_dtype=... (a class or functools.partial, e.g. pwconv.batch_norm), "
                        f"not a module instance: got {getattr(self, name)!r}")
    if (isinstance(self.norm, functools.partial)
        and "use_running_average" in self.norm.keywords):
      raise TypeError(f"{owner}: norm must not bind use_running_average (the block sets it from "
                      f"train); got {self.norm!r}")
    validate.boolean(owner, "use_bias", self.use_bias, allow_none=True)
    validate.boolean(owner, "zero_init_last", self.zero_init_last)
    validate.one_of(owner, "padding", self.padding, self.paddings)
    super().__post_init__()

  def knobs(self, **overrides: Any) -> dict[str, Any]:
    """The shared knobs as keyword arguments for the blocks this module builds."""
    names = ("norm", "act", "use_bias", "zero_init_last", "padding", "depthwise_conv", "dtype",
             "param_dtype")
    return {**{name: getattr(self, name) for name in names}, **overrides}

  def pad(self, kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1)) -> Any:
    """This module's padding convention for a ``kernel_size`` window (see :func:`conv_padding`)."""
    return conv_padding(self.padding, kernel_size, dilation)

  def activate(self, x: jax.Array) -> jax.Array:
    return x if self.act is None else self.act(x)

  def unnormed_bias(self) -> bool:
    """Whether a conv that no norm follows has a bias (``use_bias``; None means yes): SE's 1x1s,
    conv heads, ConvNeXt's linear layers."""
    return True if self.use_bias is None else self.use_bias

  def in_dtype(self, x: jax.Array) -> jax.Array:
    """``x`` in the computation dtype (unchanged when ``dtype`` is None): what an identity shortcut
    adds, so a bf16 block returns bf16 whatever its input."""
    return x if self.dtype is None else x.astype(self.dtype)


class Block(Knobs):
  """A block: :class:`Knobs`, the conv -> norm -> act unit blocks are built from, and the factories
  of their convs (each with this block's padding convention).

  ``dense_equivalent(in_features)`` returns the module the block stands in for: by default the single
  dense kxk conv with the block's ``features``, ``kernel_size``, ``strides`` and ``dilation``.
  """

  def conv_norm_act(self, x: jax.Array, conv: ModuleDef, *, name: str, train: bool,
                    act: bool = True, last: bool = False) -> jax.Array:
    """``conv(name=name)`` -> ``norm(name=name + "_norm")`` -> ``act``: the unit of every block.

    ``last``: this unit ends a residual branch (its output is added to a shortcut), so
    ``zero_init_last`` zeroes its norm's scale. Units of blocks without a shortcut never pass it: a
    zeroed norm there would cut the signal off.
    """
    use_bias = self.norm is None if self.use_bias is None else self.use_bias
    x = conv(name=name, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    x = self.normalize(x, name=f"{name}_norm", train=train, zero_init=last and self.zero_init_last)
    return self.activate(x) if act else x

  def normalize(self, x: jax.Array, *, name: str, train: bool, zero_init: bool = False
                ) -> jax.Array:
    """``norm(name=name)(x)`` (identity when ``norm`` is None); ``zero_init`` zeroes its scale."""
    if self.norm is None:
      return x
    kwargs = {"scale_init": nn.initializers.zeros_init()} if zero_init else {}
    norm = self.norm(name=name, dtype=self.dtype, param_dtype=self.param_dtype, **kwargs)
    if "use_running_average" in inspect.signature(norm.__call__).parameters:
      return norm(x, use_running_average=not train)
    return norm(x)

  def kernel_init(self) -> Any:
    """He normal init of this block's convs: fan-out (torchvision's and timm's) when a norm follows
    them, fan-in without norms, where only it keeps the forward signal's scale."""
    return he_normal if self.norm is not None else he_normal_fan_in

  def pointwise_layer(self, features: int, **kwargs: Any) -> ModuleDef:
    """A :class:`PointwiseConv` factory (``groups``, ``strides`` ... in ``kwargs``)."""
    return functools.partial(PointwiseConv, features, **{"kernel_init": self.kernel_init(), **kwargs})

  def conv_layer(self, features: int, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
                 dilation: Sequence[int] = (1, 1), groups: int = 1) -> ModuleDef:
    """A dense (or grouped) kxk ``nn.Conv`` factory: He init, this block's padding."""
    return functools.partial(nn.Conv, features, pair(kernel_size), strides=pair(strides),
                             padding=self.pad(kernel_size, dilation), kernel_dilation=pair(dilation),
                             feature_group_count=groups, kernel_init=self.kernel_init())

  def depthwise_layer(self, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
                     dilation: Sequence[int] = (1, 1), depth_multiplier: int = 1) -> ModuleDef:
    """A factory of this block's ``depthwise_conv`` with its padding convention."""
    return functools.partial(self.depthwise_conv, kernel_size=pair(kernel_size), strides=pair(strides),
                             padding=self.pad(kernel_size, dilation), dilation=pair(dilation),
                             depth_multiplier=depth_multiplier)

  def shortcut_branch(self, x: jax.Array, features: int, strides: tuple[int, int], *,
                      train: bool) -> jax.Array:
    """Identity when shapes match (in the block's dtype), else a strided 1x1 projection + norm
    (ResNet's option B)."""
    if x.shape[-1] == features and strides == (1, 1):
      return self.in_dtype(x)
    return self.conv_norm_act(x, self.pointwise_layer(features, strides=strides),
                              name="shortcut", train=train, act=False)

  def dense_conv(self, features: int, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
                 dilation: Sequence[int] = (1, 1)) -> DenseConv:
    """A :class:`DenseConv` with this block's shared knobs."""
    return DenseConv(features, kernel_size=pair(kernel_size), strides=pair(strides),
                     dilation=pair(dilation), norm=self.norm, act=self.act, use_bias=self.use_bias,
                     padding=self.padding, dtype=self.dtype, param_dtype=self.param_dtype,
                     parent=None)

  def dense_equivalent(self, in_features: int) -> nn.Module:
    """The single dense kxk conv with this block's input, output and stride."""
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self.dense_conv(self.features, getattr(self, "kernel_size", (3, 3)),
                           getattr(self, "strides", (1, 1)), getattr(self, "dilation", (1, 1)))

  def input_channels(self, x: jax.Array) -> int:
    validate.nhwc(type(self).__name__, "x", x)
    return x.shape[-1]


CONV_PAIRS = ("kernel_size", "strides", "dilation")


class DenseConv(Block):
  """The dense baseline: one kxk convolution -> norm -> act.

  ``padding`` also takes "VALID" here (no padding, as SqueezeNet's conv1).

  Cost: Ho·Wo·kh·kw·Cin·features; params kh·kw·Cin·features.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  dilation: Sequence[int] = (1, 1)

  paddings = (*PADDINGS, "VALID")

  def __post_init__(self):
    validate.fields(self, positive=("features",), pairs=CONV_PAIRS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.input_channels(x)
    conv = self.conv_layer(self.features, self.kernel_size, self.strides, self.dilation)
    return self.conv_norm_act(x, conv, name="conv", train=train)

  def dense_equivalent(self, in_features: int) -> DenseConv:
    validate.positive_int(type(self).__name__, "in_features", in_features)
    return self


class Identity(nn.Module):
  """y = x; no params, no MACs."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    return x
