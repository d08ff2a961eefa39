"""The README's library example runs as written (in a fresh interpreter, CPU)."""
import os
import re
import subprocess
import sys

from tests.commands import ROOT


def python_block(heading: str, path: str = os.path.join(ROOT, "README.md")) -> str:
  """The first ```python block under the markdown heading `heading` (any level), which must come
  before the next heading."""
  text = open(path, encoding="utf-8").read()
  match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M)
  assert match, f"no heading {heading!r} in {path}"
  block = re.search(r"^```python\n(.*?)^```", text[match.end():], re.M | re.S)
  assert block, f"no python block under {heading!r}"
  before = text[match.end():match.end() + block.start()]
  assert not re.search(r"^#+ ", before, re.M), f"no python block in the section {heading!r}"
  return block.group(1)


def snippet_env(**extra):
  """The environment of a README snippet run from another directory: the session's
  (tests/conftest.py: CPU, faster compiles, which the snippet does not depend on) with this
  checkout's packages first."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
          **extra}


def test_library_example_runs_as_written(tmp_path):
  code = python_block("Using the library")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=snippet_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("budgets ") and "anchor" in lines[0]
  assert lines[1].startswith("loss ")
  assert "'acc_fused'" in lines[2] and "'weight_video'" in lines[2]
  # The library alone: no data extra needed.
  assert "tensorflow" not in code and "data_prep" not in code
