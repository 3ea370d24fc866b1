"""Checkpoints and metric logs: the files the engine writes, each safe to kill at any moment.

* A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, loaded
  with ``torch.load(..., weights_only=True)``: loading never runs code.
* Every rewrite is atomic: the new content goes to a uniquely named temporary file in the
  same folder, is flushed to disk (``fsync``) and renamed over the old file, so a run
  killed at any point keeps either the old or the new file, never a torn one. A failed
  write (disk full, read-only folder) removes its temporary file and raises
  :class:`CheckpointError` naming the folder.
* :class:`FileLock` makes one process the only writer of a checkpoint: a second one gets
  a clear error naming the holder's pid; the lock of a process that died is taken over.

:class:`Checkpointer` and :class:`MetricLog` are what the trainer is given (by
``inference.fit(checkpoint=..., metric_log=...)``, or by the run-folder module of
``experiments``); they know one file each and nothing of run folders.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import tempfile
from pathlib import Path

import torch

__all__ = [
    "CHECKPOINT",
    "METRICS",
    "CheckpointError",
    "Checkpointer",
    "FileLock",
    "MetricLog",
    "atomic_write_bytes",
    "atomic_write_text",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = 1

#: the file names ``fit(run_dir=D)`` writes: ``D/checkpoint.pt``, ``D/metrics.jsonl``
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class CheckpointError(ValueError):
    """A missing, corrupt, incompatible or unwritable checkpoint (a one-line message)."""


# ----- atomic files ---------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (unique temporary file, fsync, rename).

    :raises CheckpointError: the folder cannot be written (disk full, read-only, missing);
        no temporary file is left behind.
    """
    path = Path(path)
    folder = path.parent
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(
                f"no space left on the device of {folder} (writing {path.name}): free some space or choose another folder"
            ) from None
        raise CheckpointError(f"cannot write {path.name} in {folder}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----- checkpoints ----------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holds objects (a pickle)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (format {FORMAT})")
    return state


def get_rng_state() -> dict:
    """The random states that training consumes (torch CPU and CUDA, Python)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----- one writer -----------------------------------------------------------------------
class FileLock:
    """An exclusive lock file holding the writer's pid (``O_CREAT | O_EXCL``).

    A lock whose pid is no longer running (a killed run) is taken over. Re-entrant within
    one process: acquiring a lock this process holds already is a no-op (counted).
    """

    def __init__(self, path: str | os.PathLike, what: str = "checkpoint"):
        self.path = Path(path)
        self.what = what
        self._depth = 0

    def acquire(self) -> "FileLock":
        if self._depth:
            self._depth += 1
            return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == os.getpid() or (holder is not None and not _alive(holder)) or holder is None:
                    try:  # stale (or our own, left by a crash in this process): take it over
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise CheckpointError(
                    f"{self.path.parent} is in use by another run (pid {holder} holds {self.path.name}); "
                    f"wait for it to finish, or use another folder"
                ) from None
            except OSError as e:
                raise CheckpointError(f"cannot lock {self.path.parent}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._depth = 1
            return self
        raise CheckpointError(f"cannot lock {self.path.parent}: the lock file keeps changing")

    def _holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._holder() == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Checkpointer:
    """Saves and loads one checkpoint file atomically, as its only writer.

    :param path: the checkpoint file; its folder is created on the first save.
    :param every: steps between checkpoints (None: a tenth of the run).
    :param every_seconds: also checkpoint once this much wall time has passed since the last
        checkpoint (default 600: a kill loses at most ten minutes of a long run; None: steps
        only). A run of one process only: under torchrun the steps alone decide, so that every
        rank takes part in the same checkpoints.
    :param resume: whether a checkpoint found at ``path`` is resumed (else it is replaced).
    """

    def __init__(self, path: str | os.PathLike, *, every: int | None = None, every_seconds: float | None = 600.0,
                 resume: bool = True):
        self.path = Path(path)
        self.every = every
        self.every_seconds = every_seconds
        self.resume = resume
        self.lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, map_location="cpu") -> dict:
        return load_checkpoint(self.path, map_location=map_location)

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.path, state)

    def open(self) -> None:
        """Become the only writer (creates the folder)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create {self.path.parent}: {e.strerror or e}") from None
        self.lock.acquire()

    def close(self) -> None:
        self.lock.release()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.path)!r})"


class MetricLog:
    """A JSON-lines metric log: one line per record, never a NaN (records must be finite)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-append: drop it
                continue
        return out

    def truncate(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint a run resumes from), atomically."""
        if not self.path.is_file():
            return
        keep = [r for r in self.records() if isinstance(r, dict) and r.get("step", math.inf) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep))

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()

    def append(self, record: dict) -> None:
        line = json.dumps(record, allow_nan=False) + "\n"  # ValueError on a NaN: never written
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
        except OSError as e:
            raise CheckpointError(f"cannot write {self.path.name} in {self.path.parent}: {e.strerror or e}") from None

    def __repr__(self) -> str:
        return f"MetricLog({str(self.path)!r})"
