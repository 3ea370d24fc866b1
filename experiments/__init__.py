"""Runnable experiments and the ``zoo`` command line.

An experiment is a module ``experiments/<name>.py`` with

* ``CONFIG``: its default hyper-parameters (one dict, the only place they live),
* ``TINY``: overrides that make it run in seconds (the tests run every experiment so),
* ``run(config, workdir) -> dict``: the work; tables, figures and results go to ``workdir``.

``python -m experiments NAME [--out DIR] [--set key=value ...]`` runs one.
"""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["available", "get"]


def available() -> list[str]:
    """Names of the experiment modules (those defining CONFIG, TINY and run)."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in ("cli", "plots", "train"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, a) for a in ("CONFIG", "TINY", "run")):
            names.append(info.name)
    return sorted(names)


def get(name: str):
    """The experiment module called ``name``."""
    if name not in available():
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")
