"""The config as a reader sees it: the presets, and every key with its value, its default and its
meaning, the meanings read from the comments of ``experiments/configs/default.py`` (so they never
drift from it).

Imports neither jax nor the library, so ``python -m experiments.run --help`` and ``--show_config``
answer at once, and an unknown ``--config.<key>`` is refused before anything slow is imported.
"""

from __future__ import annotations

import ast
import difflib
import functools
import io
import os
import tokenize
from typing import Any

import ml_collections

from experiments.configs import default

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_FILE = os.path.join(CONFIGS, "default.py")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict as one dict keyed by dotted paths: ``{"model.width": 32, ...}``."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def defaults() -> dict[str, Any]:
  """Every key a config may have (default.py's), flattened, with its default value."""
  return flatten(default.get_config().to_dict())


def unknown_key(key: str) -> str:
  """"" if ``key`` (dotted, without ``config.``) is a known key; else the error to show for it,
  with the closest known key."""
  known = defaults()
  if key in known:
    return ""
  group = sorted(k for k in known if k.startswith(key + "."))
  if group:
    return (f"config.{key} is a group of keys, not a key: set them one by one, e.g. "
            f"--config.{group[0]}=... (its keys: {', '.join(group)})")
  close = difflib.get_close_matches(key, known, n=1)
  hint = f"; did you mean config.{close[0]}?" if close else ""
  return (f"config.{key} is not a known key{hint} (python -m experiments.run --show_config lists "
          "them all)")


def presets() -> list[tuple[str, str]]:
  """``(path relative to the repository, first line of its docstring)`` of each config file."""
  found = []
  for name in sorted(os.listdir(CONFIGS)):
    if name.endswith(".py") and not name.startswith("_"):
      with open(os.path.join(CONFIGS, name)) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
      first = " ".join(doc.split("\n\n")[0].split())
      found.append((f"experiments/configs/{name}", first.split(". ")[0].rstrip(".") + "."))
  found.sort(key=lambda p: p[0] != "experiments/configs/default.py")
  return found


def describe(config: ml_collections.ConfigDict) -> str:
  """Every key of ``config``, one a line: ``key = value  # meaning  (default: value)``, grouped
  under the section comments of default.py, in its order. Values are Python literals (no YAML
  tags)."""
  order, meanings, sections = _annotations()
  base = defaults()
  values = flatten(config.to_dict())
  lines = []
  for key in [k for k in order if k in values] + [k for k in values if k not in order]:
    value = values[key]
    if key in sections:
      lines += ["", *(f"# {line}" for line in sections[key])]
    text = f"{key} = {value!r}"
    if key in meanings:
      text = f"{text:<36}  # {meanings[key]}"
    if key in base and base[key] != value:
      text += f"  (default: {base[key]!r})"
    lines.append(text)
  return "\n".join(lines).strip("\n")


@functools.lru_cache(maxsize=1)
def _annotations() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
  """From default.py: its keys in order, ``{key: its trailing comment}`` and ``{first key of a
  statement: the comment lines above that statement}``."""
  with open(DEFAULT_FILE) as f:
    source = f.read()
  comments = {}  # line -> (column, text, alone on its line)
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      line, column = tok.start
      alone = not tok.line[:column].strip()
      comments[line] = (column, tok.string.lstrip("#").strip(), alone)
  order, meanings, sections = [], {}, {}
  function = next(node for node in ast.parse(source).body
                  if isinstance(node, ast.FunctionDef) and node.name == "get_config")
  for statement in function.body:
    keys = _assigned_keys(statement)
    if not keys:
      continue
    above, line = [], statement.lineno - 1
    while line in comments and comments[line][2] and comments[line][0] == statement.col_offset:
      above.insert(0, comments[line][1])
      line -= 1
    if above:
      sections[keys[0][0]] = above
    for key, line, indent in keys:
      order.append(key)
      if line in comments and not comments[line][2]:
        text, line = [comments[line][1]], line + 1
        while line in comments and comments[line][2] and comments[line][0] > indent:
          text.append(comments[line][1])
          line += 1
        meanings[key] = " ".join(text)
  return order, meanings, sections


def _assigned_keys(statement: ast.stmt) -> list[tuple[str, int, int]]:
  """``(key, line, indentation)`` of each key a ``config.<key> = ...`` statement sets; a
  ``ConfigDict(dict(a=..., b=...))`` value sets ``<key>.a``, ``<key>.b``."""
  if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
          and isinstance(statement.targets[0], ast.Attribute)):
    return []
  target = statement.targets[0]
  if not (isinstance(target.value, ast.Name) and target.value.id == "config"):
    return []
  value = statement.value
  if (isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Call)
      and value.args[0].keywords):
    return [(f"{target.attr}.{k.arg}", k.lineno, k.col_offset) for k in value.args[0].keywords]
  return [(target.attr, statement.lineno, statement.col_offset)]
