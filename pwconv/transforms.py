"""Flax's lifted transforms over pwconv blocks and networks: rematerialisation and scan.

``nn.remat(pwconv.InvertedResidual)`` fails as it is: every block's ``train`` is keyword-only, and
``nn.remat`` traces keyword arguments, so ``not train`` meets a tracer. :func:`remat` and :func:`scan`
pass ``train`` as a static positional argument underneath and keep the ``(x, *, train=False)``
interface on top. The variables are the plain module's (same names and shapes; :func:`scan` stacks
each of them on a leading axis of ``length``), so checkpoints move between the forms::

    Block = pwconv.remat(pwconv.InvertedResidual)          # recomputed in the backward pass
    y = Block(32, expansion=6, name="block")(x, train=True)

    Stack = pwconv.scan(pwconv.InvertedResidual, length=4)  # 4 identical blocks, traced once
    y = Stack(32, expansion=6, name="stage")(x, train=True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn


def _positional(target: type[nn.Module]) -> type[nn.Module]:
  """``target`` with ``train`` as an ordinary (positional) argument."""

  class Positional(target):

    def __call__(self, x, train=False):
      return super().__call__(x, train=train)

  Positional.__name__ = Positional.__qualname__ = target.__name__
  return Positional


def _check_target(owner: str, target: Any) -> None:
  if not (isinstance(target, type) and issubclass(target, nn.Module)):
    raise TypeError(f"{owner}: target must be a flax.linen Module class (e.g. "
                    f"pwconv.InvertedResidual), got {target!r}")


def remat(target: type[nn.Module], *, policy: Callable[..., bool] | None = None,
          prevent_cse: bool = True) -> type[nn.Module]:
  """``nn.remat`` of a pwconv block or network class: activations are recomputed in the backward
  pass instead of kept (``activation_bytes`` is what this saves), for one more forward's MACs.

  Args:
    target: a block or network class, e.g. ``pwconv.InvertedResidual``.
    policy: a ``jax.checkpoint_policies`` policy (what to keep anyway), or None for nothing.
    prevent_cse: as ``nn.remat``'s (leave True outside ``nn.scan``).

  Returns:
    A class built with the same arguments, called as ``(x, *, train=False)``.
  """
  _check_target("remat", target)
  checkpointed = nn.remat(_positional(target), static_argnums=(2,), policy=policy,
                          prevent_cse=prevent_cse)

  class Remat(checkpointed):

    def __call__(self, x, *, train: bool = False):
      return super().__call__(x, train)

  Remat.__name__ = Remat.__qualname__ = f"Remat{target.__name__}"
  return Remat


def scan(target: type[nn.Module], length: int, *, remat_blocks: bool = False
         ) -> type[nn.Module]:
  """``nn.scan`` of ``length`` identical blocks: one block traced and compiled once, its variables
  stacked on a leading axis of ``length`` (compile time stops growing with depth).

  Args:
    target: a block class whose output has its input's shape (stride 1, same channels), e.g.
      ``pwconv.InvertedResidual`` with ``features`` equal to the input channels.
    length: the number of blocks.
    remat_blocks: also rematerialise each block (``nn.remat`` inside the scan).

  Returns:
    A class built with the block's arguments, called as ``(x, *, train=False)``; each block gets its
    own parameters, batch statistics and dropout/drop-path random numbers.
  """
  _check_target("scan", target)
  if isinstance(length, bool) or not isinstance(length, int) or length < 1:
    raise ValueError(f"scan: length must be an int >= 1, got {length!r}")
  positional = _positional(target)
  if remat_blocks:
    positional = nn.remat(positional, static_argnums=(2,), prevent_cse=False)

  class Carry(positional):

    def __call__(self, x, train=False):
      return super().__call__(x, train), None

  scanned = nn.scan(Carry, variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                    length=length)

  class Scan(scanned):

    def __call__(self, x, *, train: bool = False):
      return super().__call__(x, train)[0]

  Scan.__name__ = Scan.__qualname__ = f"Scan{target.__name__}"
  return Scan
