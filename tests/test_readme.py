"""README.md stays true: its tour runs and prints what it says it prints."""

import pathlib
import re


def test_tour_runs(capsys):
  readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  (tour,) = re.findall(r"## A tour\s+```python\n(.*?)```", readme, re.S)
  exec(compile(tour, "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert "160,563,200 (160.6M)" in out and "43,352,064 (43.4M)" in out and "3.70x" in out
  assert "MobileNetV2 on input 1x224x224x3" in out
  assert "MACs 300,774,272" in out
  assert "['mobilenet_v3_large', 'mobilenet_v3_small']" in out
  assert "'module': 'stage4_block3', 'channels': 768" in out


def test_commands_are_the_ones_ci_runs():
  readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  ci = (pathlib.Path(__file__).parent.parent / ".ci" / "run").read_text()
  test_command = 'pip install -e ".[test]" && python -m pytest'
  assert f"```bash\n{test_command}\n```" in readme
  assert test_command in ci.splitlines()
  assert '```bash\npip install -e ".[experiments]" && python -m experiments.run\n```' in readme


def test_documents_the_code_cites_are_in_the_repository():
  root = pathlib.Path(__file__).parent.parent
  cited = set()
  for path in [*root.glob("pwconv/**/*.py"), *root.glob("experiments/**/*.py"), root / "README.md",
               root / "BUILD.md"]:
    text = path.read_text()
    assert "DESIGN.md" not in text, f"{path} cites a DESIGN.md the repository does not have"
    cited |= set(re.findall(r"docs/[\w.-]+\.md", text))
  assert cited, "nothing cites docs/"
  for doc in cited:
    assert (root / doc).is_file(), doc
