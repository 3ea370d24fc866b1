"""The training loop that every engine of the zoo shares.

It owns everything that is not the objective: minibatches, seeding, the learning-rate
schedule, the progress bar, validation and early stopping, the NaN guard, checkpoints,
resumption after an interruption and the metric log of a run folder. An engine (SVI in
:mod:`inference.svi`, the adversarial trainer for the GAN) supplies only ``step_fn``,
one optimisation step on a minibatch.

Determinism: the minibatch of step t depends only on (seed, t), and a checkpoint holds
every random state that training consumes, so a run resumed from step t ends with the
same parameters as an uninterrupted run with the same seed.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyro
import torch
from tqdm.auto import tqdm

from inference.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["CHECKPOINT", "METRICS", "DivergenceError", "FitResult", "train_loop"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class DivergenceError(FloatingPointError):
    """The loss became NaN or infinite; the run folder keeps its last good checkpoint."""


@dataclass
class FitResult:
    """What a training run returns.

    :ivar losses: the training loss of every step (per example, in nats for the
        likelihood models: the negative ELBO of the minibatch scaled to the data set,
        divided by its size). For several players, ``losses`` is the first one's.
    :ivar history: every per-step value by name (``{"loss": [...]}``, or one list per
        player for the GAN).
    :ivar val_losses: ``(step, loss)`` per epoch on the validation data, if given.
    :ivar steps: the number of steps taken in all (resumed ones included).
    :ivar stopped_early: whether early stopping ended the run (the best parameters
        by validation loss are then restored).
    :ivar resumed_from: the step the run resumed from, or None.
    :ivar seconds: wall time of this call.
    :ivar run_dir: the run folder, or None.
    :ivar settings: the resolved settings of the run.
    """

    losses: list[float]
    history: dict[str, list[float]]
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    run_dir: Path | None = None
    settings: dict = field(default_factory=dict)


class _Interrupt:
    """Turns Ctrl-C into a request to stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def lr_at(step: int, total: int, lr: float, schedule: str, final_fraction: float) -> float:
    """The learning rate of ``step``: constant, or cosine-decayed to ``final_fraction * lr``."""
    if schedule == "constant" or total <= 1:
        return lr
    if schedule == "cosine":
        t = min(step / (total - 1), 1.0)
        return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose 'cosine' or 'constant'")


def batch_indices(step: int, num_data: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the minibatch of ``step``: epochs of reshuffled full batches.

    An epoch is ``num_data // batch_size`` steps (the remainder is dropped, and falls in
    another batch in the next epoch's shuffle), so every minibatch has one size.
    """
    per_epoch = max(num_data // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_data, generator=g)
    return perm[i * batch_size : (i + 1) * batch_size]


def train_loop(
    *,
    step_fn: Callable[[torch.Tensor, int], dict[str, torch.Tensor | float]],
    data: torch.Tensor,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    settings: dict,
    total_steps: int,
    batch_size: int,
    seed: int,
    lr: float | dict[str, float],
    lr_schedule: str = "cosine",
    final_lr_fraction: float = 0.01,
    val_fn: Callable[[], float] | None = None,
    early_stopping: int | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Run ``step_fn(batch, step)`` for ``total_steps`` steps (see the module docstring).

    ``step_fn`` returns a dict of per-example losses (the first is "the" loss).
    ``lr`` (per optimiser, or one for all) is set before every step by the schedule.
    ``settings`` (plain values) are stored in the checkpoint; resuming a run folder whose
    checkpoint has other settings raises :class:`CheckpointError`.
    """
    t0 = time.perf_counter()
    num_data = data.shape[0]
    batch_size = min(batch_size, num_data)
    per_epoch = max(num_data // batch_size, 1)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / CHECKPOINT if run_dir else None
    log_path = run_dir / METRICS if run_dir else None
    checkpoint_every = checkpoint_every or max(total_steps // 10, 1)
    lrs = lr if isinstance(lr, dict) else {k: lr for k in optimizers}
    # log (and validate) at epoch ends, at most ~100 times per run
    log_every = max(math.ceil(total_steps / per_epoch / 100), 1) * per_epoch

    history: dict[str, list[float]] = {}
    val_losses: list[tuple[int, float]] = []
    best = {"val": math.inf, "step": -1, "bad_epochs": 0, "state": None}
    start = 0
    resumed_from = None

    def state_dict(step: int) -> dict:
        return {
            "step": step,
            "settings": settings,
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": get_rng_state(),
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
            "val_losses": [[s, v] for s, v in val_losses],
            "best": best,
        }

    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None and resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=data.device)
        _check_settings(ckpt["settings"], settings, ckpt_path)
        for k, m in modules.items():
            m.load_state_dict(ckpt["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        history = {k: v.tolist() for k, v in ckpt["history"].items()}
        val_losses = [(int(s), float(v)) for s, v in ckpt["val_losses"]]
        best = ckpt["best"]
        start = resumed_from = int(ckpt["step"])
        set_rng_state(ckpt["rng"])
        _truncate_log(log_path, start)
    else:
        pyro.set_rng_seed(seed)
        if log_path is not None and log_path.exists():
            log_path.unlink()

    last_good = start if resumed_from is not None else None
    stopped_early = False
    window: dict[str, list[float]] = {}
    bar = tqdm(
        total=total_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True
    )
    done = start
    try:
        with _Interrupt() as interrupt:
            for step in range(start, total_steps):
                for k, opt in optimizers.items():
                    for group in opt.param_groups:
                        group["lr"] = lr_at(
                            step, total_steps, lrs[k], lr_schedule, final_lr_fraction
                        )
                idx = batch_indices(step, num_data, batch_size, seed).to(data.device)
                out = step_fn(data[idx], step)
                values = {k: float(v) for k, v in out.items()}
                bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                if bad:
                    where = (
                        f"the last good checkpoint is {ckpt_path} (step {last_good})"
                        if last_good is not None
                        else "no checkpoint had been written yet"
                    )
                    raise DivergenceError(
                        f"{', '.join(f'{k} = {v}' for k, v in bad.items())} at step {step}: "
                        f"training stopped; {where}"
                    )
                for k, v in values.items():
                    history.setdefault(k, []).append(v)
                    window.setdefault(k, []).append(v)
                done = step + 1
                bar.update(1)
                end_of_epoch = done % log_every == 0 or done == total_steps
                record = None
                if end_of_epoch:
                    record = {"step": done, "epoch": done / per_epoch}
                    record.update({k: sum(v) / len(v) for k, v in window.items()})
                    record["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
                    window = {}
                    if val_fn is not None:
                        val = float(val_fn())
                        val_losses.append((done, val))
                        record["val_loss"] = val
                        if val < best["val"]:
                            best = {"val": val, "step": done, "bad_epochs": 0, "state": None}
                            if early_stopping:
                                best["state"] = {
                                    k: copy.deepcopy(m.state_dict()) for k, m in modules.items()
                                }
                        else:
                            best["bad_epochs"] += 1
                    record["seconds"] = round(time.perf_counter() - t0, 3)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in values or k == "val_loss"})
                    if log_path is not None:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                stop = bool(early_stopping) and best["bad_epochs"] >= early_stopping
                if stop:
                    stopped_early = True
                    for k, m in modules.items():
                        m.load_state_dict(best["state"][k])
                if ckpt_path is not None and (
                    done % checkpoint_every == 0 or interrupt.requested or stop or done == total_steps
                ):
                    save_checkpoint(ckpt_path, state_dict(done))
                    last_good = done
                if interrupt.requested:
                    raise KeyboardInterrupt(
                        f"interrupted at step {done}"
                        + (f"; the checkpoint in {run_dir} resumes it" if run_dir else "")
                    )
                if stop:
                    break
    finally:
        bar.close()
    first = next(iter(history), "loss")
    return FitResult(
        losses=history.get(first, []),
        history=history,
        val_losses=val_losses,
        steps=done,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - t0,
        run_dir=run_dir,
        settings=settings,
    )


def _check_settings(saved: dict, current: dict, path: Path) -> None:
    diff = {
        k: (saved.get(k), current.get(k))
        for k in set(saved) | set(current)
        if saved.get(k) != current.get(k)
    }
    if diff:
        detail = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"{path} holds a run with other settings ({detail}); "
            "use another run folder or pass resume=False to start over"
        )


def _truncate_log(path: Path | None, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if path is None or not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
