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
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import pwconv
from experiments import data as data_lib
from experiments import report
from experiments.config_check import check_config, config_fingerprint
from pwconv import models
from pwconv import timing


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
class Trained:
  """A variant after training: its final state, its jitted steps and its final metrics."""
  state: TrainState
  train_step: Any
  eval_step: Any
  result: dict[str, Any]


class Preempted(Exception):
  """Raised inside the training loop when SIGTERM asked the run to stop."""


# ---------------------------------------------------------------------------------------------------
# Entry point.


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
  quiet_orbax()
  # SIGTERM is caught for the whole run, start-up and report included, not only while training.
  with stop_on_sigterm() as stop:
    return _train_and_report(config, workdir, stop)


def _train_and_report(config: ml_collections.ConfigDict, workdir: str,
                      stop: threading.Event) -> dict[str, Any]:
  distributed_init(config)
  dataset = data_lib.load_dataset(
      config.dataset, data_dir=config.data_dir or None, seed=config.seed,
      synthetic_shape=tuple(config.synthetic.shape), synthetic_sizes=tuple(config.synthetic.sizes),
      num_classes=config.synthetic.num_classes, max_train=config.max_train or None,
      max_test=config.max_test or None)
  if dataset.num_train < config.batch_size:
    raise ValueError(f"config.batch_size ({config.batch_size}) exceeds the {dataset.num_train} "
                     f"training examples of {config.dataset!r}")
  mesh = make_mesh(config)
  variants = {name: build_model(config, name, dataset.num_classes) for name in config.variants}
  writer = report.Writer(workdir, config, is_writer=jax.process_index() == 0)
  writer.check_resumable(config_fingerprint(config))
  logging.info("pwconv run: %d variants on %s x %d (%d processes), %s, %d train / %d test examples "
               "%s, global batch %d, %d steps", len(variants), jax.devices()[0].platform,
               mesh.size, jax.process_count(), config.dataset, dataset.num_train, dataset.num_test,
               dataset.image_shape, config.batch_size, config.num_steps)
  pipeline = Pipeline(dataset, config, mesh)
  trained: dict[str, Trained] = {}
  budget = Budget(config.stop_after_steps)
  try:
    for name, model in variants.items():
      trained[name] = train_variant(name, model, config, pipeline, mesh, writer, stop, budget)
    if _any_process(stop.is_set()):
      raise Preempted("SIGTERM after the last variant trained (every checkpoint is saved): the "
                      "savings report was not written; rerun the same command to write it")
  except Preempted as e:
    logging.warning("%s", e)
    return {"rows": [], "preempted": True, "workdir": workdir, "message": str(e)}
  finally:
    writer.close()
  # Measured after every variant has trained, in this one process, so the times compare.
  times = {name: measure_time(t, pipeline, config.timing_repeats) for name, t in trained.items()}
  rows = report.savings_rows(
      config, {name: profile_model(model, dataset.image_shape) for name, model in variants.items()},
      times, {name: t.result for name, t in trained.items()})
  writer.write_savings(rows)
  if stop.is_set():
    logging.warning("SIGTERM arrived while the report was measured and written; it is complete")
  return {"rows": rows, "preempted": False, "workdir": workdir}


def quiet_orbax() -> None:
  """Drops orbax's INFO lines (a dozen per checkpoint) from absl's log; warnings still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in handler.filters):
    handler.addFilter(_OrbaxInfoFilter())


class _OrbaxInfoFilter:

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or "orbax" not in record.pathname


def distributed_init(config: ml_collections.ConfigDict) -> None:
  """Starts JAX's multi-controller runtime when the config asks for it or a cluster is detected.

  ``config.distributed.initialize``: "never"; "always" (with ``coordinator_address``,
  ``num_processes`` and ``process_id`` from the config, or found by ``jax.distributed`` itself on TPU
  pod slices and under SLURM); "auto" (the default): when ``coordinator_address`` is set, or when the
  environment says it is a multi-process cluster (a SLURM job with several tasks, or
  ``TPU_WORKER_HOSTNAMES`` listing several workers, as GKE sets it). Cloud TPU VM pod slices need
  "always".
  """
  if jax.distributed.is_initialized():
    return
  mode = config.distributed.initialize
  if mode == "never" or (mode == "auto" and not config.distributed.coordinator_address
                         and not _in_cluster()):
    return
  kwargs = {}
  if config.distributed.coordinator_address:
    kwargs = dict(coordinator_address=config.distributed.coordinator_address,
                  num_processes=config.distributed.num_processes,
                  process_id=config.distributed.process_id)
  if config.distributed.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", config.distributed.cpu_collectives)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _in_cluster() -> bool:
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in tpu_hosts.split(",") if h]) > 1:
    return True
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


# ---------------------------------------------------------------------------------------------------
# Model, optimizer, mesh.

ACTIVATIONS = {"relu": nn.relu, "relu6": jax.nn.relu6, "swish": nn.swish, "gelu": nn.gelu}
NORMS = {"batch": pwconv.batch_norm, "layer": nn.LayerNorm, "none": None}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict, variant: str, num_classes: int) -> nn.Module:
  """The SmallNet of one variant; only ``block`` differs between variants."""
  m = config.model
  return models.SmallNet(
      block=variant, num_classes=num_classes, width=m.width, stages=m.stages, depth=m.depth,
      kernel_size=(m.kernel_size, m.kernel_size), reduction=m.reduction, expansion=m.expansion,
      groups=m.groups, pointwise_layers=m.pointwise_layers,
      depthwise_conv=functools.partial(pwconv.DepthwiseConv, impl=m.impl), norm=NORMS[m.norm],
      act=ACTIVATIONS[m.act], dtype=DTYPES[config.dtype])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum or AdamW (NAdamW with ``nesterov``; ``momentum`` is its b1), linear
  warmup then cosine decay, weight decay on kernels only."""
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


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A 1-D ``data`` mesh over every device (or the first ``config.num_devices`` on one process)."""
  devices = jax.devices()
  if config.num_devices:
    if jax.process_count() > 1:
      raise ValueError("config.num_devices must be 0 (all devices) in a multi-process run")
    if config.num_devices > len(devices):
      raise ValueError(f"config.num_devices is {config.num_devices} but only {len(devices)} devices "
                       "exist")
    devices = devices[:config.num_devices]
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % len(devices):
      raise ValueError(f"config.{key} ({config[key]}) must be divisible by the {len(devices)} devices "
                       "of the data mesh")
  return Mesh(np.asarray(devices), ("data",))


# ---------------------------------------------------------------------------------------------------
# Data.


class Pipeline:
  """Global batches for any step, sharded over the mesh; each process loads only its own part.

  The examples of step ``s`` are ``data.batch_indices(N, batch, seed=seed, step=s)``, so a resumed run
  sees the same batches as an uninterrupted one. Images are standardised by the training set's
  per-channel mean and std; ``config.augment`` adds a random crop (pad 4) and horizontal flip drawn
  from (seed, step).
  """

  def __init__(self, dataset: data_lib.Dataset, config: ml_collections.ConfigDict, mesh: Mesh):
    self.dataset = dataset
    self.config = config
    self.sharding = NamedSharding(mesh, P("data"))
    self.mean = dataset.train_images.mean(axis=(0, 1, 2))
    self.std = dataset.train_images.std(axis=(0, 1, 2)) + 1e-6
    n_proc, index = jax.process_count(), jax.process_index()
    self.local = slice(index * config.batch_size // n_proc, (index + 1) * config.batch_size // n_proc)
    self.eval_batch = config.eval_batch_size

  def standardise(self, images: np.ndarray) -> np.ndarray:
    return ((images - self.mean) / self.std).astype(np.float32)

  def global_array(self, local: np.ndarray, global_batch: int) -> jax.Array:
    return jax.make_array_from_process_local_data(self.sharding, local,
                                                  (global_batch, *local.shape[1:]))

  def train_batch(self, step: int) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    idx = data_lib.batch_indices(self.dataset.num_train, cfg.batch_size, seed=cfg.seed,
                                 step=step)[self.local]
    images = self.dataset.train_images[idx]
    if cfg.augment:
      # Drawn for the whole global batch, then sliced: the same crops however many processes.
      rng = np.random.default_rng([cfg.seed, step, 1])
      dy, dx = rng.integers(0, 9, size=(2, cfg.batch_size))
      flip = rng.random(cfg.batch_size) < 0.5
      images = augment(images, dy[self.local], dx[self.local], flip[self.local])
    return (self.global_array(self.standardise(images), cfg.batch_size),
            self.global_array(self.dataset.train_labels[idx], cfg.batch_size))

  def eval_batches(self) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """The whole test set in global batches; the last is padded and masked."""
    n = self.dataset.num_test
    n_proc, index = jax.process_count(), jax.process_index()
    per_process = self.eval_batch // n_proc
    for start in range(0, n, self.eval_batch):
      idx = np.arange(start + index * per_process, start + (index + 1) * per_process)
      mask = idx < n
      idx = np.where(mask, idx, 0)
      yield (self.global_array(self.standardise(self.dataset.test_images[idx]), self.eval_batch),
             self.global_array(self.dataset.test_labels[idx], self.eval_batch),
             self.global_array(mask.astype(np.float32), self.eval_batch))


def augment(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Crops each image at offset (dy, dx) in [0, 8] of its 4-pixel zero padding; flips where ``flip``."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  out[flip] = out[flip, :, ::-1]
  return out


# ---------------------------------------------------------------------------------------------------
# Steps.


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
               seed: int) -> TrainState:
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}), window=_empty_window(),
                           nonfinite_step=jnp.asarray(-1, jnp.int32))


def _empty_window() -> dict[str, jax.Array]:
  return {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32),
          "steps": jnp.zeros((), jnp.int32)}


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
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=False).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {"loss_sum": jnp.sum(loss * mask),
          "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "count": jnp.sum(mask)}


def evaluate(state: TrainState, pipeline: Pipeline, eval_fn) -> dict[str, float]:
  totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  for images, labels, mask in pipeline.eval_batches():
    out = jax.device_get(eval_fn(state, images, labels, mask))
    totals = {k: totals[k] + float(out[k]) for k in totals}
  return {"loss": totals["loss_sum"] / totals["count"],
          "accuracy": totals["correct"] / totals["count"]}


# ---------------------------------------------------------------------------------------------------
# One variant.


def train_variant(name: str, model: nn.Module, config: ml_collections.ConfigDict,
                  pipeline: Pipeline, mesh: Mesh, writer: report.Writer, stop: threading.Event,
                  budget: Budget) -> Trained:
  """Trains (or resumes, or just re-evaluates) one variant."""
  replicated = NamedSharding(mesh, P())
  data = pipeline.sharding
  tx = make_optimizer(config)
  init = jax.jit(functools.partial(init_state, model, tx, pipeline.dataset.image_shape),
                 static_argnums=0, out_shardings=replicated)
  state = init(config.seed)
  p_train = jax.jit(train_step, in_shardings=(replicated, data, data, replicated),
                    out_shardings=replicated, donate_argnums=0)
  p_eval = jax.jit(eval_step, in_shardings=(replicated, data, data, data), out_shardings=replicated)
  with checkpoint_manager(writer.workdir, name, config) as manager:
    return _train(name, config, pipeline, writer, stop, budget, manager, state, p_train, p_eval)


def _train(name: str, config: ml_collections.ConfigDict, pipeline: Pipeline, writer: report.Writer,
           stop: threading.Event, budget: Budget, manager: ocp.CheckpointManager,
           state: TrainState, p_train, p_eval) -> Trained:
  """The training loop of :func:`train_variant`, from its latest checkpoint if there is one."""
  replicated = state.step.sharding
  start = 0
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    start = int(state.step)
    logging.info("[%s] resuming from the checkpoint at step %d", name, start)
  writer.start_variant(name, start)
  total = config.num_steps
  result = {"status": "finished", "message": ""}
  clock = {"time": time.perf_counter(), "step": start}
  t_start = time.perf_counter()
  new_window = {flag: jax.device_put(np.asarray(flag), replicated) for flag in (False, True)}

  def log(step: int) -> bool:
    """Writes the train metrics of the window ending at ``step``; False at a non-finite loss."""
    window, bad = jax.device_get((state.window, state.nonfinite_step))
    if window["steps"]:
      means = {k: float(window[k]) / int(window["steps"]) for k in ("loss", "accuracy")}
      logged = step if bad < 0 else int(bad)
      writer.write(name, logged, "train", means)
      now = time.perf_counter()
      rate = (logged - clock["step"]) / max(now - clock["time"], 1e-9)
      eta = (total - logged) / rate if rate > 0 else float("inf")
      logging.info("[%s] step %d/%d  loss %.4f  acc %.3f  %.1f steps/s  ETA %s", name, logged, total,
                   means["loss"], means["accuracy"], rate, _duration(eta))
      clock.update(time=now, step=logged)
    if bad < 0:
      return True
    last = manager.latest_step()
    result["status"] = "diverged"
    result["message"] = (
        f"[{name}] the loss is not finite at step {int(bad) + 1}; this variant stops here. Its last "
        "good checkpoint is " + (f"step {last}" if last is not None else "none (none was saved)")
        + f", in {manager.directory}.")
    logging.error("%s", result["message"])
    return False

  for step in range(start, total):
    reason = stop_reason(stop, step, config, budget)
    if reason:
      if not (_finite_so_far(state) or log(step)):
        break  # diverged: nothing is saved
      _save(manager, step, state)
      raise Preempted(f"[{name}] {reason}: saved a checkpoint at step {step} in "
                      f"{manager.directory}; rerun with the same --workdir to resume")
    images, labels = pipeline.train_batch(step)
    state = p_train(state, images, labels, new_window[step % config.log_every_steps == 0])
    done = step + 1
    at_log, at_eval = done % config.log_every_steps == 0, done % config.eval_every_steps == 0
    at_ckpt, last = done % config.checkpoint_every_steps == 0, done == total
    # A non-finite step is found at the next log, eval or checkpoint, before anything is saved.
    if at_log or last:
      healthy = log(done)
    elif at_eval or at_ckpt:
      healthy = _finite_so_far(state) or log(done)
    else:
      healthy = True
    if not healthy:
      break
    if at_eval and not last:
      writer.write(name, done, "test", evaluate(state, pipeline, p_eval))
    if at_ckpt or last:
      _save(manager, done, state)
    budget.trained += 1
  manager.wait_until_finished()
  final = evaluate(state, pipeline, p_eval)
  writer.write(name, total if result["status"] == "finished" else int(state.step), "test", final)
  if result["status"] == "finished":
    logging.info("[%s] done: test accuracy %.4f, loss %.4f (%s)", name, final["accuracy"],
                 final["loss"], _duration(time.perf_counter() - t_start))
  return Trained(state, p_train, p_eval,
                 dict(result, test_accuracy=final["accuracy"], test_loss=final["loss"],
                      steps=int(state.step)))


def _finite_so_far(state: TrainState) -> bool:
  return int(jax.device_get(state.nonfinite_step)) < 0


def checkpoint_manager(workdir: str, name: str, config: ml_collections.ConfigDict
                       ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints", name),
                               options=options)


def _save(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  if manager.latest_step() != step:
    manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ---------------------------------------------------------------------------------------------------
# SIGTERM.


@dataclasses.dataclass
class Budget:
  """Steps trained by this invocation, over all variants, against ``config.stop_after_steps``."""
  limit: int
  trained: int = 0


def stop_reason(stop: threading.Event, step: int, config: ml_collections.ConfigDict,
                budget: Budget) -> str:
  """Why to checkpoint and stop before ``step`` ("" to go on).

  ``config.stop_after_steps`` (> 0) ends an invocation once it has trained that many steps, whatever
  it resumed from. SIGTERM: one process stops as soon as its event is set; several must stop at the
  same step (saving is collective), so they agree at each logging boundary: any one's SIGTERM stops
  all.
  """
  if budget.limit and budget.trained >= budget.limit:
    return f"stopped after {budget.trained} steps in this run (config.stop_after_steps)"
  if jax.process_count() > 1 and step % config.log_every_steps:
    return ""
  return "SIGTERM" if _any_process(stop.is_set()) else ""


def _any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))



class stop_on_sigterm:
  """Within this context, SIGTERM sets an event the run checks at each step and after training.

  The loop then saves a checkpoint and returns, or (after the last variant) the run returns before
  its report; the process exits 0 either way. Outside the main thread (where signal handlers cannot
  be installed) the event exists but nothing sets it.
  """

  def __enter__(self) -> threading.Event:
    self.event = threading.Event()
    self.previous = None
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self.event

  def __exit__(self, *exc: Any) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


# ---------------------------------------------------------------------------------------------------
# Costs and measured time, for the report.


def profile_model(model: nn.Module, image_shape: tuple[int, ...]) -> pwconv.Profile:
  return pwconv.profile(model, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))


def measure_time(trained: Trained, pipeline: Pipeline, repeats: int) -> dict[str, float]:
  """Median seconds of one train step on a global batch and of inference on an eval batch.

  Times the very executables training compiled (nothing is recompiled); train steps are chained,
  each taking the state the previous one returned, as in training. The train step donates its input,
  so this consumes ``trained.state``; inference is timed first.
  """
  eval_batch = next(pipeline.eval_batches())
  infer_t = timing.time_calls(lambda: trained.eval_step(trained.state, *eval_batch), repeats=repeats)
  images, labels = pipeline.train_batch(0)
  state = trained.state
  new_window = jax.device_put(np.asarray(True), trained.state.step.sharding)

  def train_call():
    nonlocal state
    state = trained.train_step(state, images, labels, new_window)
    return state.step

  train_t = timing.time_calls(train_call, repeats=repeats)
  trained.state = state
  return {"train_step_s": train_t.median_s, "inference_s": infer_t.median_s}
