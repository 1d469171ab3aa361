"""pwconv.models.registry: every entry creates, initialises and runs (abstractly) at a small size,
with its figures and references in order."""

import jax
import jax.numpy as jnp
import pytest

from pwconv import models
from pwconv.models import registry

ALL = models.list_models()


def test_every_family_is_registered():
  for name in ("mobilenet_v1", "mobilenet_v2", "squeezenet1_0", "googlenet", "googlenet_torchvision",
               "resnet50", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
               "mobilenet_v4_conv_small", "ghostnet", "convnext_tiny", "repvgg_a0",
               "mobileone_s0"):
    assert name in ALL
  assert {f"smallnet_{b}" for b in models.SMALLNET_BLOCKS} <= set(ALL)
  assert models.list_models("mobilenet_v3*") == ["mobilenet_v3_large", "mobilenet_v3_small"]


@pytest.mark.parametrize("name", ALL)
def test_creates_and_runs_at_a_small_size(name):
  net = models.create(name, num_classes=7)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x), x)
  logits = jax.eval_shape(lambda v, x: net.apply(v, x), variables, x)
  assert logits.shape == (2, 7)


@pytest.mark.parametrize("entry", [e for e in registry.entries() if e.family != "smallnet"],
                         ids=lambda e: e.name)
def test_paper_entries_cite_their_figures(entry):
  assert entry.source
  if entry.figures:
    assert entry.figures["params"] > 0 and entry.figures["macs"] > 0
  for ref in entry.references:
    assert ref.library in ("torchvision", "timm") and ref.classifier.endswith("weight")


def test_references_are_unique():
  refs = [(r.library, r.name) for e in registry.entries() for r in e.references]
  assert len(refs) == len(set(refs))
  entry, ref = registry.find_reference("timm", "mobilenetv3_large_100")
  assert entry.name == "mobilenet_v3_large"
  with pytest.raises(ValueError, match=r"no pwconv network for timm model 'resnet18'"):
    registry.find_reference("timm", "resnet18")
