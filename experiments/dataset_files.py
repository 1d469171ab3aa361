"""Readers of the data sets' release files: MNIST-style IDX and CIFAR-10 batches, as numpy arrays.

Every file is checked as it is read (magic numbers, sizes, label range), and each error names the file
and what was expected. CIFAR-10's python batches are pickles: they are read by an unpickler that builds
numpy arrays and containers only, so a malicious file cannot run code. Nothing is ever downloaded.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import struct
import zlib
from typing import Any

import numpy as np
from absl import logging

NUM_CLASSES = 10  # MNIST, Fashion-MNIST and CIFAR-10 all have ten classes.

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
_FROMBUFFER = np.ndarray(0).__reduce_ex__(5)[0]  # protocol 5's array: frombuffer(...).reshape(...)


def _empty_bytes(*args: Any) -> bytes:
  """``bytes()``: how protocol 2 stores an empty bytes value; any other call is refused."""
  if args:
    raise pickle.UnpicklingError(f"refusing bytes{args!r}: only bytes() is expected")
  return b""


_PICKLE_GLOBALS = {  # All that a pickled dict of numpy arrays, lists, bytes and numbers refers to.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # How protocol 2 stores bytes written by Python 3.
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def idx_dataset(name: str, data_dir: str):
  """The four IDX files of ``name`` (mnist or fashion_mnist) in ``data_dir``, each plain or ``.gz``
  -> ((train images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int32), (test images, labels))."""
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
  bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
  if bad.size:
    raise ValueError(f"{path}: labels must be in [0, {NUM_CLASSES}), found {bad[0]}")


def cifar10(data_dir: str):
  """CIFAR-10's batches in ``data_dir`` (or the folder its archive extracts to) -> ((train images
  (N, 32, 32, 3) float32 in [0, 1], labels (N,) int32), (test images, labels)); N is 50000 for the
  release."""
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
  if not pixels.size and not labels.size:
    raise ValueError(f"{path}: holds no images; an interrupted copy or extraction?")
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
