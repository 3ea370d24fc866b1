"""Runnable experiments and the ``zoo`` command line.

An experiment is a module ``experiments/<name>.py`` with

* ``CONFIG``: its default hyper-parameters (one dict, the only place they live),
* ``TINY``: overrides that make it run in seconds (the tests run every experiment so),
* ``run(config, workdir) -> dict``: the work; tables (Markdown), figures and results go
  to ``workdir``, and each phase shows a progress bar.

``python -m experiments NAME [--out DIR] [--set key=value ...]`` runs one.

Importing this package is cheap: :func:`available` reads the experiment files without
importing them (so ``zoo --help`` and ``zoo list`` start without torch).
"""
from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

__all__ = ["available", "describe", "get", "progress"]

_REQUIRED = {"CONFIG", "TINY", "run"}


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@functools.lru_cache(maxsize=1)
def _catalogue() -> dict[str, str]:
    """name -> module docstring of every experiment module (read, not imported)."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        if _REQUIRED <= _top_level_names(tree):
            found[path.stem] = ast.get_docstring(tree) or ""
    return found


def available() -> list[str]:
    """Names of the experiment modules (those defining CONFIG, TINY and run)."""
    return sorted(_catalogue())


def describe(name: str) -> str:
    """The first line of experiment ``name``'s docstring."""
    doc = _catalogue().get(name, "").strip().splitlines()
    return doc[0] if doc else ""


def get(name: str):
    """The experiment module called ``name``."""
    if name not in available():
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")


def progress(items, desc: str, *, total: int | None = None, unit: str = "it"):
    """A progress bar over one phase of an experiment (tqdm on stderr); ``ZOO_NO_PROGRESS=1``
    silences it. ``bar.set_postfix_str(...)`` names the item being worked on."""
    import os

    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True,
                disable=bool(os.environ.get("ZOO_NO_PROGRESS")))
