"""The host input pipeline: the config's data set as standardised, augmented global batches, sharded
over the mesh, for any training step and seed; and the whole test set in masked batches.

Augmentation (numpy, on the host, drawn from (seed, step) for the whole global batch):
RandAugment-lite (:func:`rand_augment`, ``config.randaugment``) then a random crop of the zero-padded
image and a horizontal flip (:func:`augment`, ``config.augment``)."""

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

  The examples of step ``s`` from seed ``seed`` are ``data.batch_indices(N, batch, seed=seed,
  step=s)``, so a resumed run sees the same batches as an uninterrupted one. Images are standardised
  by the training set's per-channel mean and std; ``config.randaugment.num_ops`` > 0 applies that
  many RandAugment-lite ops to each, and ``config.augment`` a random crop (``config.crop_padding``)
  and, with ``config.flip``, a horizontal flip, each drawn from (seed, step).
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

  def train_batch(self, step: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """(images (B, H, W, C) float32, labels (B,) int32) of training step ``step`` of the run from
    ``seed``, B the batch."""
    cfg = self.config
    idx = data_lib.batch_indices(self.dataset.num_train, cfg.batch_size, seed=seed,
                                 step=step)[self.local]
    images = self.dataset.train_images[idx]
    # Each draw is for the whole global batch, then sliced: the same however many processes.
    if cfg.randaugment.num_ops:
      rng = np.random.default_rng([seed, step, 2])
      ops = rng.integers(0, len(RAND_AUGMENT_OPS), size=(cfg.batch_size, cfg.randaugment.num_ops))
      signs = np.where(rng.random(ops.shape) < 0.5, -1.0, 1.0)
      where = rng.random((cfg.batch_size, 2))
      images = rand_augment(images, ops[self.local], signs[self.local], where[self.local],
                            cfg.randaugment.magnitude)
    if cfg.augment:
      rng = np.random.default_rng([seed, step, 1])
      pad = cfg.crop_padding
      dy, dx = rng.integers(0, 2 * pad + 1, size=(2, cfg.batch_size))
      flip = (rng.random(cfg.batch_size) < 0.5) & cfg.flip
      images = augment(images, dy[self.local], dx[self.local], flip[self.local], pad=pad)
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


def augment(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, *,
            pad: int = 4) -> np.ndarray:
  """Crops each image at offset (dy, dx) in [0, 2·pad] of its ``pad``-pixel zero padding; flips
  where ``flip``.

  images: (N, H, W, C); dy, dx, flip: (N,). Returns (N, H, W, C).
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  out[flip] = out[flip, :, ::-1]
  return out


RAND_AUGMENT_OPS = ("identity", "brightness", "contrast", "solarize", "posterize", "translate_x",
                    "translate_y", "cutout")


def rand_augment(images: np.ndarray, ops: np.ndarray, signs: np.ndarray, where: np.ndarray,
                 magnitude: float) -> np.ndarray:
  """RandAugment-lite (Cubuk et al. 2020, cut down to ops that are cheap in numpy and keep small
  images legible): each image gets its ops in turn, all at one magnitude m in [0, 1].

  Ops (:data:`RAND_AUGMENT_OPS`; ``x`` in [0, 1], s the op's sign): identity; brightness
  x + 0.5·m·s; contrast mean + (x - mean)·(1 + 0.9·m·s) per image; solarize 1 - x where x >= 1 - 0.5·m;
  posterize to round(16 - 14·m) levels; translate_x / translate_y by round(m·W/4)·s pixels, zero
  filled; cutout: a zero square of side round(m·H/2) centred at ``where``. At m = 0 every op is the
  identity. Results are clipped to [0, 1].

  Args:
    images: (N, H, W, C) in [0, 1].
    ops: (N, K) int indices into :data:`RAND_AUGMENT_OPS`: the K ops of each image, in order.
    signs: (N, K) +-1: the direction of each op that has one.
    where: (N, 2) in [0, 1): the cutout centre (row, column) as fractions of H and W.
    magnitude: m.

  Returns:
    (N, H, W, C) float32.
  """
  out = images.astype(np.float32, copy=True)
  n, h, w, _ = out.shape
  m = float(magnitude)
  for k in range(ops.shape[1]):
    for op, name in enumerate(RAND_AUGMENT_OPS):
      sel = np.nonzero(ops[:, k] == op)[0]
      if not len(sel) or name == "identity" or m == 0:
        continue
      x, s = out[sel], signs[sel, k].reshape(-1, 1, 1, 1).astype(np.float32)
      if name == "brightness":
        x = x + 0.5 * m * s
      elif name == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * (1 + 0.9 * m * s)
      elif name == "solarize":
        x = np.where(x >= 1 - 0.5 * m, 1 - x, x)
      elif name == "posterize":
        levels = round(16 - 14 * m)
        x = np.round(x * (levels - 1)) / (levels - 1)
      elif name in ("translate_x", "translate_y"):
        x = _translate(x, s[:, 0, 0, 0] * round(m * w / 4), axis=2 if name == "translate_x" else 1)
      else:
        side = round(m * h / 2)
        rows = np.arange(h)[None, :] - (where[sel, :1] * h).astype(int) + side // 2
        cols = np.arange(w)[None, :] - (where[sel, 1:] * w).astype(int) + side // 2
        inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None]
        x = np.where(inside[..., None], 0.0, x)
      out[sel] = np.clip(x, 0.0, 1.0)
  return out


def _translate(x: np.ndarray, shifts: np.ndarray, axis: int) -> np.ndarray:
  """Each image of x (N, H, W, C) moved by its ``shifts`` pixels along ``axis`` (1 or 2), zero
  filled."""
  size = x.shape[axis]
  source = np.arange(size)[None, :] - shifts.astype(int)[:, None]     # (N, size)
  valid = (source >= 0) & (source < size)
  index = np.clip(source, 0, size - 1)
  shape = [len(x), 1, 1, 1]
  shape[axis] = size
  gathered = np.take_along_axis(x, index.reshape(shape), axis=axis)
  return np.where(valid.reshape(shape), gathered, 0.0)
