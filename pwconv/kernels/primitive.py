"""A depthwise implementation as a JAX primitive, so every transformation reaches it.

A depthwise convolution y = conv(x, kernel) is bilinear in (x, kernel). Declared so
(``ad.defbilinear``), JAX derives its forward-mode derivative from the forward itself,
conv(dx, kernel) + conv(x, dkernel), which runs the same fast implementation; reverse mode transposes
those two linear maps with the implementation's own input and weight gradients. ``jax.jvp``,
``jax.jacfwd``, ``jax.grad``, ``jax.hessian`` and ``jax.vmap`` (per-example gradients included) all work,
where a ``jax.custom_vjp`` refuses forward mode.

The forward, input gradient and weight gradient are plain JAX functions; the primitive lowers through
them (``mlir.lower_fun``), so XLA fuses them as before. Batching folds a vmapped axis of ``x`` into its
batch; a vmapped kernel (per-example kernels, e.g. ``jacfwd`` in the kernel) falls back to
``jax.vmap`` of the plain forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir

# forward(x, kernel, strides, padding, dilation) -> y
Forward = Callable[..., jax.Array]
# input_grad(g, kernel, x_shape, strides, padding, dilation) -> dx;
# weight_grad(x, g, kernel_shape, strides, padding, dilation) -> dkernel
InputGrad = Callable[..., jax.Array]
WeightGrad = Callable[..., jax.Array]


def bilinear_depthwise(name: str, forward: Forward, input_grad: InputGrad,
                       weight_grad: WeightGrad) -> Callable[..., jax.Array]:
  """A depthwise-conv function ``fn(x, kernel, strides, padding, dilation)`` backed by a primitive.

  Args:
    name: the primitive's name (shows in jaxprs).
    forward: the implementation's forward.
    input_grad: its gradient in x: (cotangent, kernel, x_shape, strides, padding, dilation) -> dx.
    weight_grad: its gradient in the kernel: (x, cotangent, kernel_shape, strides, padding,
      dilation) -> dkernel.
  """
  prim = jax_core.Primitive(name)

  def run(x, kernel, *, strides, padding, dilation):
    return forward(x, kernel, strides, padding, dilation)

  prim.def_impl(jax.jit(run, static_argnames=("strides", "padding", "dilation")))
  prim.def_abstract_eval(
      lambda x, kernel, **params: jax.core.ShapedArray(
          jax.eval_shape(functools.partial(run, **params), x, kernel).shape, x.dtype))
  mlir.register_lowering(prim, mlir.lower_fun(run, multiple_results=False))

  def transpose_x(g, x, kernel, *, strides, padding, dilation):
    return input_grad(g, kernel, x.aval.shape, strides, padding, dilation).astype(x.aval.dtype)

  def transpose_kernel(g, x, kernel, *, strides, padding, dilation):
    dk = weight_grad(x, g, kernel.aval.shape, strides, padding, dilation)
    return dk.astype(kernel.aval.dtype)

  ad.defbilinear(prim, transpose_x, transpose_kernel)

  def batch(args, dims, **params):
    x, kernel = args
    x_dim, k_dim = dims
    if k_dim is None:  # batching.not_mapped
      x = jnp.moveaxis(x, x_dim, 0)
      b, n = x.shape[:2]
      y = prim.bind(x.reshape(b * n, *x.shape[2:]), kernel, **params)
      return y.reshape(b, n, *y.shape[1:]), 0
    return jax.vmap(functools.partial(run, **params), in_axes=dims)(x, kernel), 0

  batching.primitive_batchers[prim] = batch

  def depthwise_conv(x, kernel, strides, padding, dilation):
    return prim.bind(x, kernel, strides=tuple(strides),
                     padding=tuple(tuple(p) for p in padding), dilation=tuple(dilation))

  return depthwise_conv
