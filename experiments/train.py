"""Trains the configured variants side by side and reports accuracy against savings.

:func:`train_and_evaluate` is everything ``python -m experiments.run`` does, callable from a notebook:
config -> data -> one SmallNet per variant -> jitted, data-parallel train steps -> eval -> checkpoints ->
report. Each variant is trained in turn with the same data order, schedule and seed, so only the block
differs. Runs resume: a rerun with the same workdir restores each variant's latest checkpoint (the data
order is a function of the step, so it resumes too) and skips variants already finished.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import checkpoint
from experiments import distributed
from experiments import measure
from experiments import preemption
from experiments import report
from experiments import variants as variants_lib
from experiments.config_check import check_config
from experiments.input_pipeline import Pipeline, load_dataset
from experiments.optimizer import make_optimizer
from experiments.train_log import Diverged, TrainLog, duration
from experiments.workdir import Workdir


class TrainState(train_state.TrainState):
  """Params, optimizer state and BatchNorm statistics, plus what the log needs across restarts.

  ``window`` holds the sums of the per-step loss and accuracy, and the step count, since the last
  logged step; it is checkpointed with the rest, so a resumed run logs exactly what an uninterrupted
  one logs. ``nonfinite_step`` is -1 until a step's loss or gradients are not finite; from then on
  updates are skipped, so the state stays the last good one.
  """
  batch_stats: Any
  window: dict[str, jax.Array]
  nonfinite_step: jax.Array


@dataclasses.dataclass
class Run:
  """What every variant of one run shares: its config, devices, data, folder, metrics and stops."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  pipeline: Pipeline
  workdir: Workdir
  writer: report.MetricWriter
  stop: threading.Event
  budget: preemption.Budget


@dataclasses.dataclass
class Steps:
  """The jitted programs of one variant, compiled once for training, evaluation and timing."""
  train: Callable[..., TrainState]
  eval: Callable[..., dict[str, jax.Array]]


@dataclasses.dataclass
class Trained:
  """A variant after training: its final state, its jitted steps and its final metrics."""
  state: TrainState
  steps: Steps
  result: dict[str, Any]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every variant in ``config.variants`` and writes the report to ``workdir``.

  Args:
    config: see ``experiments/configs/default.py`` for every key; checked before anything compiles.
    workdir: where config.json, metrics.jsonl, tensorboard/, checkpoints/ and the savings report go.

  Returns:
    ``{"rows": [per-variant savings row], "preempted": bool, "workdir": str}``. Rows hold params, MACs,
    ratios vs the baseline, measured train-step and inference times and speedups, and test accuracy.
  """
  check_config(config)
  if "://" in str(workdir):
    raise ValueError(f"train_and_evaluate: workdir must be a local or mounted path (e.g. a gcsfuse "
                     f"mount of a bucket), got {workdir!r}: the run writes it with file-system calls")
  checkpoint.quiet_orbax()
  # SIGTERM is caught for the whole run, start-up and report included, not only while training.
  with preemption.stop_on_sigterm() as stop:
    return _train_and_report(config, workdir, stop)


def _train_and_report(config: ml_collections.ConfigDict, path: str,
                      stop: threading.Event) -> dict[str, Any]:
  distributed.initialize(config)
  dataset = load_dataset(config)
  mesh = distributed.make_mesh(config)
  models = {name: variants_lib.build_model(config, name, dataset.num_classes)
            for name in config.variants}
  workdir = Workdir(path, is_writer=jax.process_index() == 0)
  workdir.claim(config)
  logging.info("pwconv run: %d variants on %s x %d (%d processes), %s, %d train / %d test examples "
               "%s, global batch %d, %d steps", len(models), jax.devices()[0].platform,
               mesh.size, jax.process_count(), config.dataset, dataset.num_train, dataset.num_test,
               dataset.image_shape, config.batch_size, config.num_steps)
  sinks = ([report.JsonlSink(workdir.metrics_path), report.TensorBoardSink(workdir.tensorboard_dir)]
           if workdir.is_writer else [])
  run = Run(config, mesh, Pipeline(dataset, config, mesh), workdir, report.MetricWriter(sinks), stop,
            preemption.Budget(config.stop_after_steps))
  trained: dict[str, Trained] = {}
  try:
    for name, model in models.items():
      trained[name] = train_variant(run, name, model)
    if preemption.any_process(stop.is_set()):
      raise preemption.Preempted("SIGTERM after the last variant trained (every checkpoint is "
                                 "saved): the savings report was not written; rerun the same "
                                 "command to write it")
  except preemption.Preempted as e:
    logging.warning("%s", e)
    return {"rows": [], "preempted": True, "workdir": path, "message": str(e)}
  finally:
    run.writer.close()
  # Measured after every variant has trained, in this one process, so the times compare.
  times = {name: measure.step_times(t.state, t.steps.train, t.steps.eval, run.pipeline,
                                    config.timing_repeats) for name, t in trained.items()}
  rows = report.savings_rows(
      config, {name: measure.profile(model, dataset.image_shape) for name, model in models.items()},
      times, {name: t.result for name, t in trained.items()})
  table = workdir.write_savings(rows, config)
  if workdir.is_writer:
    print(table, flush=True)
  if stop.is_set():
    logging.warning("SIGTERM arrived while the report was measured and written; it is complete")
  return {"rows": rows, "preempted": False, "workdir": path}


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
               seed: int) -> TrainState:
  """The state of ``model`` initialised from ``seed`` on (H, W, C) images, with an empty window."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))
  window = {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32),
            "steps": jnp.zeros((), jnp.int32)}
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}), window=window,
                           nonfinite_step=jnp.asarray(-1, jnp.int32))


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, new_window: jax.Array
               ) -> TrainState:
  """One SGD/AdamW step on a global batch; BatchNorm uses (global) batch statistics.

  ``new_window`` (a bool scalar) starts a new logging window at this step.
  """

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                     train=True, mutable=["batch_stats"])
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g))
                                                     for g in jax.tree.leaves(grads)]))
  good = state.nonfinite_step < 0
  keep = finite & good
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
  window = jax.tree.map(lambda w: jnp.where(new_window, jnp.zeros_like(w), w), state.window)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  window = {"loss": window["loss"] + jnp.where(keep, loss, 0.0),
            "accuracy": window["accuracy"] + jnp.where(keep, accuracy, 0.0),
            "steps": window["steps"] + keep.astype(jnp.int32)}
  nonfinite_step = jnp.where(good & ~finite, state.step, state.nonfinite_step)
  return new.replace(window=window, nonfinite_step=nonfinite_step)


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array
              ) -> dict[str, jax.Array]:
  """Sums of the loss and of the correct predictions over the examples where ``mask`` is 1."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=False).astype(jnp.float32)
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


def train_variant(run: Run, name: str, model: nn.Module) -> Trained:
  """Trains (or resumes, or just re-evaluates) one variant.

  Raises:
    Preempted: SIGTERM or the step budget stopped it (its checkpoint is saved).
  """
  config = run.config
  replicated, data = NamedSharding(run.mesh, P()), run.pipeline.sharding
  init = jax.jit(functools.partial(init_state, model, make_optimizer(config),
                                   run.pipeline.dataset.image_shape),
                 static_argnums=0, out_shardings=replicated)
  steps = Steps(
      train=jax.jit(train_step, in_shardings=(replicated, data, data, replicated),
                    out_shardings=replicated, donate_argnums=0),
      eval=jax.jit(eval_step, in_shardings=(replicated, data, data, data), out_shardings=replicated))
  t_start = time.perf_counter()
  with checkpoint.manager(run.workdir.checkpoints(name), keep=config.checkpoints_to_keep) as mngr:
    state, start = checkpoint.restore_latest(mngr, init(config.seed))
    if start:
      logging.info("[%s] resuming from the checkpoint at step %d", name, start)
    run.writer.start(name, start, run.workdir.resume(name, start))
    result = {"status": "finished", "message": ""}
    try:
      state = _train(run, name, steps, mngr, state, start)
    except Diverged as e:
      state, last = e.state, mngr.latest_step()
      result = {"status": "diverged", "message": (
          f"[{name}] {e}; this variant stops here. Its last good checkpoint is "
          + (f"step {last}" if last is not None else "none (none was saved)")
          + f", in {mngr.directory}.")}
      logging.error("%s", result["message"])
    mngr.wait_until_finished()
  final = evaluate(state, run.pipeline, steps.eval)
  finished = result["status"] == "finished"
  run.writer.write(name, config.num_steps if finished else int(state.step), "test", final)
  if finished:
    logging.info("[%s] done: test accuracy %.4f, loss %.4f (%s)", name, final["accuracy"],
                 final["loss"], duration(time.perf_counter() - t_start))
  return Trained(state, steps, dict(result, test_accuracy=final["accuracy"],
                                    test_loss=final["loss"], steps=int(state.step)))


def _train(run: Run, name: str, steps: Steps, mngr: ocp.CheckpointManager, state: TrainState,
           start: int) -> TrainState:
  """Trains from step ``start`` to ``config.num_steps``, each step: step -> log -> eval -> checkpoint.

  A non-finite step is found at the next log, eval or checkpoint, before anything is saved.

  Raises:
    Diverged: a step was not finite; the train metrics up to it are logged, nothing after is saved.
    Preempted: SIGTERM or the step budget; a checkpoint of the step it stopped at is saved.
  """
  config = run.config
  log = TrainLog(name, run.writer, config.num_steps, start)
  new_window = {flag: jax.device_put(np.asarray(flag), state.step.sharding) for flag in (False, True)}
  for step in range(start, config.num_steps):
    reason = preemption.stop_reason(run.stop, step, run.budget, sync_every=config.log_every_steps)
    if reason:
      log.check_finite(state, step)
      checkpoint.save(mngr, step, state)
      raise preemption.Preempted(f"[{name}] {reason}: saved a checkpoint at step {step} in "
                                 f"{mngr.directory}; rerun with the same --workdir to resume")
    images, labels = run.pipeline.train_batch(step)
    state = steps.train(state, images, labels, new_window[step % config.log_every_steps == 0])
    done = step + 1
    at_log, at_eval = done % config.log_every_steps == 0, done % config.eval_every_steps == 0
    at_ckpt, last = done % config.checkpoint_every_steps == 0, done == config.num_steps
    if at_log or last:
      log(state, done)
    elif at_eval or at_ckpt:
      log.check_finite(state, done)
    if at_eval and not last:
      run.writer.write(name, done, "test", evaluate(state, run.pipeline, steps.eval))
    if at_ckpt or last:
      checkpoint.save(mngr, done, state)
    run.budget.trained += 1
  return state
