"""Test set-up: CPU only, with 8 fake CPU devices for the data-parallel tests.

Both must be set before JAX initialises its backends, so they are set here, before any test imports jax.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8") if f)
