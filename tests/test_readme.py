"""The README's "Writing a new model" code blocks run as written."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def blocks():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Writing a new model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_shows_both_ways():
    found = blocks()
    assert len(found) == 2
    assert "ZooModel" not in found[0] and "def guide" in found[0]
    assert "class " in found[1] and "ZooModel" in found[1]


@pytest.mark.parametrize("index", [0, 1])
def test_each_block_runs_as_written(tmp_path, index):
    code = blocks()[index]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
