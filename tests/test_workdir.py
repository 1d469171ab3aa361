"""A run's folder: the resumability fingerprint, config.json, and metrics.jsonl cut back on resume."""

import json

import pytest

from experiments import workdir
from experiments.configs import smoke


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_resume_drops_the_variants_rows_after_its_step_and_a_cut_line(tmp_path):
  folder = workdir.Workdir(str(tmp_path), is_writer=True)
  rows = [{"variant": v, "step": s, "split": split, "loss": 1.0}
          for v in ("a", "b") for s in (2, 4, 6) for split in ("train", "test")]
  with open(folder.metrics_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
    f.write('{"variant": "b", "step": 8, "spl')  # a crash mid-write
  kept = folder.resume("a", 4)
  assert kept == {("train", 2), ("test", 2), ("train", 4), ("test", 4)}
  assert _rows(folder.metrics_path) == [r for r in rows if r["variant"] == "b" or r["step"] <= 4]


def test_only_the_writer_writes(tmp_path):
  folder = workdir.Workdir(str(tmp_path / "run"), is_writer=False)
  folder.claim(smoke.get_config())
  assert not (tmp_path / "run").exists()
  assert folder.resume("a", 0) == set()


def test_claim_ignores_the_keys_a_resumed_run_may_change(tmp_path):
  config = smoke.get_config()
  folder = workdir.Workdir(str(tmp_path), is_writer=True)
  folder.claim(config)
  assert json.load(open(tmp_path / "config.json"))["fingerprint"] == workdir.fingerprint(config)
  config.stop_after_steps, config.num_devices, config.distributed.initialize = 3, 1, "never"
  folder.claim(config)
  config.seed = 1
  with pytest.raises(ValueError, match=r"holds a run with a different config \(differs in: seed\)"):
    folder.claim(config)
  assert "stop_after_steps" not in workdir.fingerprint(config)
  assert "distributed.initialize" not in workdir.fingerprint(config)
