"""``zoo compare RUN_DIR...``: read run folders into records for :func:`inference.compare.compare_runs`.

The run folder is :mod:`experiments.run_folder`'s; models come back through
:func:`experiments.train.load_run` (registered models, a user's ``file.py:Class`` or
``package.module:Class``) and data through :func:`experiments.train.load_split` (built-in data
sets or a user's data file), so every run ``zoo train`` can write, ``zoo compare`` can read.
"""
from __future__ import annotations

import json
from pathlib import Path

from experiments.run_folder import CONFIG_FILE, FINAL_METRICS, METRICS, RunFolder
from inference.compare import RunRecord
from inference.compare import compare_runs as compare_records

__all__ = ["compare_runs", "read_run"]


def read_run(run_dir) -> RunRecord:
    """The record of one run folder; a model that cannot be loaded is None with the reason
    (the report still renders, its row says why). :raises FileNotFoundError: not a run folder."""
    from experiments.train import load_run, load_split

    folder = RunFolder(run_dir)
    config = folder.read_config()
    path = folder.path
    try:
        metrics = json.loads((path / FINAL_METRICS).read_text()) if (path / FINAL_METRICS).is_file() else {}
        log = path / METRICS
        history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None
    model, why = None, None
    if folder.has_checkpoint():
        try:
            model, config = load_run(path)
            model.eval()
        except Exception as e:  # noqa: BLE001 - the report still renders, the row says why
            model, why = None, f"model not loaded ({type(e).__name__}: {e})"
    else:
        why = "no checkpoint"
    return RunRecord(dir=path, config=config, metrics=metrics, history=history, model=model, why=why,
                     train=lambda: load_split(config, "train"))


def compare_runs(run_dirs, out_dir, **kwargs) -> dict:
    """Read ``run_dirs`` and write their comparison into ``out_dir`` (see
    :func:`inference.compare.compare_runs` for the keyword arguments and what it writes)."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("give at least one run folder")
    for d in run_dirs:
        if not (d / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d} is not a run folder (no {CONFIG_FILE})")
    return compare_records([read_run(d) for d in run_dirs], out_dir, **kwargs)
