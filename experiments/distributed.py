"""Where a run's devices come from: JAX's multi-controller runtime on a cluster, and the data mesh."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh


def initialize(config: ml_collections.ConfigDict) -> None:
  """Starts JAX's multi-controller runtime when the config asks for it or a cluster is detected.

  ``config.distributed.initialize``: "never"; "always" (with ``coordinator_address``,
  ``num_processes`` and ``process_id`` from the config, or found by ``jax.distributed`` itself on TPU
  pod slices and under SLURM); "auto" (the default): when ``coordinator_address`` is set, or when
  :func:`in_cluster`. Cloud TPU VM pod slices need "always".
  """
  if jax.distributed.is_initialized():
    return
  d = config.distributed
  if d.initialize == "never" or (d.initialize == "auto" and not d.coordinator_address
                                 and not in_cluster()):
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def in_cluster() -> bool:
  """Whether the environment says this is one process of several: a SLURM job with several tasks,
  or ``TPU_WORKER_HOSTNAMES`` listing several workers (as GKE sets it)."""
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in tpu_hosts.split(",") if h]) > 1:
    return True
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A 1-D ``data`` mesh over every device (or the first ``config.num_devices`` on one process).

  Raises:
    ValueError: ``config.num_devices`` in a multi-process run or above the device count, or a
      batch size the mesh does not divide.
  """
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
