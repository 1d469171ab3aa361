"""Data sets for the experiment runner, as numpy arrays: images (N, H, W, C) float32 in [0, 1].

- ``digits``: scikit-learn's 1797 8x8 handwritten digits (shipped inside scikit-learn), split into
  train and test by a stratified shuffle drawn from ``seed``.
- ``synthetic``: smooth random class prototypes seen through shifted windows plus noise, any shape;
  a learnable task for smoke runs.
- ``mnist`` / ``fashion_mnist``: the four IDX files, plain or ``.gz``, in ``data_dir``.
- ``cifar10``: the python-pickle or the binary batches, in ``data_dir`` or in the folder its archive
  extracts to. Pickles are read by an unpickler that builds numpy arrays and containers only.

Nothing is ever downloaded. :func:`batch_indices` computes the examples of any training step from
``(seed, step)`` alone, so a resumed run sees exactly the data order of an uninterrupted one.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from pwconv import validate

DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10")

_FIXED_CLASSES = 10  # MNIST, Fashion-MNIST and CIFAR-10 all have ten classes.

_IDX_FILES = (  # (images, labels) for train, then test; the same names for MNIST and Fashion-MNIST.
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims: (N, rows, cols).
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim: (N,).

_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                  "test_batch")
_CIFAR_PIXELS = 3 * 32 * 32  # channel-major: 1024 R, then 1024 G, then 1024 B, each row-major.

_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_PICKLE_GLOBALS = {  # All that a pickled dict of numpy arrays, lists, bytes and numbers refers to.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # How protocol 2 stores bytes written by Python 3.
}


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
    FileNotFoundError: a data file is missing (the message names the paths looked for).
  """
  owner = "load_dataset"
  if name not in DATASETS:
    raise ValueError(f"{owner}: unknown name {name!r}; expected one of {DATASETS}")
  seed = validate.positive_int(owner, "seed", seed, minimum=0)
  if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating))
      or not 0 < test_fraction < 1):
    raise ValueError(f"{owner}: test_fraction must be a number in (0, 1), got {test_fraction!r}")
  synthetic_shape = _positive_ints(owner, "synthetic_shape", synthetic_shape, "(H, W, C)")
  synthetic_sizes = _positive_ints(owner, "synthetic_sizes", synthetic_sizes, "(train, test)")
  num_classes = validate.positive_int(owner, "num_classes", num_classes, minimum=2)
  if max_train is not None:
    max_train = validate.positive_int(owner, "max_train", max_train)
  if max_test is not None:
    max_test = validate.positive_int(owner, "max_test", max_test)
  if name in ("mnist", "fashion_mnist", "cifar10") and data_dir is None:
    raise ValueError(f"{owner}: data_dir is required for {name!r}: point it at the extracted files "
                     "(nothing is downloaded)")

  if name == "digits":
    train, test = _digits(seed, test_fraction)
  elif name == "synthetic":
    train, test = _synthetic(synthetic_shape, synthetic_sizes, num_classes, seed)
  elif name == "cifar10":
    train, test = _cifar10(os.fspath(data_dir))
  else:
    train, test = _idx_dataset(name, os.fspath(data_dir))
  return Dataset(name=name, train_images=train[0][:max_train], train_labels=train[1][:max_train],
                 test_images=test[0][:max_test], test_labels=test[1][:max_test],
                 num_classes=num_classes if name == "synthetic" else _FIXED_CLASSES)


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


def _positive_ints(owner: str, name: str, value: Any, meaning: str) -> tuple[int, ...]:
  """Returns ``value`` as a tuple of positive ints with as many entries as ``meaning`` names."""
  length = len(meaning.split(","))
  if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length
      or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in value)):
    raise ValueError(f"{owner}: {name} must be {length} positive ints {meaning}, got {value!r}")
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


def _idx_dataset(name: str, data_dir: str):
  """MNIST-style IDX files -> ((train images, labels), (test images, labels))."""
  splits = []
  for images_file, labels_file in _IDX_FILES:
    images_path = _idx_path(name, data_dir, images_file)
    labels_path = _idx_path(name, data_dir, labels_file)
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, "images (N, rows, cols)")
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, "labels (N,)")
    if len(images) != len(labels):
      raise ValueError(f"{name}: {images_path} holds {len(images)} images but {labels_path} holds "
                       f"{len(labels)} labels; expected one label per image")
    _check_labels(labels_path, labels)
    splits.append((images[..., None].astype(np.float32) / 255, labels.astype(np.int32)))
  return splits


def _idx_path(name: str, data_dir: str, filename: str) -> str:
  """The plain file if present, else its ``.gz``."""
  plain = os.path.join(data_dir, filename)
  for path in (plain, plain + ".gz"):
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{name}: expected the IDX file {plain} (plain, or gzipped as "
                          f"{plain}.gz: both are accepted); nothing is downloaded")


def _read_idx(path: str, magic: int, content: str) -> np.ndarray:
  """Parses an unsigned-byte IDX file whose header must carry ``magic``; checks its size."""
  raw = _read_bytes(path)
  found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
  if found != magic:
    shown = "a file shorter than 4 bytes" if found is None else f"0x{found:08x}"
    raise ValueError(f"{path}: expected IDX magic 0x{magic:08x} (unsigned-byte {content}), "
                     f"found {shown}")
  header = 4 + 4 * (magic & 0xFF)
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header: expected {header} bytes, found {len(raw)}")
  dims = struct.unpack(f">{magic & 0xFF}I", raw[4:header])
  expected = header + math.prod(dims)
  if len(raw) != expected:
    problem = "truncated" if len(raw) < expected else "has trailing bytes"
    raise ValueError(f"{path}: {problem}: the IDX header says dims {dims}, so {expected} bytes are "
                     f"expected, found {len(raw)}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_bytes(path: str) -> bytes:
  """The file's bytes, gunzipped when its name ends in ``.gz``."""
  if not path.endswith(".gz"):
    with open(path, "rb") as f:
      return f.read()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{path}: truncated or corrupt gzip stream ({e})") from e


def _check_labels(path: str, labels: np.ndarray) -> None:
  bad = labels[(labels < 0) | (labels >= _FIXED_CLASSES)]
  if bad.size:
    raise ValueError(f"{path}: labels must be in [0, {_FIXED_CLASSES}), found {bad[0]}")


def _cifar10(data_dir: str):
  """CIFAR-10 batches -> ((50000-ish train images, labels), (test images, labels)), NHWC."""
  folder, suffix = _find_cifar(data_dir)
  read = _read_cifar_binary if suffix else _read_cifar_pickle
  paths = [os.path.join(folder, batch + suffix) for batch in _CIFAR_BATCHES]
  batches = [read(path) for path in paths]
  for path, (pixels, _) in zip(paths, batches):
    if not len(pixels):
      raise ValueError(f"{path}: holds no images; an interrupted copy or extraction?")
  # The release's batches hold 10,000 images each. A file cut exactly at a record boundary is
  # well-formed, so uneven batches are worth a warning that names them (subsets are legitimate).
  counts = [len(pixels) for pixels, _ in batches[:-1]]
  if len(set(counts)) > 1:
    logging.warning("cifar10: the training batches hold different numbers of images (%s); the "
                    "release has 10,000 in each: is one truncated?",
                    ", ".join(f"{os.path.basename(p)} {n}" for p, n in zip(paths, counts)))
  train_pixels = np.concatenate([pixels for pixels, _ in batches[:-1]])
  train_labels = np.concatenate([labels for _, labels in batches[:-1]])
  test_pixels, test_labels = batches[-1]

  def to_nhwc(pixels):
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255

  return (to_nhwc(train_pixels), train_labels), (to_nhwc(test_pixels), test_labels)


def _find_cifar(data_dir: str) -> tuple[str, str]:
  """(folder, suffix) of the first complete batch set: pickles ("") or binary (".bin")."""
  candidates = ((data_dir, ""), (data_dir, ".bin"),
                (os.path.join(data_dir, "cifar-10-batches-py"), ""),
                (os.path.join(data_dir, "cifar-10-batches-bin"), ".bin"))
  partial = []
  for folder, suffix in candidates:
    missing = [batch + suffix for batch in _CIFAR_BATCHES
               if not os.path.isfile(os.path.join(folder, batch + suffix))]
    if not missing:
      return folder, suffix
    if len(missing) < len(_CIFAR_BATCHES):
      partial.append(f"{folder} lacks {', '.join(missing)}")
  raise FileNotFoundError(
      f"cifar10: expected {', '.join(_CIFAR_BATCHES)} (python batches) or the same names with .bin "
      f"(binary batches) in {data_dir} or in its cifar-10-batches-py/ or cifar-10-batches-bin/; "
      + ("; ".join(partial) or "found none") + "; nothing is downloaded")


def _read_cifar_binary(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Records of 1 label byte + 3072 pixel bytes -> ((N, 3072) uint8 pixels, (N,) int32 labels)."""
  raw = np.fromfile(path, np.uint8)
  if raw.size % (1 + _CIFAR_PIXELS):
    raise ValueError(f"{path}: {raw.size} bytes is not a multiple of the {1 + _CIFAR_PIXELS}-byte "
                     f"record (1 label byte + {_CIFAR_PIXELS} pixel bytes); truncated?")
  records = raw.reshape(-1, 1 + _CIFAR_PIXELS)
  _check_labels(path, records[:, 0])
  return records[:, 1:], records[:, 0].astype(np.int32)


def _read_cifar_pickle(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A python batch dict (bytes or str keys) -> ((N, 3072) uint8 pixels, (N,) int32 labels)."""
  try:
    with open(path, "rb") as f:
      batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
  except Exception as e:  # Any failure to parse untrusted bytes is a malformed file.
    raise ValueError(f"{path}: not a readable CIFAR-10 python batch: {e}") from e
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', got "
                     f"{type(batch).__name__}")
  pixels, labels = (np.asarray(_batch_entry(path, batch, key)) for key in ("data", "labels"))
  if pixels.dtype != np.uint8 or pixels.shape[1:] != (_CIFAR_PIXELS,):
    raise ValueError(f"{path}: b'data' must be a uint8 array (N, {_CIFAR_PIXELS}), got "
                     f"{pixels.dtype} {pixels.shape}")
  if labels.shape != pixels.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{path}: b'labels' must be {len(pixels)} integers, got {labels.dtype} "
                     f"{labels.shape}")
  _check_labels(path, labels)
  return pixels, labels.astype(np.int32)


def _batch_entry(path: str, batch: dict, key: str) -> Any:
  for k in (key.encode(), key):
    if k in batch:
      return batch[k]
  raise ValueError(f"{path}: expected key b'{key}' (or '{key}'), found keys "
                   f"{sorted(map(repr, batch))}")


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global.

  Calls reach only the globals ``find_class`` returns, so refusing all but ``_PICKLE_GLOBALS`` means
  a malicious file cannot run code (``os.system``, ``exec``, ...) while it is read.
  """

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _PICKLE_GLOBALS[module, name]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing to unpickle {module}.{name}: only numpy arrays, dicts, lists, strings, bytes "
          "and numbers are allowed") from None
