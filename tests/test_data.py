"""Tests for experiments/data.py: loaders on small files in each real format, and the data order."""

import builtins
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from experiments import data

IDX_IMAGES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
IDX_LABELS = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch")


def _idx_bytes(array, magic):
  return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write(path, payload, gz=False):
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(payload)


def _write_mnist(folder, *, gz=False, sizes=(5, 3)):
  """Writes the four IDX files; returns {file name: uint8 array written}."""
  rng = np.random.default_rng(0)
  written = {}
  for images_name, labels_name, n in zip(IDX_IMAGES, IDX_LABELS, sizes):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write(folder / (images_name + suffix), _idx_bytes(images, 0x00000803), gz)
    _write(folder / (labels_name + suffix), _idx_bytes(labels, 0x00000801), gz)
    written[images_name], written[labels_name] = images, labels
  return written


def _cifar_batches(sizes=(3, 2, 2, 2, 4, 3)):
  """{batch name: ((N, 3072) uint8 channel-major pixels, (N,) labels)}."""
  rng = np.random.default_rng(1)
  return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
          for name, n in zip(CIFAR_BATCHES, sizes)}


def _write_cifar_pickles(folder, batches, *, str_keys=False, numpy1_names=False, protocol=2,
                         batch_label=b"x"):
  """Pickles (protocol 2 by default, as the release's); ``numpy1_names`` writes numpy 1's module
  path, as the real files have."""
  folder.mkdir(parents=True, exist_ok=True)
  for name, (pixels, labels) in batches.items():
    keys = ("data", "labels") if str_keys else (b"data", b"labels")
    batch = {keys[0]: pixels, keys[1]: [int(v) for v in labels], b"batch_label": batch_label}
    payload = pickle.dumps(batch, protocol=protocol)
    if numpy1_names:
      new = b"cnumpy.core.multiarray\n_reconstruct\n"
      payload = payload.replace(b"cnumpy._core.multiarray\n_reconstruct\n", new)
      assert new in payload
    (folder / name).write_bytes(payload)


def _write_cifar_binary(folder, batches):
  folder.mkdir(parents=True, exist_ok=True)
  for name, (pixels, labels) in batches.items():
    records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
    records.tofile(folder / (name + ".bin"))


# MNIST / Fashion-MNIST (IDX).


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_round_trip(tmp_path, name, gz):
  written = _write_mnist(tmp_path, gz=gz)
  ds = data.load_dataset(name, data_dir=str(tmp_path))
  assert ds.name == name and ds.num_classes == 10
  assert ds.train_images.shape == (5, 28, 28, 1) and ds.test_images.shape == (3, 28, 28, 1)
  assert ds.image_shape == (28, 28, 1) and (ds.num_train, ds.num_test) == (5, 3)
  assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
  pixel = written["train-images-idx3-ubyte"][2, 3, 7]
  assert ds.train_images[2, 3, 7, 0] == np.float32(pixel) / 255
  np.testing.assert_array_equal(ds.test_images[..., 0] * 255,
                                written["t10k-images-idx3-ubyte"].astype(np.float32))
  np.testing.assert_array_equal(ds.train_labels, written["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.test_labels, written["t10k-labels-idx1-ubyte"])


def test_idx_max_train_and_max_test_truncate(tmp_path):
  _write_mnist(tmp_path)
  ds = data.load_dataset("mnist", data_dir=tmp_path, max_train=2, max_test=1)
  assert (ds.num_train, ds.num_test) == (2, 1)


@pytest.mark.parametrize("keep", [-1, -500, 14])  # 14 bytes cut into the 16-byte header.
def test_idx_truncated_file_names_file(tmp_path, keep):
  _write_mnist(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:keep])
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_trailing_bytes_names_file(tmp_path):
  _write_mnist(tmp_path)
  path = tmp_path / "t10k-labels-idx1-ubyte"
  path.write_bytes(path.read_bytes() + b"\0")
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: has trailing bytes"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_wrong_magic_names_file_and_expected_magic(tmp_path):
  _write_mnist(tmp_path)
  path = tmp_path / "train-labels-idx1-ubyte"
  path.write_bytes(struct.pack(">I", 0x00000803) + path.read_bytes()[4:])
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: expected IDX magic 0x00000801"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_truncated_gzip_names_file(tmp_path):
  _write_mnist(tmp_path, gz=True)
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_count_mismatch_names_both_files(tmp_path):
  _write_mnist(tmp_path)
  _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(4, np.uint8), 0x00000801))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 5 images but .*"
                     r"train-labels-idx1-ubyte holds 4 labels"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_label_out_of_range_names_file(tmp_path):
  _write_mnist(tmp_path)
  labels = np.array([1, 10, 2], np.uint8)
  _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(labels, 0x00000801))
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: labels must be in .*found 10"):
    data.load_dataset("mnist", data_dir=tmp_path)


def test_idx_missing_file_names_full_path_and_gz(tmp_path):
  _write_mnist(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  expected = str(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError) as info:
    data.load_dataset("fashion_mnist", data_dir=tmp_path)
  assert expected in str(info.value) and expected + ".gz" in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_file_datasets_require_data_dir(name):
  with pytest.raises(ValueError, match=r"data_dir is required for .*nothing is downloaded"):
    data.load_dataset(name)


# CIFAR-10.


@pytest.mark.parametrize("subdir,str_keys,numpy1_names", [
    ("", False, False), ("cifar-10-batches-py", False, False), ("cifar-10-batches-py", True, False),
    ("cifar-10-batches-py", False, True)])
def test_cifar_pickle_round_trip(tmp_path, subdir, str_keys, numpy1_names):
  batches = _cifar_batches()
  pixels = batches["data_batch_1"][0]
  pixels[0, 1 * 1024 + 5 * 32 + 9] = 123  # Green, row 5, column 9 of the first image.
  pixels[0, 2 * 1024 + 31 * 32 + 0] = 7  # Blue, row 31, column 0.
  _write_cifar_pickles(tmp_path / subdir, batches, str_keys=str_keys, numpy1_names=numpy1_names)
  ds = data.load_dataset("cifar10", data_dir=str(tmp_path))
  assert ds.train_images.shape == (13, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
  assert ds.train_images.dtype == np.float32 and ds.test_labels.dtype == np.int32
  assert ds.train_images[0, 5, 9, 1] == np.float32(123) / 255
  assert ds.train_images[0, 31, 0, 2] == np.float32(7) / 255
  last = batches["data_batch_5"][0][-1]  # The last training image, red, row 2, column 30.
  assert ds.train_images[-1, 2, 30, 0] == np.float32(last[0 * 1024 + 2 * 32 + 30]) / 255
  np.testing.assert_array_equal(
      ds.train_labels, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
  np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][1])


@pytest.mark.parametrize("protocol,batch_label", [(5, b"x"), (2, b""), (4, b"")])
def test_cifar_pickles_numpy_writes_are_read(tmp_path, protocol, batch_label):
  """Protocol 5 stores arrays through numpy's ``_frombuffer``; protocol 2 an empty bytes value as
  ``bytes()``: both are what numpy and Python write, not code."""
  batches = _cifar_batches()
  _write_cifar_pickles(tmp_path, batches, protocol=protocol, batch_label=batch_label)
  ds = data.load_dataset("cifar10", data_dir=str(tmp_path))
  pixel = batches["test_batch"][0][1, [3 * 32 + 4 + c * 1024 for c in range(3)]]  # row 3, col 4
  np.testing.assert_array_equal(ds.test_images[1, 3, 4], pixel / np.float32(255))
  np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][1])


def test_cifar_pickle_bytes_with_arguments_is_refused(tmp_path):
  class Big:
    def __reduce__(self):
      return (bytes, (10**12,))  # would allocate a terabyte

  _write_cifar_pickles(tmp_path, _cifar_batches())
  (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Big(), b"labels": []}, protocol=2))
  with pytest.raises(ValueError, match=r"data_batch_1: .*refusing bytes\(1000000000000,\)"):
    data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_empty_pickle_batch_says_it_holds_no_images(tmp_path):
  batches = _cifar_batches()
  batches["data_batch_2"] = (np.zeros((0, 3072), np.uint8), np.zeros(0, int))
  _write_cifar_pickles(tmp_path, batches)
  with pytest.raises(ValueError, match=r"data_batch_2: holds no images; an interrupted copy"):
    data.load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_nan_pixel_is_named_with_its_split_and_example(split):
  images = {s: np.zeros((4, 2, 2, 1), np.float32) for s in ("train", "test")}
  images[split][2, 1, 0, 0] = np.nan
  with pytest.raises(ValueError, match=rf"Dataset\(synthetic\): {split}_images holds 1 NaN or "
                                       r"infinite pixel values \(the first in example 2, at \(row, "
                                       r"column, channel\) \(1, 0, 0\)\)"):
    data.Dataset("synthetic", images["train"], np.zeros(4, np.int32), images["test"],
                 np.zeros(4, np.int32), 2)


def test_the_fingerprint_follows_every_pixel():
  ds = data.load_dataset("synthetic", synthetic_sizes=(64, 16), num_classes=4)
  again = data.load_dataset("synthetic", synthetic_sizes=(64, 16), num_classes=4)
  first = ds.fingerprint()
  assert first == again.fingerprint()
  assert {k: first[k] for k in ("num_train", "num_test", "image_shape", "num_classes")} == {
      "num_train": 64, "num_test": 16, "image_shape": [8, 8, 1], "num_classes": 4}
  again.test_images[15, 7, 7, 0] += 1e-3
  assert again.fingerprint()["sha1"] != first["sha1"]


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin"])
def test_cifar_binary_round_trip(tmp_path, subdir):
  batches = _cifar_batches()
  batches["test_batch"][0][2, 0 * 1024 + 4 * 32 + 17] = 250  # Red, row 4, column 17, image 2.
  _write_cifar_binary(tmp_path / subdir, batches)
  ds = data.load_dataset("cifar10", data_dir=tmp_path, max_test=3)
  assert ds.train_images.shape == (13, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
  assert ds.test_images[2, 4, 17, 0] == np.float32(250) / 255
  first = batches["data_batch_2"][0][0]  # Training image 3 is the first of batch 2.
  assert ds.train_images[3, 10, 11, 2] == np.float32(first[2 * 1024 + 10 * 32 + 11]) / 255
  np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][1])
  assert ds.train_images.min() >= 0 and ds.train_images.max() <= 1


def test_cifar_truncated_binary_names_file(tmp_path):
  _write_cifar_binary(tmp_path / "cifar-10-batches-bin", _cifar_batches())
  path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
  path.write_bytes(path.read_bytes()[:-1])
  with pytest.raises(ValueError, match=r"data_batch_3\.bin: 6145 bytes is not a multiple of"):
    data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_binary_label_out_of_range_names_file(tmp_path):
  batches = _cifar_batches()
  batches["test_batch"][1][1] = 10
  _write_cifar_binary(tmp_path, batches)
  with pytest.raises(ValueError, match=r"test_batch\.bin: labels must be in \[0, 10\)"):
    data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_pickle_wrong_shape_names_file(tmp_path):
  batches = _cifar_batches()
  batches["data_batch_4"] = (batches["data_batch_4"][0][:, :3000], batches["data_batch_4"][1])
  _write_cifar_pickles(tmp_path, batches)
  with pytest.raises(ValueError, match=r"data_batch_4: b'data' must be a uint8 array \(N, 3072\)"):
    data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_missing_files_are_listed(tmp_path):
  _write_cifar_pickles(tmp_path / "cifar-10-batches-py", _cifar_batches())
  os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_5")
  with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_5"):
    data.load_dataset("cifar10", data_dir=tmp_path)


class _ShellPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _ExecPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload,refused", [(_ShellPayload, r"(posix|nt)\.system"),
                                             (_ExecPayload, r"(__builtin__|builtins)\.exec")])
def test_cifar_pickle_refuses_code(tmp_path, payload, refused):
  folder = tmp_path / "cifar-10-batches-py"
  _write_cifar_pickles(folder, _cifar_batches())
  marker = tmp_path / "MARKER"
  batch = {b"data": payload(marker), b"labels": [0]}
  with open(folder / "data_batch_2", "wb") as f:
    pickle.dump(batch, f, protocol=2)
  with pytest.raises(ValueError, match=rf"data_batch_2: .*refusing to unpickle {refused}"):
    data.load_dataset("cifar10", data_dir=tmp_path)
  assert not marker.exists()


def test_exec_payload_is_live_under_plain_pickle(tmp_path):
  """Control for the test above: read by the stock unpickler, the payload does create the marker."""
  marker = tmp_path / "MARKER"
  pickle.loads(pickle.dumps({b"data": _ExecPayload(marker)}, protocol=2))
  assert marker.exists()


# Digits and synthetic.


def test_digits_split_shapes_values_and_stratification():
  ds = data.load_dataset("digits", test_fraction=0.25)
  assert ds.train_images.shape == (1347, 8, 8, 1) and ds.test_images.shape == (450, 8, 8, 1)
  assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
  assert ds.train_images.min() == 0 and ds.train_images.max() == 1 and ds.num_classes == 10
  per_class = np.bincount(ds.train_labels, minlength=10) + np.bincount(ds.test_labels, minlength=10)
  assert per_class.sum() == 1797
  assert np.all(np.abs(np.bincount(ds.test_labels, minlength=10) - 0.25 * per_class) <= 1)


def test_digits_determinism_and_seed():
  a, b = data.load_dataset("digits", seed=3), data.load_dataset("digits", seed=3)
  c = data.load_dataset("digits", seed=4, max_train=100, max_test=10)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert not np.array_equal(a.train_labels[:100], c.train_labels)
  assert (c.num_train, c.num_test) == (100, 10)


def test_synthetic_shape_determinism_and_range():
  kwargs = dict(synthetic_shape=(12, 10, 3), synthetic_sizes=(60, 20), num_classes=4, seed=5)
  a, b = data.load_dataset("synthetic", **kwargs), data.load_dataset("synthetic", **kwargs)
  c = data.load_dataset("synthetic", **{**kwargs, "seed": 6})
  assert a.train_images.shape == (60, 12, 10, 3) and a.test_images.shape == (20, 12, 10, 3)
  assert a.train_images.dtype == np.float32 and a.train_labels.dtype == np.int32
  assert a.num_classes == 4 and set(a.train_labels) == {0, 1, 2, 3}
  assert a.train_images.min() >= 0 and a.train_images.max() <= 1
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert not np.array_equal(a.train_images, c.train_images)


def test_synthetic_is_learnable_by_nearest_class_mean():
  ds = data.load_dataset("synthetic", seed=0)
  means = np.stack([ds.train_images[ds.train_labels == k].mean(0) for k in range(10)])
  distances = ((ds.test_images[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
  assert np.mean(distances.argmin(1) == ds.test_labels) > 0.8


# Argument checks.


@pytest.mark.parametrize("kwargs,argument", [
    (dict(test_fraction=0.0), "test_fraction"),
    (dict(test_fraction=1.0), "test_fraction"),
    (dict(synthetic_shape=(8, 8)), "synthetic_shape"),
    (dict(synthetic_shape=(8, 0, 1)), "synthetic_shape"),
    (dict(synthetic_sizes=(10, 0)), "synthetic_sizes"),
    (dict(num_classes=1), "num_classes"),
    (dict(max_train=0), "max_train"),
    (dict(max_test=-1), "max_test"),
    (dict(seed=-1), "seed"),
])
def test_load_dataset_bad_argument_is_named(kwargs, argument):
  with pytest.raises(ValueError, match=rf"load_dataset: {argument}"):
    data.load_dataset("synthetic", **kwargs)


def test_unknown_name_lists_datasets():
  with pytest.raises(ValueError, match=r"'imagenet'.*'digits', 'synthetic', 'mnist'"):
    data.load_dataset("imagenet")


# Data order.


def test_batch_indices_follow_epoch_permutations():
  n, batch, seed = 23, 5, 7
  per_epoch = data.steps_per_epoch(n, batch)
  assert per_epoch == 4
  for epoch in range(3):
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = [data.batch_indices(n, batch, seed=seed, step=epoch * per_epoch + k)
             for k in range(per_epoch)]
    for k, indices in enumerate(steps):
      np.testing.assert_array_equal(indices, order[k * batch:(k + 1) * batch])
    seen = np.concatenate(steps)
    assert len(np.unique(seen)) == per_epoch * batch and seen.min() >= 0 and seen.max() < n


def test_batch_indices_deterministic_and_epochs_differ():
  first = data.batch_indices(1000, 100, seed=1, step=3)
  np.testing.assert_array_equal(first, data.batch_indices(1000, 100, seed=1, step=3))
  assert not np.array_equal(first, data.batch_indices(1000, 100, seed=1, step=13))
  assert not np.array_equal(first, data.batch_indices(1000, 100, seed=2, step=3))
  first[:] = -1  # The returned array is the caller's own.
  assert data.batch_indices(1000, 100, seed=1, step=3).min() >= 0


@pytest.mark.parametrize("args,kwargs,argument", [
    ((10, 11), dict(seed=0, step=0), "batch_size"),
    ((10, 0), dict(seed=0, step=0), "batch_size"),
    ((0, 1), dict(seed=0, step=0), "num_examples"),
    ((10, 2), dict(seed=-1, step=0), "seed"),
    ((10, 2), dict(seed=0, step=-1), "step"),
])
def test_batch_indices_bad_argument_is_named(args, kwargs, argument):
  with pytest.raises(ValueError, match=rf"batch_indices: {argument}"):
    data.batch_indices(*args, **kwargs)


def test_steps_per_epoch_drops_remainder_and_checks():
  assert data.steps_per_epoch(1797, 128) == 14
  with pytest.raises(ValueError, match=r"steps_per_epoch: batch_size must be <= num_examples"):
    data.steps_per_epoch(10, 20)


def test_cifar_uneven_batches_are_named_in_a_warning(tmp_path, caplog):
  _write_cifar_binary(tmp_path, _cifar_batches())  # training batches of 3, 2, 2, 2 and 4 images
  with caplog.at_level("WARNING"):
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
  assert ds.num_train == 13
  assert ("data_batch_1.bin 3, data_batch_2.bin 2, data_batch_3.bin 2, data_batch_4.bin 2, "
          "data_batch_5.bin 4" in caplog.text)
  caplog.clear()
  _write_cifar_binary(tmp_path / "even", _cifar_batches((2, 2, 2, 2, 2, 3)))
  with caplog.at_level("WARNING"):
    data.load_dataset("cifar10", data_dir=tmp_path / "even")
  assert "different numbers of images" not in caplog.text
