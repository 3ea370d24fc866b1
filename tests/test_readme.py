"""The README runs as written: every Python block, and every command of the quick start.

The Python blocks run in order in one fresh interpreter (a reader's session: later blocks use
the names earlier ones define), in an empty working directory. The quick start's shell
commands run one by one with ``ZOO_TINY=1``, which the README names: the commands run with
smoke-test settings (see ``zoo --help``). ``zoo`` is run as ``python -m experiments.cli``
(the console script's entry point) so that the checkout under test is the code that runs;
``pip install`` lines are the installation this test runs in, and ``python -m pytest`` is
this test suite itself, so those two are not run again.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(language: str, section: str | None = None) -> list[str]:
    """The fenced ``language`` blocks of the README (of one ``## section`` if given)."""
    text = README.read_text()
    if section is not None:
        parts = re.split(r"^## ", text, flags=re.M)
        text = next(p for p in parts if p.startswith(section))
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["ZOO_NO_PROGRESS"] = "1"
    env.update(extra)
    return env


def test_readme_has_the_blocks_this_test_runs():
    assert len(blocks("python")) >= 3
    assert blocks("bash", "Quick start")


@pytest.mark.slow
def test_every_python_block_runs_as_written(tmp_path):
    script = ["import sys, traceback", "namespace = {'__name__': '__main__'}"]
    for i, block in enumerate(blocks("python")):
        script += [
            f"print('--- README python block {i + 1}', flush=True)",
            f"try:\n    exec(compile({block!r}, 'README.md python block {i + 1}', 'exec'), namespace)",
            "except Exception:\n    traceback.print_exc()\n    sys.exit(1)",
        ]
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])


def shell_commands(section: str = "Quick start") -> list[str]:
    commands = []
    for block in blocks("bash", section):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("pip install") or part.startswith("python -m pytest"):
                    continue
                commands.append(part)
    return commands


def _runnable(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "zoo":
        return [sys.executable, "-m", "experiments.cli", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(f"the quick start runs {argv[0]!r}: teach this test how")


def test_quick_start_commands_are_found():
    commands = shell_commands()
    assert any(c.startswith("zoo train") for c in commands), commands


def _run_all(commands, cwd):
    for command in commands:
        done = subprocess.run(_runnable(command), cwd=cwd, env=_env(ZOO_TINY="1"),
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr, (command, done.stderr[-3000:])


@pytest.mark.slow
def test_every_quick_start_command_runs(tmp_path):
    _run_all(shell_commands(), tmp_path)
    assert (tmp_path / "runs" / "bernoulli-digits-seed0" / "samples.png").exists()


@pytest.mark.slow
def test_your_own_model_and_data_as_the_readme_says(tmp_path):
    """The section's Python block saved as my_file.py, then its commands."""
    (model_file,) = blocks("python", "Command line")
    (tmp_path / "my_file.py").write_text(model_file)
    commands = shell_commands("Command line")
    assert any("my_file.py:MyModel --data my.npz" in c for c in commands), commands
    _run_all(commands, tmp_path)
    assert (tmp_path / "runs" / "MyModel-my-seed0" / "samples-1.png").exists()


def test_writing_a_new_model_shows_both_ways():
    """The section shows a plain Pyro program first, then a ZooModel."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Writing a new model", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(found) == 2
    assert "ZooModel" not in found[0] and "def guide" in found[0]
    assert "class " in found[1] and "ZooModel" in found[1]
