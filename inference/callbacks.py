"""What a :class:`inference.loop.Trainer` runs around its steps, one small class each.

=====================  ===============================================================
:class:`NaNGuard`      stops with :class:`~inference.loop.DivergenceError` on a non-finite
                       loss or gradient (named by step), and on a loss that blew up by
                       orders of magnitude over its running best
:class:`Checkpoint`    resumes from and writes a :class:`~inference.checkpoint.Checkpointer`
                       (only from finite parameters: "last good" is true)
:class:`MetricLogger`  one JSON line per epoch into a :class:`~inference.checkpoint.MetricLog`
:class:`EarlyStopping` stops after ``patience`` epochs without a better validation loss
                       and restores the best parameters
:class:`Progress`      a tqdm bar
=====================  ===============================================================

Hooks (all optional): ``on_start``, ``on_step_end``, ``on_values`` (each step's values
once read back), ``on_epoch_end`` (the epoch's record), ``wants_checkpoint``,
``on_checkpoint``, ``on_close``, and ``state_dict``/``load_state_dict`` for what a
callback keeps in the checkpoint.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from tqdm.auto import tqdm

from inference.checkpoint import Checkpointer, CheckpointError, MetricLog
from inference.loop import DivergenceError

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "MetricLogger", "NaNGuard", "Progress", "all_finite",
           "gradient_norm"]


class Callback:
    def on_start(self, trainer) -> None: ...
    def on_step_end(self, trainer) -> None: ...
    def on_values(self, trainer, step: int, values: dict) -> None: ...
    def on_epoch_end(self, trainer, record: dict) -> None: ...
    def wants_checkpoint(self, trainer) -> bool: return False
    def on_checkpoint(self, trainer) -> None: ...
    def on_close(self, trainer) -> None: ...
    def state_dict(self, trainer) -> dict: return {}
    def load_state_dict(self, trainer, state: dict) -> None: ...


def gradient_norm(grads) -> torch.Tensor:
    """The sum of the gradients' norms: finite exactly when every gradient is (one reduction
    per tensor, no sync with a GPU)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return norms[0] if len(norms) == 1 else torch.stack(norms).sum()


def all_finite(tensors) -> torch.Tensor:
    """One boolean tensor: every element of every tensor is finite (no sync with a GPU)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.tensor(True)
    norms = torch._foreach_norm(tensors)
    return torch.stack(norms).sum().isfinite()


class NaNGuard(Callback):
    """Non-finite values (losses; ``_grad_finite`` is a step's gradient check) stop the run,
    and so does a loss more than ``blowup`` times its scale above its running best."""

    def __init__(self, blowup: float = 1e3):
        self.blowup = blowup
        self.best = math.inf

    def on_values(self, trainer, step, values):
        bad = {k: v for k, v in values.items() if not math.isfinite(v) or (k == "_grad_finite" and v == 0)}
        if bad:
            what = ", ".join("a non-finite gradient" if k == "_grad_finite" else f"{k} = {v}" for k, v in bad.items())
            raise DivergenceError(f"{what} at step {step}: training stopped; {trainer.last_good_text()}")

    def on_epoch_end(self, trainer, record):
        key = next((k for k in record if k in trainer.history), None)
        if key is None:
            return
        value = record[key]
        if math.isfinite(self.best) and value - self.best > self.blowup * max(abs(self.best), 1.0):
            raise DivergenceError(
                f"{key} = {value:.4g} at step {record['step']} is orders of magnitude above its best "
                f"{self.best:.4g}: training diverged (lower the learning rate); {trainer.last_good_text()}"
            )
        self.best = min(self.best, value)

    def state_dict(self, trainer):
        return {"best_loss": self.best}

    def load_state_dict(self, trainer, state):
        self.best = float(state.get("best_loss", math.inf))


class Checkpoint(Callback):
    """Resume from and write a :class:`Checkpointer` (only its rank-0 process writes)."""

    def __init__(self, checkpointer: Checkpointer):
        self.ckpt = checkpointer

    def on_start(self, trainer):
        every = self.ckpt.every or max(trainer.total_steps // 10, 1)
        self.every = every
        self.saved_at = time.monotonic()
        if trainer.is_main:
            self.ckpt.open()
        if self.ckpt.resume and self.ckpt.exists():
            state = self.ckpt.load(map_location=trainer.device)
            _check_settings(state.get("settings"), trainer.settings, self.ckpt.path)
            trainer.load_state_dict(state, where=str(self.ckpt.path))
            trainer.last_good = (trainer.done, str(self.ckpt.path))

    def wants_checkpoint(self, trainer):
        if trainer.done % self.every == 0 or trainer.done == trainer.total_steps:
            return True
        seconds = self.ckpt.every_seconds
        return trainer.ctx is None and seconds is not None and time.monotonic() - self.saved_at >= seconds

    def on_checkpoint(self, trainer):
        if not all_finite(trainer.step_obj.parameters()):
            raise DivergenceError(
                f"a parameter is not finite at step {trainer.done}: not checkpointed; {trainer.last_good_text()}"
            )
        state = trainer.state_dict()  # every rank takes part (random states are gathered)
        if trainer.is_main:
            self.ckpt.save(state)
        self.saved_at = time.monotonic()
        trainer.last_good = (trainer.done, str(self.ckpt.path))

    def on_close(self, trainer):
        if trainer.is_main:
            self.ckpt.close()


#: settings that do not change the numbers a run computes: a run may resume with others
FREE_SETTINGS = frozenset({"compile"})
#: settings added after checkpoints were written: a checkpoint without one ran with this value
ADDED_SETTINGS = {"weight_decay": 0.0, "fused": False, "optimizer": "adam", "eps": 1e-8}


def _check_settings(saved, current: dict, path) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no settings: not a checkpoint of this engine")
    diff = {
        k: (saved.get(k, ADDED_SETTINGS.get(k)), current.get(k, ADDED_SETTINGS.get(k)))
        for k in (set(saved) | set(current)) - FREE_SETTINGS
        if saved.get(k, ADDED_SETTINGS.get(k)) != current.get(k, ADDED_SETTINGS.get(k))
    }
    if diff:
        detail = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"{path} holds a run with other settings ({detail}); "
            "use another run folder or pass resume=False to start over"
        )


class MetricLogger(Callback):
    """One JSON line per epoch (rank 0): truncated to the checkpoint on a resume, so the
    log of a resumed run is the log of the uninterrupted one."""

    def __init__(self, log: MetricLog):
        self.log = log

    def on_start(self, trainer):
        if not trainer.is_main:
            return
        if trainer.resumed_from is not None:
            self.log.truncate(trainer.resumed_from)
        else:
            self.log.clear()

    def on_epoch_end(self, trainer, record):
        if trainer.is_main:
            self.log.append(record)


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a lower validation loss; restore the best.

    Epochs, not validations: a long run validates every k-th epoch (``Trainer.log_every``),
    and its patience is still counted in epochs since the best."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = {"val": math.inf, "step": -1, "bad_epochs": 0, "state": None}

    def on_epoch_end(self, trainer, record):
        if "val_loss" not in record:
            return
        val = record["val_loss"]
        if val < self.best["val"]:
            state = {k: copy.deepcopy(m.state_dict()) for k, m in trainer.step_obj.modules.items()}
            self.best = {"val": val, "step": trainer.done, "bad_epochs": 0, "state": state}
        else:
            self.best["bad_epochs"] = (trainer.done - self.best["step"]) / trainer.per_epoch
        if self.best["bad_epochs"] >= self.patience:
            trainer.stop_requested = trainer.stopped_early = True
            for k, m in trainer.step_obj.modules.items():
                m.load_state_dict(self.best["state"][k])

    def state_dict(self, trainer):
        return {"best": self.best}

    def load_state_dict(self, trainer, state):
        self.best = state["best"]


class Progress(Callback):
    """A tqdm progress bar (rank 0 only) with the last epoch's losses."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def on_start(self, trainer):
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.done, desc=self.desc,
                        disable=not (self.enabled and trainer.is_main), dynamic_ncols=True)

    def on_step_end(self, trainer):
        self.bar.update(1)

    def on_epoch_end(self, trainer, record):
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in trainer.history or k == "val_loss"})

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()
