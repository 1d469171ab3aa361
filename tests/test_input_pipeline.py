"""The host input pipeline: augmentation (batches and sharding are covered end to end in test_train)."""

import numpy as np

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
