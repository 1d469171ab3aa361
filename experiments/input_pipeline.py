"""The host input pipeline: the config's data set as standardised, augmented global batches, sharded
over the mesh, for any training step; and the whole test set in masked batches."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import data as data_lib


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The data set ``config.dataset`` names (see :func:`experiments.data.load_dataset`).

  Raises:
    ValueError: ``config.batch_size`` exceeds the training examples, or what the loader raises.
  """
  dataset = data_lib.load_dataset(
      config.dataset, data_dir=config.data_dir or None, seed=config.seed,
      synthetic_shape=tuple(config.synthetic.shape), synthetic_sizes=tuple(config.synthetic.sizes),
      num_classes=config.synthetic.num_classes, max_train=config.max_train or None,
      max_test=config.max_test or None)
  if dataset.num_train < config.batch_size:
    raise ValueError(f"config.batch_size ({config.batch_size}) exceeds the {dataset.num_train} "
                     f"training examples of {config.dataset!r}")
  return dataset


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
    """(N, H, W, C) images -> float32, zero mean and unit std per channel over the training set."""
    return ((images - self.mean) / self.std).astype(np.float32)

  def global_array(self, local: np.ndarray, global_batch: int) -> jax.Array:
    """This process's rows of a global batch of ``global_batch`` -> the global, sharded array."""
    return jax.make_array_from_process_local_data(self.sharding, local,
                                                  (global_batch, *local.shape[1:]))

  def train_batch(self, step: int) -> tuple[jax.Array, jax.Array]:
    """(images (B, H, W, C) float32, labels (B,) int32) of training step ``step``, B the batch."""
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
    """The whole test set in global batches (images, labels, mask); the last is padded and masked."""
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
  """Crops each image at offset (dy, dx) in [0, 8] of its 4-pixel zero padding; flips where ``flip``.

  images: (N, H, W, C); dy, dx, flip: (N,). Returns (N, H, W, C).
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  out[flip] = out[flip, :, ::-1]
  return out
