"""pwconv.models.features: every registered network as a backbone (timm's features_only)."""

import jax
import numpy as np
import pytest

from pwconv import models
from pwconv.models.features import backbone_variables

# (stride, layer, channels) at 224x224, as timm's feature_info lists them for these networks.
EXPECTED = {
    "resnet50": [(4, "stage1_block3", 256), (8, "stage2_block4", 512), (16, "stage3_block6", 1024),
                 (32, "stage4_block3", 2048)],
    "mobilenet_v2": [(4, "block3", 24), (8, "block6", 32), (16, "block13", 96), (32, "block17", 320)],
    "efficientnet_b0": [(4, "stage2_block2", 24), (8, "stage3_block2", 40),
                        (16, "stage5_block3", 112), (32, "stage7_block1", 320)],
    "convnext_tiny": [(4, "stage1_block3", 96), (8, "stage2_block3", 192),
                      (16, "stage3_block9", 384), (32, "stage4_block3", 768)],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_feature_info_as_timm(name):
  info = models.create(name, features_only=True).feature_info((1, 224, 224, 3))
  assert [(i["stride"], i["module"], i["channels"]) for i in info] == EXPECTED[name]


@pytest.mark.parametrize("name", [n for n in models.list_models() if not n.startswith("smallnet")
                                  and n != "squeezenet1_0"])
def test_every_paper_network_reaches_strides_4_to_32(name):
  info = models.create(name, features_only=True).feature_info((1, 224, 224, 3))
  assert [i["stride"] for i in info] == [4, 8, 16, 32]
  assert all(i["channels"] > 0 and i["module"] not in ("classifier", "head", "last") for i in info)


def test_squeezenet_stops_at_16_and_says_so():
  net = models.create("squeezenet1_0", features_only=True, out_strides=(4, 8, 16))
  assert [i["module"] for i in net.feature_info((1, 224, 224, 3))] == ["fire4", "fire8", "fire9"]
  with pytest.raises(ValueError, match=r"SqueezeNet has no layer at stride \[32\]"):
    models.create("squeezenet1_0", features_only=True).feature_info((1, 224, 224, 3))


def test_features_are_the_networks_own_activations_and_the_head_never_runs():
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  net = models.create("mobilenet_v2", width_multiplier=0.25, num_classes=5)
  variables = net.init(jax.random.key(1), x)
  backbone = models.create("mobilenet_v2", features_only=True, width_multiplier=0.25)
  mine = backbone_variables(variables, net.head_layers)
  assert jax.tree.structure(mine) == jax.tree.structure(backbone.init(jax.random.key(2), x))
  assert "classifier" not in mine["params"]["backbone"] and "last" not in mine["params"]["backbone"]
  feats = backbone.apply(mine, x)
  assert [f.shape for f in feats] == [(2, 16, 16, 8), (2, 8, 8, 8), (2, 4, 4, 24), (2, 2, 2, 80)]
  _, state = net.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  np.testing.assert_allclose(feats[-1], state["intermediates"]["block17"]["__call__"][0],
                             rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="FeatureNet: out_strides must be increasing"):
    models.create("resnet50", features_only=True, out_strides=(8, 4))
  with pytest.raises(TypeError, match="models.create: features_only must be True or False"):
    models.create("resnet50", features_only="yes")
  with pytest.raises(ValueError, match=r"models: unknown model 'resnet5'; did you mean 'resnet50'"):
    models.create("resnet5")
