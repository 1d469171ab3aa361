"""Data sets for the experiment runner, as numpy arrays: images (N, H, W, C) float32 in [0, 1].

- ``digits``: scikit-learn's 1797 8x8 handwritten digits (shipped inside scikit-learn), split into
  train and test by a stratified shuffle drawn from ``seed``.
- ``synthetic``: smooth random class prototypes seen through shifted windows plus noise, any shape;
  a learnable task for smoke runs.
- ``mnist`` / ``fashion_mnist``: the four IDX files, plain or ``.gz``, in ``data_dir``.
- ``cifar10``: the python-pickle or the binary batches, in ``data_dir`` or in the folder its archive
  extracts to. Pickles are read by an unpickler that builds numpy arrays and containers only.

The files are read and checked by :mod:`experiments.dataset_files`; nothing is ever downloaded.
:func:`batch_indices` computes the examples of any training step from ``(seed, step)`` alone, so a
resumed run sees exactly the data order of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from experiments import dataset_files
from pwconv import validate

DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10")
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10")  # read from files in data_dir

FIXED_CLASSES = dataset_files.NUM_CLASSES  # digits has ten classes too: all but synthetic


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled train/test split.

  Attributes:
    name: one of :data:`DATASETS`.
    train_images: (N, H, W, C) float32 in [0, 1].
    train_labels: (N,) int32 in [0, num_classes).
    test_images: (M, H, W, C) float32 in [0, 1].
    test_labels: (M,) int32 in [0, num_classes).
    num_classes: number of classes.
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    owner = f"Dataset({self.name})"
    for split in ("train", "test"):
      images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
      if images.ndim != 4 or images.dtype != np.float32 or not len(images):
        raise ValueError(f"{owner}: {split}_images must be a non-empty float32 (N, H, W, C) array, "
                         f"got {images.dtype} {images.shape}")
      if labels.shape != images.shape[:1] or labels.dtype != np.int32:
        raise ValueError(f"{owner}: {split}_labels must be int32 of shape {images.shape[:1]}, got "
                         f"{labels.dtype} {labels.shape}")
      bad = ~np.isfinite(images)
      if bad.any():
        first = np.argwhere(bad)[0]
        raise ValueError(f"{owner}: {split}_images holds {int(bad.sum())} NaN or infinite pixel "
                         f"values (the first in example {first[0]}, at (row, column, channel) "
                         f"{tuple(int(i) for i in first[1:])}); every pixel must be finite")
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(f"{owner}: train images {self.train_images.shape[1:]} and test images "
                       f"{self.test_images.shape[1:]} must have the same (H, W, C)")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_train(self) -> int:
    """Number of training examples."""
    return len(self.train_labels)

  @property
  def num_test(self) -> int:
    """Number of test examples."""
    return len(self.test_labels)

  def fingerprint(self) -> dict[str, Any]:
    """What identifies these data: the name, the sizes and shapes, the classes, and a hash of every
    image and label (``sha1``: a fingerprint, not a defence; ~0.4 s for CIFAR-10's 737 MB)."""
    digest = hashlib.sha1()
    for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
      digest.update(np.ascontiguousarray(array).data)
    return {"name": self.name, "num_train": self.num_train, "num_test": self.num_test,
            "image_shape": list(self.image_shape), "num_classes": self.num_classes,
            "sha1": digest.hexdigest()}


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0,
                 test_fraction: float = 0.2,
                 synthetic_shape: tuple[int, int, int] = (8, 8, 1),
                 synthetic_sizes: tuple[int, int] = (2048, 512), num_classes: int = 10,
                 max_train: int | None = None, max_test: int | None = None) -> Dataset:
  """Loads (or generates) a data set; deterministic given its arguments. Never downloads.

  Args:
    name: one of :data:`DATASETS`.
    data_dir: folder holding the files of ``mnist``, ``fashion_mnist`` or ``cifar10`` (required for
      those, ignored otherwise). MNIST-style: ``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
      plain or ``.gz``. CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (python
      pickles) or the same names with ``.bin`` (binary records), directly in ``data_dir`` or in
      ``cifar-10-batches-py/`` / ``cifar-10-batches-bin/`` under it.
    seed: draws the ``digits`` split and the ``synthetic`` data. The fixed splits of the file-based
      data sets keep their file order.
    test_fraction: share of ``digits`` held out for test, in (0, 1).
    synthetic_shape: (H, W, C) of ``synthetic`` images.
    synthetic_sizes: (train, test) example counts of ``synthetic``.
    num_classes: classes of ``synthetic`` (>= 2); the other data sets have their own.
    max_train: keep only the first ``max_train`` training examples (after the split), for quick
      runs.
    max_test: the same for the test examples.

  Returns:
    The :class:`Dataset`; images (N, H, W, C) float32 in [0, 1], labels (N,) int32.

  Raises:
    ValueError: an unknown name or a bad argument (the message names it), a missing ``data_dir``, or
      a malformed file (the message names the file and what was expected).
    TypeError: an argument of the wrong type (the message names it).
    FileNotFoundError: a data file is missing (the message names the paths looked for).
  """
  owner = "load_dataset"
  if name not in DATASETS:
    raise ValueError(f"{owner}: unknown name {name!r}; expected one of {DATASETS}")
  seed = validate.positive_int(owner, "seed", seed, minimum=0)
  test_fraction = validate.number(owner, "test_fraction", test_fraction, low=0, high=1,
                                  low_open=True, high_open=True)
  synthetic_shape = positive_ints(owner, "synthetic_shape", synthetic_shape, meaning="(H, W, C)")
  synthetic_sizes = positive_ints(owner, "synthetic_sizes", synthetic_sizes, meaning="(train, test)")
  num_classes = validate.positive_int(owner, "num_classes", num_classes, minimum=2)
  if max_train is not None:
    max_train = validate.positive_int(owner, "max_train", max_train)
  if max_test is not None:
    max_test = validate.positive_int(owner, "max_test", max_test)
  if name in FILE_DATASETS and data_dir is None:
    raise ValueError(f"{owner}: data_dir is required for {name!r}: point it at the extracted files "
                     "(nothing is downloaded)")

  if name == "digits":
    train, test = _digits(seed, test_fraction)
  elif name == "synthetic":
    train, test = _synthetic(synthetic_shape, synthetic_sizes, num_classes, seed)
  elif name == "cifar10":
    train, test = dataset_files.cifar10(os.fspath(data_dir))
  else:
    train, test = dataset_files.idx_dataset(name, os.fspath(data_dir))
  return Dataset(name=name, train_images=train[0][:max_train], train_labels=train[1][:max_train],
                 test_images=test[0][:max_test], test_labels=test[1][:max_test],
                 num_classes=num_classes if name == "synthetic" else FIXED_CLASSES)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches in one pass over ``num_examples`` (the remainder is dropped)."""
  return _checked_steps_per_epoch("steps_per_epoch", num_examples, batch_size)


def batch_indices(num_examples: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
  """The example indices of global training step ``step``, computed without replaying earlier steps.

  Epoch ``e`` is the permutation ``np.random.default_rng([seed, e]).permutation(num_examples)``,
  cut into ``steps_per_epoch(num_examples, batch_size)`` consecutive batches (the remainder
  dropped); step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``.

  Args:
    num_examples: size of the training set.
    batch_size: examples per step, 1 <= batch_size <= num_examples.
    seed: >= 0; the data-order seed.
    step: >= 0; the 0-based global step.

  Returns:
    (batch_size,) int64 indices into the training set, distinct within an epoch.
  """
  owner = "batch_indices"
  per_epoch = _checked_steps_per_epoch(owner, num_examples, batch_size)
  seed = validate.positive_int(owner, "seed", seed, minimum=0)
  step = validate.positive_int(owner, "step", step, minimum=0)
  epoch, position = divmod(step, per_epoch)
  order = _epoch_order(int(num_examples), seed, epoch)
  return order[position * batch_size:(position + 1) * batch_size].copy()


def _checked_steps_per_epoch(owner: str, num_examples: int, batch_size: int) -> int:
  num_examples = validate.positive_int(owner, "num_examples", num_examples)
  batch_size = validate.positive_int(owner, "batch_size", batch_size)
  if batch_size > num_examples:
    raise ValueError(f"{owner}: batch_size must be <= num_examples ({num_examples}), got "
                     f"{batch_size}")
  return num_examples // batch_size


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def positive_ints(owner: str, name: str, value: Any, *, meaning: str) -> tuple[int, ...]:
  """Returns ``value`` as a tuple of ints >= 1, one per entry ``meaning`` names ("(H, W, C)"), or
  raises ValueError naming ``owner`` and ``name`` as :mod:`pwconv.validate` does."""
  length = len(meaning.split(","))
  if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length
      or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in value)):
    raise ValueError(f"{owner}: {name} must be {meaning} of positive ints, got {value!r}")
  return tuple(int(v) for v in value)


def _digits(seed: int, test_fraction: float):
  """scikit-learn's digits (values 0..16 scaled to [0, 1]), split stratified by class."""
  digits = sk_datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, labels, test_size=test_fraction, random_state=seed, stratify=labels)
  return (train_x, train_y), (test_x, test_y)


def _synthetic(shape: tuple[int, ...], sizes: tuple[int, ...], num_classes: int, seed: int):
  """Each class is a smooth random pattern; an example is a shifted window of it plus noise.

  The patterns are drawn on a canvas ``shift`` pixels larger than the image on every side; an
  example crops an (H, W) window at a uniform random offset, adds N(0, 0.15²) pixel noise and clips
  to [0, 1]. Classes are balanced and shuffled.
  """
  height, width, channels = shape
  shift = max(1, min(height, width) // 8)
  rng = np.random.default_rng(seed)
  canvas = _smooth_patterns(rng, (num_classes, height + 2 * shift, width + 2 * shift, channels))
  splits = []
  for size in sizes:
    labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
    rows = rng.integers(0, 2 * shift + 1, size)[:, None] + np.arange(height)
    cols = rng.integers(0, 2 * shift + 1, size)[:, None] + np.arange(width)
    images = canvas[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
    images = np.clip(images + rng.normal(0.0, 0.15, images.shape), 0.0, 1.0)
    splits.append((images.astype(np.float32), labels))
  return splits


def _smooth_patterns(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
  """(K, H, W, C) bilinear upsamplings of uniform random grids about four times coarser."""
  count, height, width, channels = shape
  coarse = rng.uniform(size=(count, max(2, -(-height // 4)), max(2, -(-width // 4)), channels))
  return _linear_resize(_linear_resize(coarse, 1, height), 2, width)


def _linear_resize(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  """Linearly interpolates ``x`` along ``axis`` to ``size`` samples, keeping both end samples."""
  position = np.linspace(0.0, x.shape[axis] - 1, size)
  low = np.floor(position).astype(int)
  high = np.minimum(low + 1, x.shape[axis] - 1)
  weight = (position - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  return np.take(x, low, axis) * (1.0 - weight) + np.take(x, high, axis) * weight
