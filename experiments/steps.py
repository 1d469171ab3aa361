"""The programs one variant runs: its train state, a train step, an eval step, the test totals.

A train step is SGD/AdamW on a global batch plus the training pieces papers use, each set by the
config and off by default (:class:`Recipe`): label smoothing, stochastic depth (the blocks' DropPath
draws from the "dropout" rng, which every step passes, as it does for dropout), and an exponential
moving average of the weights and BatchNorm statistics, evaluated beside the raw weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from experiments.input_pipeline import Pipeline


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a train step does besides the optimizer's update (static: each setting compiles its own).

  Attributes:
    label_smoothing: alpha: the targets are (1 - alpha)·one_hot + alpha / K over the K classes.
    ema_decay: None keeps no average; d in [0, 1) keeps ema = d·ema + (1 - d)·weights after every
      good step (d = 0 is the raw weights).
  """
  label_smoothing: float = 0.0
  ema_decay: float | None = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Recipe:
    """``config.label_smoothing``; ``config.ema_decay`` > 0 keeps an average, 0 keeps none."""
    return cls(float(config.label_smoothing), float(config.ema_decay) if config.ema_decay else None)


class TrainState(train_state.TrainState):
  """Params, optimizer state and BatchNorm statistics, plus what the log needs across restarts.

  ``window`` holds the sums of the per-step loss and accuracy, and the step count, since the last
  logged step; it is checkpointed with the rest, so a resumed run logs exactly what an uninterrupted
  one logs. ``nonfinite_step`` is -1 until a step's loss, gradients or updated state are not
  finite; then updates are skipped, so the state stays the last good one. ``rng`` is the (raw
  uint32) key of the
  "dropout" stream: step s draws from ``fold_in(rng, s)``, so a resumed run draws the same masks.
  ``ema`` is ``{"params", "batch_stats"}`` averaged (:class:`Recipe`), or ``{}`` when none is kept.
  """
  batch_stats: Any
  window: dict[str, jax.Array]
  nonfinite_step: jax.Array
  rng: jax.Array
  ema: dict[str, Any]


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
               recipe: Recipe, seed: int) -> TrainState:
  """The state of ``model`` initialised from ``seed`` on (H, W, C) images, with an empty window."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))
  window = {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32),
            "steps": jnp.zeros((), jnp.int32)}
  batch_stats = variables.get("batch_stats", {})
  ema = ({} if recipe.ema_decay is None
         else {"params": variables["params"], "batch_stats": batch_stats})
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=batch_stats, window=window,
                           nonfinite_step=jnp.asarray(-1, jnp.int32),
                           rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1), ema=ema)


def loss_fn(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Mean cross-entropy of (B, K) logits against integer labels, the targets smoothed by alpha:
  (1 - alpha)·CE(labels) + alpha·mean_k(-log softmax(logits)_k)."""
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, new_window: jax.Array,
               recipe: Recipe = Recipe()) -> TrainState:
  """One SGD/AdamW step on a global batch; BatchNorm uses (global) batch statistics.

  ``new_window`` (a bool scalar) starts a new logging window at this step.
  """

  def objective(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                     train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
    loss = loss_fn(logits, labels, recipe.label_smoothing)
    return loss, (logits.astype(jnp.float32), updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g))
                                                     for g in jax.tree.leaves(grads)]))
  good = state.nonfinite_step < 0
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # The updated weights too: finite gradients can still overflow them (learning_rate=1e30). The
  # weights and statistics only: checking the optimizer state as well tripled the compile time of
  # the default's Inception train step on XLA:CPU (36 s against 12 s); a momentum that overflows
  # makes the next step's weights non-finite, which this catches.
  finite &= jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                                 for x in jax.tree.leaves((new.params, new.batch_stats))]))
  keep = finite & good
  new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
  if recipe.ema_decay is not None:  # averages the good steps only
    ema = ema_update(state.ema, {"params": new.params, "batch_stats": new.batch_stats},
                     recipe.ema_decay)
    new = new.replace(ema=jax.tree.map(lambda a, b: jnp.where(keep, a, b), ema, state.ema))
  window = jax.tree.map(lambda w: jnp.where(new_window, jnp.zeros_like(w), w), state.window)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  window = {"loss": window["loss"] + jnp.where(keep, loss, 0.0),
            "accuracy": window["accuracy"] + jnp.where(keep, accuracy, 0.0),
            "steps": window["steps"] + keep.astype(jnp.int32)}
  nonfinite_step = jnp.where(good & ~finite, state.step, state.nonfinite_step)
  return new.replace(window=window, nonfinite_step=nonfinite_step)


def ema_update(ema: Any, current: Any, decay: float) -> Any:
  """decay·ema + (1 - decay)·current, leaf by leaf; decay 0 is ``current`` itself (bitwise: XLA may
  round a recomputed ``current`` differently inside a fused average)."""
  if decay == 0:
    return current
  return jax.tree.map(lambda e, c: decay * e + (1.0 - decay) * c, ema, current)


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
              use_ema: bool = False) -> dict[str, jax.Array]:
  """Sums of the loss and of the correct predictions over the examples where ``mask`` is 1, with
  the raw weights or (``use_ema``) their average."""
  variables = (state.ema if use_ema
               else {"params": state.params, "batch_stats": state.batch_stats})
  logits = state.apply_fn(variables, images, train=False).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {"loss_sum": jnp.sum(loss * mask),
          "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "count": jnp.sum(mask)}


def evaluate(state: TrainState, pipeline: Pipeline, eval_fn) -> dict[str, float]:
  """Mean loss and accuracy over the whole test set."""
  totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  for images, labels, mask in pipeline.eval_batches():
    out = jax.device_get(eval_fn(state, images, labels, mask))
    totals = {k: totals[k] + float(out[k]) for k in totals}
  return {"loss": totals["loss_sum"] / totals["count"],
          "accuracy": totals["correct"] / totals["count"]}
