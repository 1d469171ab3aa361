"""The host input pipeline: augmentation (batches and sharding are covered end to end in test_train)."""

import numpy as np
import pytest

from experiments import input_pipeline


def test_augment_crops_and_flips():
  images = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
  same = input_pipeline.augment(images, np.array([4, 4]), np.array([4, 4]), np.array([False, False]))
  np.testing.assert_array_equal(same, images)  # offset 4 of a 4-pixel padding is the image itself
  moved = input_pipeline.augment(images, np.array([3, 5]), np.array([4, 6]), np.array([False, True]))
  np.testing.assert_array_equal(moved[0, 1:, :, 0], images[0, :3, :, 0])   # down one row
  np.testing.assert_array_equal(moved[0, 0, :, 0], 0)                       # the padding
  np.testing.assert_array_equal(moved[1, :3, 2:, 0], images[1, 1:, 2:, 0][:, ::-1])  # shifted, flipped
  np.testing.assert_array_equal(moved[1, :, :2, 0], 0)


def test_augment_crops_within_the_given_padding():
  images = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
  keep = np.array([False, False])
  same = input_pipeline.augment(images, np.array([1, 1]), np.array([1, 1]), keep, pad=1)
  np.testing.assert_array_equal(same, images)
  moved = input_pipeline.augment(images, np.array([0, 2]), np.array([1, 1]), keep, pad=1)
  np.testing.assert_array_equal(moved[0, 1:, :, 0], images[0, :3, :, 0])  # down one row
  np.testing.assert_array_equal(moved[1, :3, :, 0], images[1, 1:, :, 0])  # up one row


def _ops(*names):
  return np.array([[input_pipeline.RAND_AUGMENT_OPS.index(n) for n in names]])


def _image():
  return np.linspace(0.0, 1.0, 8 * 8, dtype=np.float32).reshape(1, 8, 8, 1)


def test_rand_augment_at_magnitude_0_is_the_identity():
  images = np.random.default_rng(0).uniform(size=(8, 8, 8, 3)).astype(np.float32)
  ops = np.arange(8)[:, None] % len(input_pipeline.RAND_AUGMENT_OPS)
  out = input_pipeline.rand_augment(images, ops, np.ones((8, 1)), np.full((8, 2), 0.5), 0.0)
  np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("name,sign,check", [
    ("identity", 1, lambda x, y: np.array_equal(x, y)),
    ("brightness", 1, lambda x, y: np.allclose(y, np.clip(x + 0.25, 0, 1))),
    ("brightness", -1, lambda x, y: np.allclose(y, np.clip(x - 0.25, 0, 1))),
    ("contrast", -1, lambda x, y: np.allclose(y, x.mean() + (x - x.mean()) * 0.55)),
    ("solarize", 1, lambda x, y: np.allclose(y, np.where(x >= 0.75, 1 - x, x))),
    ("posterize", 1, lambda x, y: len(np.unique(y)) == 9),
    # round(m·W/4) = 1 pixel.
    ("translate_x", 1, lambda x, y: np.array_equal(y[0, :, 1:], x[0, :, :-1])
     and not y[0, :, :1].any()),
    ("translate_y", -1, lambda x, y: np.array_equal(y[0, :-1], x[0, 1:]) and not y[0, -1:].any()),
    ("cutout", 1, lambda x, y: (y != x).sum() == 4 and not y[0, 3:5, 3:5].any()),
])
def test_each_rand_augment_op_does_what_it_says(name, sign, check):
  x = _image()
  y = input_pipeline.rand_augment(x, _ops(name), np.array([[sign]]), np.array([[0.5, 0.5]]), 0.5)
  assert y.dtype == np.float32 and y.shape == x.shape
  assert check(x, y), name


def test_rand_augment_batches_are_a_function_of_seed_and_step():
  from experiments import data as data_lib
  from experiments.configs import smoke
  import jax
  from jax.sharding import Mesh

  config = smoke.get_config()
  config.randaugment.num_ops, config.randaugment.magnitude = 2, 0.5
  dataset = data_lib.load_dataset("synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(64, 16),
                                  num_classes=4)
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  pipeline = input_pipeline.Pipeline(dataset, config, mesh)
  a, b = (np.asarray(pipeline.train_batch(3, 0)[0]) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, np.asarray(pipeline.train_batch(3, 1)[0]))
  config.randaugment.num_ops = 0
  plain = np.asarray(input_pipeline.Pipeline(dataset, config, mesh).train_batch(3, 0)[0])
  assert not np.allclose(a, plain)
