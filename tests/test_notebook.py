"""The Colab notebook: its settings cell comes first, only the install cell uses shell commands (it
clones the repository), and the code cells run on CPU with the smoke config (the install cell
aside), printing the config readably and the run's progress as it goes."""

import json
import logging
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).parent.parent / "experiments" / "colab_tpu.ipynb"


def _code_cells():
  notebook = json.loads(NOTEBOOK.read_text())
  return [(cell.get("metadata", {}).get("tags", []), "".join(cell["source"]))
          for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_settings_first_then_the_install_cell_clones_and_installs():
  cells = _code_cells()
  assert cells[0][0] == ["parameters"]
  for name in ("REPO_URL", "PWCONV_SRC", "STORAGE", "GCS_BUCKET"):
    assert f"\n{name} = " in "\n" + cells[0][1]
  assert cells[1][0] == ["install"]
  assert "git clone" in cells[1][1] and "{REPO_URL} {PWCONV_SRC}" in cells[1][1]
  assert 'pip install -q -e "{PWCONV_SRC}[experiments]"' in cells[1][1]
  assert "gcsfuse" in cells[1][1] and 'drive.mount("/content/drive")' in cells[3][1]


def test_only_the_install_cell_uses_shell_commands():
  for tags, source in _code_cells():
    if "install" not in tags:
      assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), source


@pytest.mark.slow
def test_code_cells_run_with_the_smoke_config(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "colab"
  monkeypatch.setenv("PWCONV_NOTEBOOK_CONFIG", "smoke")
  monkeypatch.setenv("PWCONV_NOTEBOOK_WORKDIR", str(workdir))
  namespace = {}
  try:
    for tags, source in _code_cells():
      if "install" in tags:
        continue
      exec(compile(source, str(NOTEBOOK), "exec"), namespace)
      if "config" in namespace and "result" not in namespace:
        assert namespace["CONFIG"] == "smoke"
        namespace["config"].num_devices = 1   # keep the test quick: one device, three variants
        namespace["config"].variants = ("dense", "separable", "shuffle")
    out = capsys.readouterr().out
  finally:  # the notebook's progress handler writes to this test's captured stdout
    absl_logger = logging.getLogger("absl")
    for handler in list(absl_logger.handlers):
      if type(handler).__name__ == "_ProgressHandler":
        absl_logger.removeHandler(handler)
    absl_logger.propagate = True
  rows = namespace["result"]["rows"]
  assert [r["variant"] for r in rows] == ["dense", "separable", "shuffle"]
  assert all(r["status"] == "finished" for r in rows)
  for name in ("savings.md", "savings.png", "metrics.jsonl", "config.json"):
    assert (workdir / name).stat().st_size > 0
  # The config as readable lines, and the progress outside absl.app.run.
  assert "synthetic.shape = (8, 8, 1)" in out and "!!python" not in out
  assert "model.width = 8" in out and "(default: 32)" in out
  for line in ("pwconv run: 3 variants", "[dense] step 2/8",
               "[shuffle] step 8/8", "[separable] done: test accuracy", "wrote the report:"):
    assert line in out, line
