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

__all__ = ["CHECKPOINT", "METRICS", "DivergenceError", "FitResult", "Minibatches", "batch_indices", "train_loop"]

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
    :ivar seconds_per_step: wall time per step after the first few (which may compile
        or trace), from the end of warm-up to the end of the run; None for short runs.
    :ivar world_size: the number of data-parallel processes (1 unless under torchrun).
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
    seconds_per_step: float | None = None
    world_size: int = 1


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


def epoch_permutation(epoch: int, num_data: int, seed: int) -> torch.Tensor:
    """The shuffle of ``epoch``: a permutation of ``range(num_data)`` from (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_data, generator=g)


def batch_indices(step: int, num_data: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the minibatch of ``step``: epochs of reshuffled full batches.

    An epoch is ``num_data // batch_size`` steps (the remainder is dropped, and falls in
    another batch in the next epoch's shuffle), so every minibatch has one size.
    """
    per_epoch = max(num_data // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    return epoch_permutation(epoch, num_data, seed)[i * batch_size : (i + 1) * batch_size]


class Minibatches:
    """The minibatches of :func:`batch_indices`, drawn from data on its device.

    The permutation is computed once per epoch (not once per step) and moved to the
    data's device once, so a step costs one slice and one gather on the device. In a
    data-parallel run, rank r of W gets the r-th contiguous slice of the global batch.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.data, self.seed = data, seed
        self.num_data = data.shape[0]
        self.batch_size = min(batch_size, self.num_data)
        self.per_epoch = max(self.num_data // self.batch_size, 1)
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by the {world_size} processes "
                "of this data-parallel run; choose a multiple of the world size"
            )
        self.local = self.batch_size // world_size
        self.offset = rank * self.local
        self._epoch, self._perm = None, None

    def indices(self, step: int) -> torch.Tensor:
        """This process's indices of the global minibatch of ``step``."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = epoch_permutation(epoch, self.num_data, self.seed).to(self.data.device)
        start = i * self.batch_size + self.offset
        return self._perm[start : start + self.local]

    def __call__(self, step: int) -> torch.Tensor:
        return self.data[self.indices(step)]


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
    sync_every: int | None = None,
    distributed: bool | None = None,
) -> FitResult:
    """Run ``step_fn(batch, step)`` for ``total_steps`` steps (see the module docstring).

    ``step_fn`` returns a dict of per-example losses (the first is "the" loss).
    ``lr`` (per optimiser, or one for all) is set before every step by the schedule.
    ``settings`` (plain values) are stored in the checkpoint; resuming a run folder whose
    checkpoint has other settings raises :class:`CheckpointError`.

    ``sync_every``: how many steps' losses are read back to the host at once (for the
    NaN guard and the history). Reading a loss from a GPU waits for the GPU, so on CUDA
    the losses are checked every 25 steps by default (and always before a checkpoint,
    a log line or the end); a non-finite loss still raises, naming its step, and never
    reaches a checkpoint. On the CPU the default is every step.

    ``distributed``: run data-parallel (see :mod:`inference.distributed`) when launched
    by torchrun (None, the default), always (True: raise if not launched so) or never
    (False). Each rank gets its slice of the global minibatch, gradients are averaged
    over the ranks before every optimiser step, the losses are averaged, and rank 0
    alone writes the checkpoint, the metric log and the progress bar.
    """
    from inference import distributed as ddp

    t0 = time.perf_counter()
    ctx = ddp.context(data.device, required=distributed)
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    main = rank == 0
    num_data = data.shape[0]
    batches = Minibatches(data, batch_size, seed, rank, world)
    batch_size = batches.batch_size
    per_epoch = batches.per_epoch
    if sync_every is None:
        sync_every = 25 if data.device.type == "cuda" else 1
    sync_every = max(int(sync_every), 1)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / CHECKPOINT if run_dir else None
    log_path = run_dir / METRICS if run_dir and main else None
    checkpoint_every = checkpoint_every or max(total_steps // 10, 1)
    lrs = lr if isinstance(lr, dict) else {k: lr for k in optimizers}
    # log (and validate) at epoch ends, at most ~100 times per run
    log_every = max(math.ceil(total_steps / per_epoch / 100), 1) * per_epoch

    history: dict[str, list[float]] = {}
    val_losses: list[tuple[int, float]] = []
    best = {"val": math.inf, "step": -1, "bad_epochs": 0, "state": None}
    start = 0
    resumed_from = None

    def state_dict(step: int, rng: list) -> dict:
        state = {
            "step": step,
            "settings": settings,
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": rng[0],
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
            "val_losses": [[s, v] for s, v in val_losses],
            "best": best,
        }
        if len(rng) > 1:
            state["rng_ranks"] = rng
        return state

    if run_dir is not None and main:
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
        ranks_rng = ckpt.get("rng_ranks")
        if world == 1 or (ranks_rng is not None and len(ranks_rng) == world):
            set_rng_state(ranks_rng[rank] if world > 1 else ckpt["rng"])
        elif main:  # resumed with another number of processes: rank 0 keeps its stream
            set_rng_state(ckpt["rng"])
        else:
            pyro.set_rng_seed(ddp.rank_seed(seed + start, rank))
        if main:
            _truncate_log(log_path, start)
    else:
        pyro.set_rng_seed(ddp.rank_seed(seed, rank))
        if log_path is not None and log_path.exists():
            log_path.unlink()
    hooks = []
    if ctx:
        ddp.broadcast_modules(modules.values())
        hooks = ddp.install_gradient_averaging(optimizers.values())

    last_good = start if resumed_from is not None else None
    stopped_early = False
    window: dict[str, list[float]] = {}
    pending: list[tuple[int, dict]] = []  # steps taken whose losses are not read back yet
    bar = tqdm(
        total=total_steps, initial=start, desc=desc, disable=not (progress and main), dynamic_ncols=True
    )
    warm = start + min(5, max((total_steps - start) // 2, 0))
    t_warm = None
    done = start

    def read_back(interrupted: bool) -> bool:
        """Check and record the pending losses; returns the (all-rank) interrupt flag."""
        if not pending:
            return interrupted
        keys = list(pending[0][1])
        if ctx is None and len(pending) == 1:
            rows = [[float(v) for v in pending[0][1].values()]]
        else:
            flat = torch.stack(
                [torch.as_tensor(out[k], dtype=torch.float64, device=data.device).detach().reshape(())
                 for _, out in pending for k in keys]
            )
            if ctx:
                flag = torch.tensor([float(interrupted)], dtype=torch.float64, device=data.device)
                flat = ddp.all_mean(torch.cat([flat, flag]))
                interrupted = bool(flat[-1] > 0)
                flat = flat[:-1]
            flat = flat.tolist()
            rows = [flat[i * len(keys) : (i + 1) * len(keys)] for i in range(len(pending))]
        for (step, _), row in zip(pending, rows):
            bad = {k: v for k, v in zip(keys, row) if not math.isfinite(v)}
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
            for k, v in zip(keys, row):
                history.setdefault(k, []).append(v)
                window.setdefault(k, []).append(v)
        pending.clear()
        return interrupted

    try:
        with _Interrupt() as interrupt:
            for step in range(start, total_steps):
                for k, opt in optimizers.items():
                    for group in opt.param_groups:
                        group["lr"] = lr_at(
                            step, total_steps, lrs[k], lr_schedule, final_lr_fraction
                        )
                out = step_fn(batches(step), step)
                pending.append((step, out))
                done = step + 1
                bar.update(1)
                if done == warm:
                    if data.device.type == "cuda":  # time from when the warm-up steps have run
                        torch.cuda.synchronize(data.device)
                    t_warm = time.perf_counter()
                end_of_epoch = done % log_every == 0 or done == total_steps
                save_due = ckpt_path is not None and (
                    done % checkpoint_every == 0 or done == total_steps
                )
                # every rank reads back at the same steps (the flags below are step-determined,
                # except Ctrl-C, which is shared by all ranks at the next read-back)
                if not (len(pending) >= sync_every or end_of_epoch or save_due
                        or (ctx is None and interrupt.requested)):
                    continue
                interrupted = read_back(interrupt.requested)
                if end_of_epoch:
                    record = {"step": done, "epoch": done / per_epoch}
                    record.update({k: sum(v) / len(v) for k, v in window.items()})
                    record["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
                    window = {}
                    if val_fn is not None:
                        val = float(val_fn())
                        if ctx:  # the same value (and so the same early stopping) on every rank
                            val = float(ddp.all_mean(torch.tensor([val], dtype=torch.float64, device=data.device)))
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
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in history or k == "val_loss"})
                    if log_path is not None:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                stop = bool(early_stopping) and best["bad_epochs"] >= early_stopping
                if stop:
                    stopped_early = True
                    for k, m in modules.items():
                        m.load_state_dict(best["state"][k])
                if ckpt_path is not None and (save_due or interrupted or stop):
                    rng = ddp.all_gather_object(get_rng_state()) if ctx else [get_rng_state()]
                    if main:
                        save_checkpoint(ckpt_path, state_dict(done, rng))
                    last_good = done
                if interrupted:
                    raise KeyboardInterrupt(
                        f"interrupted at step {done}"
                        + (f"; the checkpoint in {run_dir} resumes it" if run_dir else "")
                    )
                if stop:
                    break
            read_back(False)
        if ctx:  # the final checkpoint is on disk before any rank returns
            ddp.barrier()
    finally:
        bar.close()
        for h in hooks:
            h.remove()
    t_end = time.perf_counter()
    first = next(iter(history), "loss")
    return FitResult(
        losses=history.get(first, []),
        history=history,
        val_losses=val_losses,
        steps=done,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        seconds=t_end - t0,
        run_dir=run_dir,
        settings=settings,
        seconds_per_step=(t_end - t_warm) / (done - warm) if t_warm is not None and done > warm else None,
        world_size=world,
    )


#: settings that do not change the numbers a run computes: a run may resume with others
FREE_SETTINGS = frozenset({"compile"})


def _check_settings(saved: dict, current: dict, path: Path) -> None:
    diff = {
        k: (saved.get(k), current.get(k))
        for k in (set(saved) | set(current)) - FREE_SETTINGS
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
