"""The optimizer every variant trains with: SGD or AdamW on one learning-rate schedule."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum or AdamW (NAdamW with ``nesterov``; ``momentum`` is its b1), linear
  warmup then cosine decay, weight decay on kernels only.

  ``config.optimizer`` sets everything; the schedule decays over ``config.num_steps``.
  """
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=config.num_steps, end_value=o.learning_rate * o.final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if o.name == "sgd":
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                       optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))
  return optax.adamw(schedule, b1=o.momentum, weight_decay=o.weight_decay, mask=decay_mask,
                     nesterov=o.nesterov)
