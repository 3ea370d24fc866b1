"""Checkpoints: plain dictionaries of tensors and numbers, loaded with ``weights_only=True``.

Loading a checkpoint never runs code. Writes are atomic (a temporary file renamed over
the old one), so a run killed while writing keeps its previous checkpoint.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

__all__ = ["CheckpointError", "get_rng_state", "load_checkpoint", "save_checkpoint", "set_rng_state"]

FORMAT = 1


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint file."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holds objects
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (format {FORMAT})")
    return state


def get_rng_state() -> dict:
    """The random states that training consumes (torch CPU and CUDA, Python)."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
