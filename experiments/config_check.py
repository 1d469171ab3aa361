"""Checks a run's config before anything compiles: every bad key or value is an error naming the key.

:data:`KEYS` holds each key's own check, in the order they run; :data:`RULES` then check the keys
against each other; last, every variant's model is built as training builds it
(:func:`experiments.variants.build_model`), so a model setting it cannot be built with fails before
the first variant trains. A check is called as ``check("config", key, value)`` and raises as the
functions of :mod:`pwconv.validate` do; its message names ``config.<key>``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging

from experiments import config_help
from experiments import data as data_lib
from experiments import variants as variants_lib
from experiments.config_help import flatten
from pwconv import kernels
from pwconv import validate

Check = Callable[[str, str, Any], Any]  # (owner, key, value); raises TypeError or ValueError

OPTIMIZERS = ("sgd", "adamw")
DISTRIBUTED = ("auto", "always", "never")
MAX_SEED = 2**32 - 1

_OWNER = "config"


def _int(minimum: int = 1) -> Check:
  """validate.positive_int: an int >= ``minimum``."""
  return functools.partial(validate.positive_int, minimum=minimum)


def _one_of(allowed: Sequence[str]) -> Check:
  """validate.one_of, naming the choices in the order given (validate sorts them)."""

  def check(owner: str, name: str, value: Any) -> None:
    try:
      validate.one_of(owner, name, value, allowed)
    except ValueError:
      raise ValueError(f"{owner}: {name} must be one of {list(allowed)}, got {value!r}") from None

  return check


def _number(*, low: float, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Check:
  """validate.number, with the bounds spelled as the config writes them (0.0, where validate
  writes 0)."""

  def check(owner: str, name: str, value: Any) -> None:
    try:
      validate.number(owner, name, value, low=low, high=high, low_open=low_open,
                      high_open=high_open)
    except ValueError:
      if high is None:
        expected = f"{'>' if low_open else '>='} {low}"
      else:
        expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
      raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}") from None

  return check


def _seed(owner: str, name: str, value: Any) -> None:
  """An int in [0, 2**32 - 1]: jax keeps 32 bits of a seed, so larger ones would repeat others."""
  validate.positive_int(owner, name, value, minimum=0)
  if value > MAX_SEED:
    raise ValueError(f"{owner}: {name} must be in [0, {MAX_SEED}] (jax seeds are 32-bit: a larger "
                     f"one would repeat a smaller one's run), got {value}")


def _variant_names(owner: str, name: str, value: Any) -> None:
  """A non-empty list of distinct names from :func:`experiments.variants.names`."""
  if isinstance(value, str) or not isinstance(value, Sequence) or not value:
    raise ValueError(f"{owner}: {name} must be a non-empty list of variant names, got {value!r}")
  for v in value:
    if v not in variants_lib.names():
      raise ValueError(f"{owner}: {name}: unknown variant {v!r}; expected names from "
                       f"{list(variants_lib.names())}")
  if len(set(value)) != len(value):
    raise ValueError(f"{owner}: {name} lists a variant twice: {list(value)}")


KEYS: dict[str, Check] = {
    "dataset": _one_of(data_lib.DATASETS),
    "max_train": _int(0),
    "max_test": _int(0),
    "augment": validate.boolean,
    "crop_padding": _int(),
    "flip": validate.boolean,
    "randaugment.num_ops": _int(0),
    "randaugment.magnitude": _number(low=0.0, high=1.0),
    "synthetic.shape": functools.partial(data_lib.positive_ints, meaning="(H, W, C)"),
    "synthetic.sizes": functools.partial(data_lib.positive_ints, meaning="(train, test)"),
    "synthetic.num_classes": _int(2),
    "variants": _variant_names,
    "batch_size": _int(),
    "eval_batch_size": _int(),
    "num_steps": _int(),
    "log_every_steps": _int(),
    "eval_every_steps": _int(),
    "checkpoint_every_steps": _int(),
    "checkpoints_to_keep": _int(),
    "timing_repeats": _int(),
    "calibrate_roofline": validate.boolean,
    "seed": _seed,
    "seeds": _int(),
    "label_smoothing": _number(low=0.0, high=1.0, high_open=True),
    "ema_decay": _number(low=0.0, high=1.0, high_open=True),
    "num_devices": _int(0),
    "stop_after_steps": _int(0),
    "model.width": _int(),
    "model.stages": _int(),
    "model.depth": _int(),
    "model.kernel_size": _int(),
    "model.expansion": _int(),
    "model.groups": _int(),
    "model.pointwise_layers": _int(0),
    "model.reduction": _number(low=0.0, high=1.0, low_open=True),
    "model.norm": _one_of(tuple(variants_lib.NORMS)),
    "model.act": _one_of(tuple(variants_lib.ACTIVATIONS)),
    "model.impl": _one_of(kernels.names()),
    "model.drop_path_rate": _number(low=0.0, high=1.0, high_open=True),
    "dtype": _one_of(tuple(variants_lib.DTYPES)),
    "optimizer.name": _one_of(OPTIMIZERS),
    "optimizer.learning_rate": _number(low=0.0, low_open=True),
    "optimizer.momentum": _number(low=0.0, high=1.0, high_open=True),
    "optimizer.nesterov": validate.boolean,
    "optimizer.weight_decay": _number(low=0.0),
    "optimizer.warmup_steps": _int(0),
    "optimizer.final_lr_fraction": _number(low=0.0, high=1.0),
    "optimizer.clip_grad_norm": _number(low=0.0),
    "distributed.initialize": _one_of(DISTRIBUTED),
    "distributed.num_processes": _int(0),
    "distributed.process_id": _int(0),
    "distributed.initialization_timeout": _int(),
}


def _baseline_is_a_variant(config: ml_collections.ConfigDict) -> None:
  if _get(config, "baseline") not in config.variants:
    raise ValueError(f"config.baseline {config.baseline!r} must be one of config.variants "
                     f"{list(config.variants)}: the savings are measured against it")


def _seeds_within_range(config: ml_collections.ConfigDict) -> None:
  last = config.seed + config.seeds - 1
  if last > MAX_SEED:
    raise ValueError(f"config.seed + config.seeds - 1 ({last}) must be <= {MAX_SEED}: jax seeds "
                     "are 32-bit")


def _data_dir_for_files(config: ml_collections.ConfigDict) -> None:
  if config.dataset in data_lib.FILE_DATASETS and not _get(config, "data_dir"):
    raise ValueError(f"config.data_dir is required for dataset {config.dataset!r} (the folder holding "
                     "its files; nothing is downloaded)")


def _processes_with_an_address(config: ml_collections.ConfigDict) -> None:
  d = config.distributed
  if _get(config, "distributed.coordinator_address"):
    if d.initialize == "never":
      raise ValueError("config.distributed.initialize is 'never' but "
                       "config.distributed.coordinator_address is set; use 'auto' or 'always', or "
                       "clear the address")
    _check_key(config, "distributed.num_processes", _int())
    if d.process_id >= d.num_processes:
      raise ValueError(f"config.distributed.process_id must be < config.distributed.num_processes "
                       f"({d.num_processes}), got {d.process_id}")
  elif d.num_processes or d.process_id:
    raise ValueError("config.distributed.num_processes and process_id are only used with "
                     "config.distributed.coordinator_address, which is empty")


RULES: tuple[Callable[[ml_collections.ConfigDict], None], ...] = (
    _baseline_is_a_variant, _seeds_within_range, _data_dir_for_files,
    _processes_with_an_address)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError/TypeError naming the first bad key (``config.optimizer.name``, ...).

  Unknown keys first (with the closest known one), then each key's check, then every number left
  must be finite (no key takes NaN or an infinity), then the rules across keys, then the models.
  """
  values = flatten(config.to_dict())
  for key in values:
    if message := config_help.unknown_key(key):
      raise ValueError(message)
  for key, check in KEYS.items():
    _check_key(config, key, check)
  for key, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"config.{key} must be a finite number, got {value}")
  for rule in RULES:
    rule(config)
  num_classes = (config.synthetic.num_classes if config.dataset == "synthetic"
                 else data_lib.FIXED_CLASSES)
  for variant in config.variants:
    variants_lib.build_model(config, variant, num_classes)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a (checked) run trains with: a copy of ``config``, with a warmup as long as the run
  or longer (``--config.num_steps=10`` with the default 20 warmup steps) cut to a tenth of the run,
  with a logged note. config.json records (and a rerun compares) this config."""
  o = config.optimizer
  if o.warmup_steps < config.num_steps:
    return config
  resolved = copy.deepcopy(config)
  resolved.optimizer.warmup_steps = config.num_steps // 10
  logging.warning("config.optimizer.warmup_steps (%d) is not below config.num_steps (%d): warming "
                  "up over %d steps instead (a tenth of the run)", o.warmup_steps, config.num_steps,
                  resolved.optimizer.warmup_steps)
  return resolved


def _check_key(config: ml_collections.ConfigDict, key: str, check: Check) -> None:
  """Runs ``check`` on ``config.<key>``; its message's ``config: <key>`` reads ``config.<key>``."""
  value = _get(config, key)
  try:
    check(_OWNER, key, value)
  except (TypeError, ValueError) as e:
    raise type(e)("config." + str(e).removeprefix(f"{_OWNER}: ")) from None


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    if part not in node:
      raise ValueError(f"config.{key} is missing")
    node = node[part]
  return node
