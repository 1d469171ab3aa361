"""Trains the configured variants side by side and reports accuracy against savings.

:func:`train_and_evaluate` is everything ``python -m experiments.run`` does, callable from a
notebook: config -> data -> one model per variant (a SmallNet design or any registered network) ->
jitted, data-parallel train steps -> eval -> checkpoints -> report. Each variant is trained in turn,
once per seed (``config.seeds``), with the same data order, schedule and seeds, so only the model
differs. Runs resume: a rerun with the same workdir restores each (variant, seed)'s latest
checkpoint (the data order is a function of the step, so it resumes too) and skips those finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import checkpoint
from experiments import distributed
from experiments import measure
from experiments import preemption
from experiments import report
from experiments import variants as variants_lib
from experiments.config_check import check_config, resolve
from experiments.input_pipeline import Pipeline, load_dataset
from experiments.optimizer import make_optimizer, make_schedule
from experiments.steps import Recipe, TrainState, eval_step, evaluate, init_state, train_step
from experiments.train_log import Diverged, TrainLog, duration, quiet_logs
from experiments.workdir import Workdir


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
  """The jitted programs of one variant, compiled once for all its seeds, evaluation and timing;
  ``eval_ema`` evaluates the weights' average (None when no average is kept)."""
  init: Callable[[int], TrainState]
  train: Callable[..., TrainState]
  eval: Callable[..., dict[str, jax.Array]]
  eval_ema: Callable[..., dict[str, jax.Array]] | None


@dataclasses.dataclass
class Trained:
  """A variant after training one seed: its final state, its jitted steps and its final metrics."""
  state: TrainState
  steps: Steps
  result: dict[str, Any]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every variant in ``config.variants`` and writes the report to ``workdir``.

  Args:
    config: see ``experiments/configs/default.py`` for every key; checked before anything compiles.
    workdir: where config.json, metrics.jsonl, tensorboard/, checkpoints/ and the savings report go.

  Returns:
    ``{"rows": [per-variant savings row], "preempted": bool, "workdir": str}``. Rows hold params,
    MACs, ratios vs the baseline, the predicted and measured speedups, measured times (medians and
    quartiles), and test accuracy (mean ± std over seeds): :func:`experiments.report.savings_rows`.
  """
  check_config(config)
  config = resolve(config)
  if "://" in str(workdir):
    raise ValueError(f"train_and_evaluate: workdir must be a local or mounted path (e.g. a gcsfuse "
                     f"mount of a bucket), got {workdir!r}: the run writes it with file-system calls")
  quiet_logs()
  # SIGTERM and Ctrl-C are caught for the whole run, start-up and report included.
  with preemption.stop_on_signals() as stop:
    distributed.initialize(config, stop)
    with Workdir(workdir, is_writer=jax.process_index() == 0) as folder:
      return _train_and_report(config, folder, stop)


def _train_and_report(config: ml_collections.ConfigDict, workdir: Workdir,
                      stop: preemption.Stop) -> dict[str, Any]:
  dataset = load_dataset(config)
  mesh = distributed.make_mesh(config)
  models = {name: variants_lib.build_model(config, name, dataset.num_classes)
            for name in config.variants}
  # Before the workdir is touched: a network that cannot take the data's images is a config error.
  profiles = {name: measure.profile(model, dataset.image_shape, variant=name,
                                    dataset=config.dataset) for name, model in models.items()}
  workdir.claim(config, dataset.fingerprint())
  logging.info("pwconv run: %d variants on %s x %d (%d processes), %s, %d train / %d test examples "
               "%s, global batch %d, %d steps", len(models), jax.devices()[0].platform,
               mesh.size, jax.process_count(), config.dataset, dataset.num_train, dataset.num_test,
               dataset.image_shape, config.batch_size, config.num_steps)
  if config.model.drop_path_rate:  # stochastic depth drops residual branches: say where there are
    for name, model in models.items():
      logging.info("[%s] drop path (rate up to %g) in %d blocks", name, config.model.drop_path_rate,
                   variants_lib.drop_path_blocks(model, dataset.image_shape))
  sinks = ([report.JsonlSink(workdir.metrics_path), report.TensorBoardSink(workdir.tensorboard_dir)]
           if workdir.is_writer else [])
  run = Run(config, mesh, Pipeline(dataset, config, mesh), workdir, report.MetricWriter(sinks), stop,
            preemption.Budget(config.stop_after_steps))
  trained: dict[str, Trained] = {}  # the last seed of each variant: timed for the report
  results: dict[str, list[dict[str, Any]]] = {}
  try:
    for name, model in models.items():
      steps = make_steps(run, model)
      for seed in variants_lib.seeds(config):
        trained[name] = train_variant(run, name, steps, seed)
        results.setdefault(name, []).append(trained[name].result)
    if reason := preemption.signalled(stop):
      raise preemption.Preempted(f"{reason} after the last variant trained (every checkpoint is "
                                 "saved): the savings report was not written; rerun the same "
                                 "command to write it")
  except preemption.Preempted as e:
    logging.warning("%s", e)
    return {"rows": [], "preempted": True, "workdir": workdir.path, "message": str(e)}
  finally:
    run.writer.close()
  # Measured after every variant has trained, in one process, interleaved, so the times compare.
  times = measure.step_times({name: (t.state, t.steps.train, t.steps.eval)
                              for name, t in trained.items()}, run.pipeline, config.timing_repeats)
  predicted = measure.predicted_times(profiles, config.eval_batch_size // mesh.size,
                                      variants_lib.DTYPES[config.dtype],
                                      calibrate=config.calibrate_roofline)
  rows = report.savings_rows(config, profiles, times, predicted, results)
  table = workdir.write_savings(rows, config)
  if workdir.is_writer:
    print(table, flush=True)
  if stop.is_set():
    logging.warning("%s arrived while the report was measured and written; it is complete",
                    stop.signal_name)
  return {"rows": rows, "preempted": False, "workdir": workdir.path}


def make_steps(run: Run, model: nn.Module) -> Steps:
  """The jitted init, train and eval programs of ``model`` with the run's optimizer and recipe."""
  config, recipe = run.config, Recipe.from_config(run.config)
  replicated, data = NamedSharding(run.mesh, P()), run.pipeline.sharding
  evals = [jax.jit(functools.partial(eval_step, use_ema=use_ema),
                   in_shardings=(replicated, data, data, data), out_shardings=replicated)
           for use_ema in (False, True)]
  return Steps(
      init=jax.jit(functools.partial(init_state, model, make_optimizer(config),
                                     run.pipeline.dataset.image_shape, recipe),
                   out_shardings=replicated),
      train=jax.jit(functools.partial(train_step, recipe=recipe),
                    in_shardings=(replicated, data, data, replicated), out_shardings=replicated,
                    donate_argnums=0),
      eval=evals[0], eval_ema=evals[1] if recipe.ema_decay is not None else None)


def train_variant(run: Run, variant: str, steps: Steps, seed: int) -> Trained:
  """Trains (or resumes, or just re-evaluates) one variant from one seed.

  Its checkpoints, metric rows and TensorBoard run are named :func:`variants.run_name`
  (``dense``, or ``dense/seed1`` when the config has several seeds), so each (variant, seed)
  resumes on its own.

  Raises:
    Preempted: SIGTERM or the step budget stopped it (its checkpoint is saved).
  """
  config = run.config
  name = variants_lib.run_name(config, variant, seed)
  t_start = time.perf_counter()
  with checkpoint.manager(run.workdir.checkpoints(name), keep=config.checkpoints_to_keep,
                          fingerprint=run.workdir.fingerprint) as mngr:
    state, start = checkpoint.restore_latest(mngr, steps.init(seed))
    if start:
      logging.info("[%s] resuming from the checkpoint at step %d", name, start)
    run.writer.start(name, start, run.workdir.resume(name, start))
    result = {"status": "finished", "message": ""}
    try:
      state = _train(run, name, seed, steps, mngr, state, start)
    except Diverged as e:
      state, last = e.state, mngr.latest_step()
      result = {"status": "diverged", "message": (
          f"[{name}] {e}; this variant stops here. Its last good checkpoint is "
          + (f"step {last}" if last is not None else "none (none was saved)")
          + f", in {mngr.directory}.")}
      logging.error("%s", result["message"])
    mngr.wait_until_finished()
  final = _evaluate(run, steps, state)
  finished = result["status"] == "finished"
  run.writer.write(name, config.num_steps if finished else int(state.step), "test", final)
  if finished:
    logging.info("[%s] done: test accuracy %.4f, loss %.4f (%s)", name, final["accuracy"],
                 final["loss"], duration(time.perf_counter() - t_start))
  return Trained(state, steps, dict(result, seed=seed, steps=int(state.step),
                                    **{_result_key(k): v for k, v in final.items()}))


def _result_key(metric: str) -> str:
  """A test metric's key in a result: ``accuracy`` -> ``test_accuracy``, ``ema_loss`` ->
  ``ema_test_loss``."""
  ema, name = metric.startswith("ema_"), metric.removeprefix("ema_")
  return f"{'ema_' if ema else ''}test_{name}"


def _evaluate(run: Run, steps: Steps, state: TrainState) -> dict[str, float]:
  """The test loss and accuracy of the raw weights, and (``ema_loss``, ...) of their average."""
  metrics = evaluate(state, run.pipeline, steps.eval)
  if steps.eval_ema is not None:
    ema = evaluate(state, run.pipeline, steps.eval_ema)
    metrics.update({f"ema_{k}": v for k, v in ema.items()})
  return metrics


def _train(run: Run, name: str, seed: int, steps: Steps, mngr: ocp.CheckpointManager,
           state: TrainState, start: int) -> TrainState:
  """Trains from step ``start`` to ``config.num_steps``, each step: step -> log -> eval -> checkpoint.

  A non-finite step is found at the next log, eval or checkpoint, before anything is saved.

  Raises:
    Diverged: a step was not finite; the train metrics up to it are logged, nothing after is saved.
    Preempted: SIGTERM or the step budget; a checkpoint of the step it stopped at is saved.
  """
  config = run.config
  clock = _StepClock(name, run.writer, make_schedule(config))
  log = TrainLog(name, clock, config.num_steps, start)
  new_window = {flag: jax.device_put(np.asarray(flag), state.step.sharding) for flag in (False, True)}
  for step in range(start, config.num_steps):
    reason = preemption.stop_reason(run.stop, step, run.budget, sync_every=config.log_every_steps)
    if reason:
      log.check_finite(state, step)
      checkpoint.save(mngr, step, state)
      raise preemption.Preempted(f"[{name}] {reason}: saved a checkpoint at step {step} in "
                                 f"{mngr.directory}; rerun with the same --workdir to resume")
    images, labels = run.pipeline.train_batch(step, seed)
    state = steps.train(state, images, labels, new_window[step % config.log_every_steps == 0])
    clock.stepped(state, first=step == start)
    done = step + 1
    at_log, at_eval = done % config.log_every_steps == 0, done % config.eval_every_steps == 0
    at_ckpt, last = done % config.checkpoint_every_steps == 0, done == config.num_steps
    if at_log or last:
      log(state, done)
    elif at_eval or at_ckpt:
      log.check_finite(state, done)
    with clock.paused(state):
      if at_eval and not last:
        run.writer.write(name, done, "test", _evaluate(run, steps, state))
      if at_ckpt or last:
        checkpoint.save(mngr, done, state)
    run.budget.trained += 1
  return state


class _StepClock:
  """Adds the learning rate of the logged step and the mean wall time of a train step since the
  last log (``step_time_s``) to each train row on its way to ``writer``. The first step of an
  invocation (which compiles) and the time spent evaluating and checkpointing are not counted; a
  window of nothing else gets no ``step_time_s``. The first step's time is logged on its own."""

  def __init__(self, name: str, writer: report.MetricWriter, schedule: Callable[[int], Any]):
    self.name, self.writer, self.schedule = name, writer, schedule
    self.start, self.steps, self.excluded = time.perf_counter(), 0, 0.0

  def stepped(self, state: TrainState, *, first: bool) -> None:
    if first:
      jax.block_until_ready(state)
      logging.info("[%s] first train step, compilation included: %.1fs (not in the steps/s)",
                   self.name, time.perf_counter() - self.start)
      self.start = time.perf_counter()
    else:
      self.steps += 1

  @contextlib.contextmanager
  def paused(self, state: TrainState):
    """Leaves the time of the block out (the steps queued before it are finished first)."""
    jax.block_until_ready(state)
    t = time.perf_counter()
    yield
    self.excluded += time.perf_counter() - t

  def write(self, variant: str, step: int, split: str, metrics: Mapping[str, float]
            ) -> dict[str, float]:
    """Writes the row with the extra metrics; returns it (TrainLog logs its rate)."""
    extra = {}
    if self.steps:  # the rows TrainLog writes come after its device_get: every step has run
      extra["step_time_s"] = (time.perf_counter() - self.start - self.excluded) / self.steps
    # After the clock is read: the first call of the schedule compiles its jnp ops.
    extra["learning_rate"] = float(self.schedule(step - 1))
    row = self.writer.write(variant, step, split, {**metrics, **extra})
    self.start, self.steps, self.excluded = time.perf_counter(), 0, 0.0
    return row
