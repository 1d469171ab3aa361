"""Checks a run's config before anything compiles: every bad key or value is an error naming the key."""

from __future__ import annotations

import difflib
import functools
import json
from typing import Any

import ml_collections

from experiments import data as data_lib
from experiments.configs import default
from pwconv import kernels
from pwconv import models
from pwconv.layers import DepthwiseConv

OPTIMIZERS = ("sgd", "adamw")
DTYPES = ("float32", "bfloat16")
NORMS = ("batch", "layer", "none")
ACTIVATIONS = ("relu", "relu6", "swish", "gelu")
DISTRIBUTED = ("auto", "always", "never")

# Keys that do not change what a run computes: a resumed run may differ from the first in these.
RESUMABLE_DIFFERENCES = ("stop_after_steps", "timing_repeats", "eval_every_steps",
                         "checkpoint_every_steps", "checkpoints_to_keep", "num_devices",
                         "distributed", "data_dir")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError/TypeError naming the first bad key (``config.optimizer.name``, ...)."""
  known = _flatten(default.get_config().to_dict())
  for key in _flatten(config.to_dict()):
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean config.{close[0]}?" if close else ""
      raise ValueError(f"config.{key} is not a known key{hint} (experiments/configs/default.py "
                       "lists them all)")
  _one_of(config, "dataset", data_lib.DATASETS)
  variants = _get(config, "variants")
  if isinstance(variants, str) or not variants:
    raise ValueError(f"config.variants must be a non-empty list of variant names, got {variants!r}")
  for v in variants:
    if v not in models.SMALLNET_BLOCKS:
      raise ValueError(f"config.variants: unknown variant {v!r}; expected names from "
                       f"{list(models.SMALLNET_BLOCKS)}")
  if len(set(variants)) != len(variants):
    raise ValueError(f"config.variants lists a variant twice: {list(variants)}")
  if _get(config, "baseline") not in variants:
    raise ValueError(f"config.baseline {config.baseline!r} must be one of config.variants "
                     f"{list(variants)}: the savings are measured against it")
  for key in ("batch_size", "eval_batch_size", "num_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "checkpoints_to_keep", "timing_repeats",
              "model.width", "model.stages", "model.depth", "model.kernel_size", "model.expansion",
              "model.groups"):
    _positive_int(config, key)
  for key in ("seed", "max_train", "max_test", "num_devices", "stop_after_steps",
              "model.pointwise_layers", "optimizer.warmup_steps"):
    _positive_int(config, key, minimum=0)
  if config.optimizer.warmup_steps >= config.num_steps:
    raise ValueError(f"config.optimizer.warmup_steps ({config.optimizer.warmup_steps}) must be "
                     f"smaller than config.num_steps ({config.num_steps})")
  _one_of(config, "optimizer.name", OPTIMIZERS)
  _one_of(config, "dtype", DTYPES)
  _one_of(config, "model.norm", NORMS)
  _one_of(config, "model.act", ACTIVATIONS)
  _one_of(config, "model.impl", kernels.names())
  _one_of(config, "distributed.initialize", DISTRIBUTED)
  _number(config, "optimizer.learning_rate", low=0.0, low_open=True)
  _number(config, "optimizer.weight_decay", low=0.0)
  _number(config, "optimizer.momentum", low=0.0, high=1.0, high_open=True)
  _number(config, "optimizer.final_lr_fraction", low=0.0, high=1.0)
  _number(config, "model.reduction", low=0.0, high=1.0, low_open=True)
  if config.dataset in ("mnist", "fashion_mnist", "cifar10") and not config.data_dir:
    raise ValueError(f"config.data_dir is required for dataset {config.dataset!r} (the folder holding "
                     "its files; nothing is downloaded)")
  if config.dataset == "synthetic":
    shape = tuple(_get(config, "synthetic.shape"))
    if len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
      raise ValueError(f"config.synthetic.shape must be (H, W, C) of positive ints, got {shape!r}")
    sizes = tuple(_get(config, "synthetic.sizes"))
    if len(sizes) != 2 or not all(_is_int(d) and d >= 1 for d in sizes):
      raise ValueError(f"config.synthetic.sizes must be (train, test) of positive ints, got "
                       f"{sizes!r}")
    _positive_int(config, "synthetic.num_classes", minimum=2)
  if config.distributed.coordinator_address:
    if config.distributed.initialize == "never":
      raise ValueError("config.distributed.initialize is 'never' but "
                       "config.distributed.coordinator_address is set; use 'auto' or 'always', or "
                       "clear the address")
    _positive_int(config, "distributed.num_processes")
    _positive_int(config, "distributed.process_id", minimum=0)
    if config.distributed.process_id >= config.distributed.num_processes:
      raise ValueError(f"config.distributed.process_id must be < config.distributed.num_processes "
                       f"({config.distributed.num_processes}), got {config.distributed.process_id}")
  elif config.distributed.num_processes or config.distributed.process_id:
    raise ValueError("config.distributed.num_processes and process_id are only used with "
                     "config.distributed.coordinator_address, which is empty")
  # Build every model now, so a bad model config fails before the first variant trains.
  for v in variants:
    models.SmallNet(block=v, width=config.model.width, stages=config.model.stages,
                    depth=config.model.depth,
                    kernel_size=(config.model.kernel_size, config.model.kernel_size),
                    reduction=config.model.reduction, expansion=config.model.expansion,
                    groups=config.model.groups, pointwise_layers=config.model.pointwise_layers,
                    depthwise_conv=functools.partial(DepthwiseConv, impl=config.model.impl))


def config_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a flat JSON-able dict, less the keys a resumed run may change."""
  flat = _flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items()
          if not any(k == key or k.startswith(key + ".") for key in RESUMABLE_DIFFERENCES)}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    if part not in node:
      raise ValueError(f"config.{key} is missing")
    node = node[part]
  return node


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(config, key, minimum=1):
  value = _get(config, key)
  if not _is_int(value):
    raise TypeError(f"config.{key} must be an int, got {type(value).__name__} {value!r}")
  if value < minimum:
    raise ValueError(f"config.{key} must be >= {minimum}, got {value}")


def _one_of(config, key, allowed):
  value = _get(config, key)
  if value not in allowed:
    raise ValueError(f"config.{key} must be one of {list(allowed)}, got {value!r}")


def _number(config, key, low=None, high=None, low_open=False, high_open=False):
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"config.{key} must be a number, got {type(value).__name__} {value!r}")
  too_low = low is not None and (value < low or (low_open and value == low))
  too_high = high is not None and (value > high or (high_open and value == high))
  if too_low or too_high:
    if high is None:
      expected = f"{'>' if low_open else '>='} {low}"
    else:
      expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"config.{key} must be {expected}, got {value}")
