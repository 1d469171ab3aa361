"""The optimizer of the runner."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import smoke
from experiments.optimizer import make_optimizer


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_honours_nesterov(name):
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
  grads = [{"w": jnp.full((3, 3), g), "b": jnp.full(3, -g)} for g in (0.5, 2.0, -1.0)]

  def updates(nesterov):
    config = smoke.get_config()
    config.optimizer.update(name=name, nesterov=nesterov)
    opt = make_optimizer(config)
    state, out = opt.init(params), []
    for g in grads:
      u, state = opt.update(g, state, params)
      out.append(u)
    return out

  plain, nesterov = updates(False), updates(True)
  assert not np.allclose(plain[-1]["w"], nesterov[-1]["w"])
