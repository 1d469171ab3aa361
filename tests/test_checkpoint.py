"""Checkpoints that lose nothing: the newest intact step restored past a damaged one, the run's
fingerprint kept in every step, and a workdir whose config.json is gone or broken."""

import glob
import json
import os
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpoint
from experiments import train
from experiments.configs import smoke

FINGERPRINT = {"config": {"seed": 0, "model.width": 8}, "data": {"sha1": "ab", "num_train": 4}}
STATE = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(4)}}


def _saved(tmp_path, steps=(4, 8)):
  directory = str(tmp_path / "ckpt")
  with checkpoint.manager(directory, keep=3, fingerprint=FINGERPRINT) as mngr:
    for step in steps:
      checkpoint.save(mngr, step, {"w": STATE["w"] + step, "b": STATE["b"]})
  return directory


def _data_files(path):
  return glob.glob(os.path.join(path, "default", "**", "d", "*"), recursive=True)


def _garble(path):
  for f in _data_files(path):
    data = bytearray(open(f, "rb").read())
    data[::7] = bytes(b ^ 0xFF for b in data[::7])
    open(f, "wb").write(bytes(data))


def _truncate(path):
  for f in _data_files(path):
    data = open(f, "rb").read()
    open(f, "wb").write(data[:len(data) // 2])


DAMAGE = {
    "garbled data": _garble,
    "truncated data": _truncate,
    "deleted manifest": lambda path: os.remove(os.path.join(path, "default", "manifest.ocdbt")),
    "garbled array metadata": lambda path: open(os.path.join(path, "default", "_METADATA"),
                                                "w").write("{not json"),
    "deleted item": lambda path: shutil.rmtree(os.path.join(path, "default")),
    "lost step metadata": lambda path: os.remove(os.path.join(path, "_CHECKPOINT_METADATA")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_step_falls_back_to_the_one_before_with_a_warning(tmp_path, damage,
                                                                           caplog):
  directory = _saved(tmp_path)
  DAMAGE[damage](os.path.join(directory, "8"))
  with checkpoint.manager(directory, keep=3, fingerprint=FINGERPRINT) as mngr:
    with caplog.at_level("WARNING"):
      state, step = checkpoint.restore_latest(mngr, STATE)
    assert step == 4 and mngr.all_steps() == [4]
    np.testing.assert_array_equal(state["w"], STATE["w"] + 4)
    assert f"checkpoint {directory}/8 cannot be restored (" in caplog.text
    assert f"moving it to {directory}/8.broken and restoring the step before it" in caplog.text
    checkpoint.save(mngr, 8, state)  # training goes on and saves step 8 again
    assert mngr.all_steps() == [4, 8]
  assert sorted(os.listdir(directory)) == ["4", "8", "8.broken"]


def test_no_intact_step_starts_over(tmp_path):
  directory = _saved(tmp_path, steps=(4,))
  _garble(os.path.join(directory, "4"))
  with checkpoint.manager(directory, keep=3, fingerprint=FINGERPRINT) as mngr:
    state, step = checkpoint.restore_latest(mngr, STATE)
  assert step == 0 and state is STATE


def test_a_step_of_another_run_is_refused_naming_what_differs(tmp_path):
  directory = _saved(tmp_path)
  other = {"config": {"seed": 0, "model.width": 16}, "data": {"sha1": "cd", "num_train": 4}}
  with checkpoint.manager(directory, keep=3, fingerprint=other) as mngr:
    with pytest.raises(ValueError, match=rf"checkpoint {directory}/8 was saved by a run with a "
                                         r"different config or data \(differs in: model.width, "
                                         r"data \(sha1\)\)"):
      checkpoint.restore_latest(mngr, STATE)
  assert sorted(os.listdir(directory)) == ["4", "8"]  # nothing moved: the steps are good


def _config(**overrides):
  config = smoke.get_config()
  config.variants, config.num_devices = ("dense",), 1
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished one-variant run (checkpoints at steps 4 and 8) and its savings rows."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  return workdir, train.train_and_evaluate(_config(), workdir)["rows"]


def _copy(finished, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished[0], workdir)
  os.remove(os.path.join(workdir, "savings.json"))
  return workdir


def test_a_run_resumes_past_a_damaged_checkpoint(finished, tmp_path, caplog):
  workdir = _copy(finished, tmp_path)
  _garble(os.path.join(workdir, "checkpoints", "dense", "8"))
  with caplog.at_level("INFO"):
    rows = train.train_and_evaluate(_config(), workdir)["rows"]
  assert "checkpoints/dense/8 cannot be restored" in caplog.text
  assert "[dense] resuming from the checkpoint at step 4" in caplog.text
  ours, theirs = rows[0], finished[1][0]
  assert ours["test_accuracy"] == theirs["test_accuracy"]
  assert ours["test_loss"] == theirs["test_loss"]


def test_without_config_json_another_config_is_refused_and_nothing_rewritten(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match=r"has no config.json, and its checkpoint .*checkpoints/"
                                       r"dense/\d was saved by a run with a different config "
                                       r"\(differs in: model.width\)"):
    train.train_and_evaluate(_config(**{"model.width": 16}), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  rows = train.train_and_evaluate(_config(), workdir)["rows"]  # the run's own config resumes it
  assert rows[0]["test_accuracy"] == finished[1][0]["test_accuracy"]
  assert json.load(open(os.path.join(workdir, "config.json")))["fingerprint"]["model.width"] == 8


def _write_mnist(folder, seed):
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for prefix, n in (("train", 64), ("t10k", 32)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n)
                                                         + labels.tobytes())


def test_a_resume_on_other_data_is_refused(tmp_path):
  for name, seed in (("a", 0), ("b", 1)):
    _write_mnist(tmp_path / name, seed)
  workdir = str(tmp_path / "run")
  first = _config(dataset="mnist", data_dir=str(tmp_path / "a"), stop_after_steps=2)
  assert train.train_and_evaluate(first, workdir)["preempted"]
  moved = shutil.copytree(tmp_path / "a", tmp_path / "a_moved")  # the same data elsewhere: fine
  first.data_dir = str(moved)
  assert train.train_and_evaluate(first, workdir)["preempted"]
  other = _config(dataset="mnist", data_dir=str(tmp_path / "b"), stop_after_steps=2)
  with pytest.raises(ValueError, match=r"differs in: data \(sha1\); config.data_dir was "
                                       rf"'{moved}', now '{tmp_path / 'b'}'\)"):
    train.train_and_evaluate(other, workdir)
