"""A run's folder: its lock, the fingerprint in config.json (config and data), an unreadable
config.json, metrics.jsonl cut back on resume, and files a failure never leaves half-written."""

import json
import os

import pytest

from experiments import workdir
from experiments.configs import smoke

DATA = {"name": "synthetic", "num_train": 256, "num_test": 64, "image_shape": [8, 8, 1],
        "num_classes": 4, "sha1": "0" * 40}


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _claimed(path, config=None, data=DATA):
  folder = workdir.Workdir(str(path), is_writer=True)
  folder.claim(config or smoke.get_config(), data)
  return folder


def test_resume_drops_the_variants_rows_after_its_step_and_a_cut_line(tmp_path):
  folder = workdir.Workdir(str(tmp_path), is_writer=True)
  rows = [{"variant": v, "step": s, "split": split, "loss": 1.0}
          for v in ("a", "b") for s in (2, 4, 6) for split in ("train", "test")]
  with open(folder.metrics_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
    f.write('{"variant": "b", "step": 8, "spl')  # a crash mid-write
  kept = folder.resume("a", 4)
  assert kept == [r for r in rows if r["variant"] == "a" and r["step"] <= 4]
  assert _rows(folder.metrics_path) == [r for r in rows if r["variant"] == "b" or r["step"] <= 4]


def test_only_the_writer_writes(tmp_path):
  folder = workdir.Workdir(str(tmp_path / "run"), is_writer=False)
  folder.claim(smoke.get_config(), DATA)
  assert not (tmp_path / "run").exists()
  assert folder.resume("a", 0) == []


def test_claim_ignores_the_keys_a_resumed_run_may_change(tmp_path):
  config = smoke.get_config()
  with _claimed(tmp_path, config):
    recorded = json.load(open(tmp_path / "config.json"))
  assert recorded["fingerprint"] == workdir.fingerprint(config) and recorded["data"] == DATA
  config.stop_after_steps, config.num_devices, config.distributed.initialize = 3, 1, "never"
  config.data_dir = "/moved/elsewhere"
  with _claimed(tmp_path, config):
    pass
  config.seed = 1
  with pytest.raises(ValueError, match=r"holds a run with a different config \(differs in: seed\)"):
    _claimed(tmp_path, config)
  assert "stop_after_steps" not in workdir.fingerprint(config)
  assert "distributed.initialize" not in workdir.fingerprint(config)


def test_other_data_in_a_used_workdir_is_refused_naming_the_data_dirs(tmp_path):
  config = smoke.get_config()
  config.data_dir = "/data/a"
  with _claimed(tmp_path, config):
    pass
  config.data_dir = "/data/b"
  with pytest.raises(ValueError, match=r"differs in: data \(num_train, sha1\); config.data_dir was "
                                       r"'/data/a', now '/data/b'\)"):
    _claimed(tmp_path, config, dict(DATA, num_train=300, sha1="1" * 40))


def test_a_nan_in_the_config_matches_itself(tmp_path):
  config = smoke.get_config()
  config.optimizer.momentum = float("nan")  # claim itself does not check values
  with _claimed(tmp_path, config):
    pass
  with _claimed(tmp_path, config):  # NaN != NaN, yet the same config
    pass


def test_a_second_claim_is_refused_naming_the_holder_until_the_first_ends(tmp_path):
  with _claimed(tmp_path):
    with pytest.raises(ValueError, match=rf"workdir '{tmp_path}' is in use by another run \(pid "
                                         rf"{os.getpid()} on .*\); wait for it to end"):
      _claimed(tmp_path)
  with _claimed(tmp_path):  # the lock went with the first
    pass


@pytest.mark.parametrize("content", ['{"config": {"seed": 0}, "finger', "[1, 2]", "{}"])
def test_an_unreadable_config_json_is_refused_and_kept(tmp_path, content):
  (tmp_path / "config.json").write_text(content)
  with pytest.raises(ValueError, match=r"its config.json cannot be read \(\w+Error: .*\)\. It "
                                       r"records which run the folder holds: restore it, or "
                                       r"delete it"):
    _claimed(tmp_path)
  assert (tmp_path / "config.json").read_text() == content


def test_write_atomic_leaves_nothing_when_the_write_fails(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  path.write_text("old")

  real_open = open

  class Full:
    def __init__(self, *args):
      self.file = real_open(*args)

    def __enter__(self):
      return self

    def write(self, text):
      self.file.write(text[:3])
      raise OSError(28, "No space left on device")

    def __exit__(self, *exc):
      self.file.close()

  monkeypatch.setattr("builtins.open", Full)
  with pytest.raises(OSError, match="No space left on device"):
    workdir.write_atomic(str(path), "new content")
  monkeypatch.undo()
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_a_report_cut_short_has_no_savings_json(tmp_path, monkeypatch):
  """A kill between savings.md and savings.png (here: the plot fails) leaves no savings.json, old or
  new: the folder does not look finished, and the rerun writes the report again."""
  config = smoke.get_config()
  folder = workdir.Workdir(str(tmp_path), is_writer=True)
  (tmp_path / "savings.json").write_text("{}")  # a report of an earlier invocation

  def killed(rows, path, baseline):
    open(path, "wb").write(b"\x89PNG half")
    raise KeyboardInterrupt

  monkeypatch.setattr(workdir.plot, "plot_savings", killed)
  monkeypatch.setattr(workdir.report, "savings_table", lambda rows, config: "| table |")
  with pytest.raises(KeyboardInterrupt):
    folder.write_savings([], config)
  assert sorted(os.listdir(tmp_path)) == ["savings.md"]
