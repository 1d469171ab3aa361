"""The Colab notebook's code cells run on CPU with the smoke config (the install cell aside)."""

import json
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).parent.parent / "experiments" / "colab_tpu.ipynb"


def _code_cells():
  notebook = json.loads(NOTEBOOK.read_text())
  return [(cell.get("metadata", {}).get("tags", []), "".join(cell["source"]))
          for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_only_the_install_cell_uses_shell_commands():
  cells = _code_cells()
  assert cells[0][0] == ["install"] and "pip install" in cells[0][1]
  for tags, source in cells[1:]:
    assert "install" not in tags
    assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), source


@pytest.mark.slow
def test_code_cells_run_with_the_smoke_config(tmp_path, monkeypatch):
  workdir = tmp_path / "colab"
  monkeypatch.setenv("PWCONV_NOTEBOOK_CONFIG", "smoke")
  monkeypatch.setenv("PWCONV_NOTEBOOK_WORKDIR", str(workdir))
  namespace = {}
  for tags, source in _code_cells():
    if "install" in tags:
      continue
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    if "config" in namespace and "result" not in namespace:
      assert namespace["CONFIG"] == "smoke"
      namespace["config"].num_devices = 1   # keep the test quick: one device, three variants
      namespace["config"].variants = ("dense", "separable", "shuffle")
  rows = namespace["result"]["rows"]
  assert [r["variant"] for r in rows] == ["dense", "separable", "shuffle"]
  assert all(r["status"] == "finished" for r in rows)
  for name in ("savings.md", "savings.png", "metrics.jsonl", "config.json"):
    assert (workdir / name).stat().st_size > 0
