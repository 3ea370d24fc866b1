"""The run folder: the one module that knows its layout.

==================  =============================================================
``config.json``     the resolved configuration (model, options, data, settings)
``metrics.jsonl``   the metric history, one JSON line per epoch
``checkpoint.pt``   parameters, optimiser state, step and random states
``checkpoint.pt.lock``  the pid of the process writing the folder (while it runs)
``metrics.json``    the final metrics (validation and test)
``loss.png``        the loss curve; ``samples.png``: a sample grid (image data)
==================  =============================================================

It hands the engine its :class:`~inference.checkpoint.Checkpointer` and
:class:`~inference.checkpoint.MetricLog` (``inference.fit(..., **folder.engine_outputs())``);
the engine itself reads no run folders. Every file is rewritten atomically, and one
process at a time writes a folder (a second one gets an error naming the first's pid).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from inference.checkpoint import (
    CHECKPOINT,
    METRICS,
    Checkpointer,
    CheckpointError,
    MetricLog,
    atomic_write_text,
    load_checkpoint,
)
from inference.distributed import is_main_process

__all__ = ["CHECKPOINT", "CONFIG_FILE", "FINAL_METRICS", "METRICS", "RunFolder"]

CONFIG_FILE = "config.json"
FINAL_METRICS = "metrics.json"


def _finite(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def as_stored(value):
    """``value`` as config.json stores it and reads it back (tuples become lists, non-finite
    floats None), so that a config compares equal to the one a run folder holds."""
    return json.loads(json.dumps(_finite(value), allow_nan=False))


#: entries a run's config.json must have, and their types
_CONFIG_TYPES = {"model": str, "options": dict, "data": str, "seed": int}


class RunFolder:
    """A run folder at ``path`` (see the module docstring)."""

    def __init__(self, path, *, resume: bool = True, checkpoint_every: int | None = None):
        self.path = Path(path)
        self.resume = resume
        self.checkpointer = Checkpointer(self.path / CHECKPOINT, every=checkpoint_every, resume=resume)
        self.metric_log = MetricLog(self.path / METRICS)
        self.writer = is_main_process()  # under torchrun, rank 0 alone writes

    # ----- one writer ---------------------------------------------------------------
    def open(self) -> "RunFolder":
        """Create the folder and become its only writer (:class:`CheckpointError` if another
        process is, or if the folder cannot be made: an existing file, read-only)."""
        if not self.writer:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"{self.path} is a file, not a run folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create the run folder {self.path}: {e.strerror or e}") from None
        self.checkpointer.lock.acquire()
        return self

    def close(self) -> None:
        if self.writer:
            self.checkpointer.lock.release()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    # ----- files --------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return self.checkpointer.exists()

    def engine_outputs(self) -> dict:
        """The keyword arguments of ``inference.fit`` that make it write this folder."""
        return {"checkpoint": self.checkpointer, "metric_log": self.metric_log if self.writer else None}

    def read_config(self) -> dict:
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no {CONFIG_FILE})")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is corrupt: {e}") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} is not a run configuration (a JSON object), got {type(config).__name__}")
        for key, kind in _CONFIG_TYPES.items():
            if key not in config:
                raise CheckpointError(f"{path} is not a run configuration: no {key!r} entry")
            if not isinstance(config[key], kind) or isinstance(config[key], bool):
                raise CheckpointError(f"{path}: {key!r} must be {kind.__name__}, got {config[key]!r}")
        return config

    def write_config(self, config: dict) -> None:
        if self.writer:
            atomic_write_text(self.path / CONFIG_FILE, json.dumps(_finite(config), indent=2, allow_nan=False) + "\n")

    def write_metrics(self, metrics: dict) -> None:
        if self.writer:
            atomic_write_text(self.path / FINAL_METRICS, json.dumps(_finite(metrics), indent=2, allow_nan=False) + "\n")

    def load_state(self, map_location="cpu") -> dict:
        """The checkpoint's state (``weights_only``), checked to hold a model's parameters."""
        state = load_checkpoint(self.path / CHECKPOINT, map_location=map_location)
        modules = state.get("modules")
        if not isinstance(modules, dict) or not isinstance(modules.get("model"), dict):
            raise CheckpointError(f"{self.path / CHECKPOINT} holds no model parameters: not a checkpoint of a run")
        return state
