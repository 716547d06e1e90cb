"""Every ```python block of README.md runs verbatim (offline, CPU) in a fresh interpreter and prints no None."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path):
    code = SNIPPETS[index]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=540, env=None)
    assert result.returncode == 0, f"README snippet {index} failed:\n{code}\n--- stderr:\n{result.stderr[-3000:]}"
    assert not re.search(r"^None$", result.stdout, flags=re.M), f"snippet {index} printed None:\n{result.stdout}"
