"""The optimizer every variant trains with: SGD or AdamW on one learning-rate schedule, with
optional gradient clipping by global norm."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 over ``config.optimizer.warmup_steps``, then cosine decay to
  ``learning_rate·final_lr_fraction`` at ``config.num_steps``; step s (from 0) trains at
  schedule(s)."""
  o = config.optimizer
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=config.num_steps, end_value=o.learning_rate * o.final_lr_fraction)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum or AdamW (NAdamW with ``nesterov``; ``momentum`` is its b1) on
  :func:`make_schedule`, weight decay on kernels only (not on biases, norm scales or layer scales).

  ``config.optimizer`` sets everything; ``clip_grad_norm`` > 0 first scales the gradients so their
  global L2 norm is at most that (``optax.clip_by_global_norm``), before momentum and weight decay.
  """
  o = config.optimizer
  schedule = make_schedule(config)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  else:
    tx = optax.adamw(schedule, b1=o.momentum, weight_decay=o.weight_decay, mask=decay_mask,
                     nesterov=o.nesterov)
  if o.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_grad_norm), tx)
  return tx
