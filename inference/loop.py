"""The one :class:`Trainer` every engine of the zoo runs on.

A trainer drives a *step object* (one optimisation step on a minibatch:
:class:`inference.svi.SVIStep`, :class:`inference.adversarial.AdversarialStep`) over
minibatches, owns the training state (:meth:`Trainer.state_dict`,
:meth:`Trainer.load_state_dict`) and runs :mod:`callbacks <inference.callbacks>`:
checkpoints, the metric log, early stopping, the NaN and blow-up guard, progress.

A step object has ``modules`` (name -> ``nn.Module``, checkpointed), ``__call__(batch,
step) -> {name: loss}`` (per-example losses; the first is "the" loss; names starting with
``_`` are checks, not history), ``set_lr(step, schedule)``, ``parameters()`` and
``state_dict()``/``load_state_dict(state, batch)``.

Determinism: the minibatch of step t depends only on (seed, t), and a checkpoint holds
every random state that training consumes and the running averages of the metric log, so
a run resumed from step t ends with the same parameters and the same log as an
uninterrupted run with the same seed.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import pyro
import torch

from inference import distributed as ddp
from inference.checkpoint import CHECKPOINT, METRICS, CheckpointError, get_rng_state, set_rng_state  # noqa: F401

__all__ = [
    "DivergenceError",
    "EpochData",
    "FitResult",
    "Interrupted",
    "Minibatches",
    "LR_SCHEDULES",
    "Schedule",
    "Trainer",
    "batch_indices",
    "epoch_permutation",
    "lr_at",
]


class DivergenceError(FloatingPointError):
    """The loss, a gradient or a parameter became NaN or infinite, or the loss blew up;
    the checkpoint keeps the last good (finite) state."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the run checkpointed (if it has a checkpoint) and stopped.

    :ivar signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``); a command line
        exits with ``128 + signum`` (130, 143).
    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


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
    :ivar train_seconds: training time summed over all the run's parts (resumes included).
    :ivar run_dir: the folder of the checkpoint, or None.
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
    train_seconds: float = 0.0


# ----- schedule and minibatches ---------------------------------------------------------
@runtime_checkable
class EpochData(Protocol):
    """Training data drawn afresh each epoch (e.g. dynamic binarisation): epoch e trains on
    ``for_epoch(e)``, a tensor with the same rows in the same order, drawn from the data
    set's own seed and e only (so a resumed run sees the same draws)."""

    def for_epoch(self, epoch: int) -> torch.Tensor: ...


# ----- schedule and minibatches ---------------------------------------------------------
#: the learning-rate schedules :func:`lr_at` knows
LR_SCHEDULES = ("cosine", "constant", "staged")
#: ``"staged"``: Burda et al. (2016)'s, 8 stages of 3^i parts at ``lr * 10**(-i / 7)``
STAGES, STAGE_DECAY = 8, 10 ** (-1 / 7)


def lr_at(step: int, total: int, lr: float, schedule: str, final_fraction: float) -> float:
    """The learning rate of ``step`` of ``total``: ``"constant"``; ``"cosine"``, decayed to
    ``final_fraction * lr``; or ``"staged"``, Burda et al. (2016)'s for the IWAE: stage
    i = 0..7 takes 3^i parts of the run's 3280 (3^i passes of a 3280-epoch run) at
    ``lr * 10**(-i / 7)``, so the last, longest stage runs at ``lr / 10``."""
    if schedule == "constant" or total <= 1:
        return lr
    if schedule == "cosine":
        t = min(step / (total - 1), 1.0)
        return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "staged":  # stage i ends where step / total = (3^(i+1) - 1) / (3^8 - 1), in integers
        parts = 3**STAGES - 1
        stage = next((i for i in range(STAGES) if step * parts < total * (3 ** (i + 1) - 1)), STAGES - 1)
        return lr * STAGE_DECAY**stage
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule of a run of ``total`` steps (see :func:`lr_at`)."""

    total: int
    kind: str = "cosine"
    final_fraction: float = 0.01

    def __call__(self, step: int, lr: float) -> float:
        return lr_at(step, self.total, lr, self.kind, self.final_fraction)


def epoch_permutation(epoch: int, num_data: int, seed: int) -> torch.Tensor:
    """The shuffle of ``epoch``: a permutation of ``range(num_data)`` from (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_data, generator=g)


def batch_indices(step: int, num_data: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the minibatch of ``step``: epochs of reshuffled full batches.

    An epoch is ``num_data // batch_size`` steps (the remainder is dropped, and falls in
    another batch in the next epoch's shuffle), so every minibatch has one size. A full
    batch is never shuffled: it is ``range(num_data)`` in order.
    """
    if batch_size >= num_data:
        return torch.arange(num_data)
    per_epoch = max(num_data // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    return epoch_permutation(epoch, num_data, seed)[i * batch_size : (i + 1) * batch_size]


class Minibatches:
    """The row indices of :func:`batch_indices`, on the data's device, and the rows.

    The permutation is computed once per epoch (not once per step) and moved to the
    device once. In a data-parallel run, rank r of W gets the r-th contiguous slice of
    the global batch. ``source`` is a tensor, or an object with ``for_epoch(e)`` returning
    epoch e's tensor (same rows, e.g. a fresh binarisation drawn from the data set's
    seed and e), which :meth:`rows` then reads.
    """

    def __init__(self, data, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.source = data
        self.data = data if isinstance(data, torch.Tensor) else None
        self.num_data = len(data)
        self.seed = seed
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
        self._rows_epoch, self._rows = None, None
        self.device = self.data.device if self.data is not None else torch.device("cpu")

    def indices(self, step: int) -> torch.Tensor:
        """This process's indices of the global minibatch of ``step``."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            if self.batch_size >= self.num_data:
                self._perm = torch.arange(self.num_data, device=self.device)
            else:
                self._perm = epoch_permutation(epoch, self.num_data, self.seed).to(self.device)
        start = i * self.batch_size + self.offset
        return self._perm[start : start + self.local]

    def epoch_data(self, step: int) -> torch.Tensor:
        """The data of the epoch of ``step`` (``source.for_epoch(e)`` where it has one)."""
        if self.data is not None:
            return self.data
        epoch = step // self.per_epoch
        if epoch != self._rows_epoch:
            self._rows_epoch, self._rows = epoch, self.source.for_epoch(epoch).to(self.device)
        return self._rows

    def to(self, device) -> "Minibatches":
        self.device = torch.device(device)
        if self.data is not None:
            self.data = self.data.to(self.device)
        self._epoch = self._rows_epoch = None
        return self

    def __call__(self, step: int) -> torch.Tensor:
        return self.epoch_data(step)[self.indices(step)]


# ----- the trainer ----------------------------------------------------------------------
class _Interrupt:
    """Turns Ctrl-C and SIGTERM into a request to stop (and checkpoint) after this step.

    A second signal stops at once (an :class:`Interrupted` naming the step and the last
    checkpoint), except while a checkpoint is being written, which it lets finish.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, describe: Callable[[], str]):
        self.requested = None  # the signal number once requested
        self.saving = False
        self.describe = describe
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and not self.saving:
            raise Interrupted(f"interrupted twice, stopped at once: {self.describe()}", signum)
        self.requested = self.requested or signum

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


def _overrides(callback, hook: str) -> bool:
    """Whether ``callback`` has its own ``hook`` (else the base class's no-op)."""
    from inference.callbacks import Callback

    base = getattr(Callback, hook, None)
    return base is None or getattr(type(callback), hook, None) is not base


class Trainer:
    """Runs ``step`` for ``total_steps`` steps over ``batches`` (see the module docstring).

    :param step: the step object.
    :param batches: ``batches(t)`` is the batch of step t; ``per_epoch`` steps make an epoch.
    :param settings: plain values stored in the checkpoint; a resume with others is refused.
    :param callbacks: :class:`inference.callbacks.Callback` objects, run in order.
    :param val_fn: the validation loss (per example), computed at each epoch end.
    :param sync_every: how many steps' losses are read back to the host at once (the
        NaN guard and the history). On CUDA this is 25 by default (reading a loss waits
        for the GPU), and always before a checkpoint, a log line or the end; on the CPU 1.
    """

    def __init__(self, step, batches, *, total_steps: int, seed: int, schedule: Schedule,
                 settings: dict, callbacks=(), val_fn=None, sync_every: int | None = None,
                 context=None, device=None, seconds_so_far: float = 0.0):
        self.step_obj, self.batches = step, batches
        self.total_steps, self.seed, self.schedule = total_steps, seed, schedule
        self.settings, self.callbacks, self.val_fn = settings, list(callbacks), val_fn
        self.ctx = context
        self.rank, self.world = (context.rank, context.world_size) if context else (0, 1)
        self.is_main = self.rank == 0
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if sync_every is None:
            sync_every = 25 if self.device.type == "cuda" else 1
        self.sync_every = max(int(sync_every), 1)
        self.per_epoch = getattr(batches, "per_epoch", 1)
        # log (and validate) at epoch ends, at most ~100 times per run
        self.log_every = max(math.ceil(total_steps / self.per_epoch / 100), 1) * self.per_epoch
        # the state (state_dict / load_state_dict)
        self.done = 0
        self.history: dict[str, list[float]] = {}
        self.window: dict[str, list[float]] = {}
        self.val_losses: list[tuple[int, float]] = []
        self.train_seconds = seconds_so_far
        self.resumed_from = None
        self.stop_requested = False
        self.stopped_early = False
        self.last_good = None  # (step, where) of the last checkpoint written or resumed
        self.pending: list[tuple[int, dict]] = []
        self.interrupt = None
        self._per_step = {hook: list(self.callbacks) for hook in ("on_step_end", "wants_checkpoint", "on_values")}

    # ----- state --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs: step, settings, the step object's state
        (modules, optimisers), random states of every rank, history, running averages."""
        rng = ddp.all_gather_object(get_rng_state()) if self.ctx else [get_rng_state()]
        state = {
            "step": self.done,
            "settings": self.settings,
            **self.step_obj.state_dict(),
            "rng": rng[0],
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.history.items()},
            "window": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.window.items()},
            "val_losses": [[s, v] for s, v in self.val_losses],
            "train_seconds": float(self.train_seconds + self._elapsed()),
        }
        for cb in self.callbacks:
            state.update(cb.state_dict(self))
        if len(rng) > 1:
            state["rng_ranks"] = rng
        return state

    def load_state_dict(self, state: dict, where: str = "the checkpoint") -> None:
        """Restore a :meth:`state_dict` (raises :class:`CheckpointError`, one line, on a
        checkpoint of the wrong structure)."""
        try:
            self.step_obj.load_state_dict(state, self.batches(int(state["step"])))
            self.history = {k: v.tolist() for k, v in state["history"].items()}
            self.window = {k: v.tolist() for k, v in state.get("window", {}).items()}
            self.val_losses = [(int(s), float(v)) for s, v in state["val_losses"]]
            self.train_seconds = float(state.get("train_seconds", 0.0))
            for cb in self.callbacks:
                cb.load_state_dict(self, state)
            self.done = self.resumed_from = int(state["step"])
            ranks_rng = state.get("rng_ranks")
            if self.world == 1 or (ranks_rng is not None and len(ranks_rng) == self.world):
                set_rng_state(ranks_rng[self.rank] if self.world > 1 else state["rng"])
            elif self.is_main:  # resumed with another number of processes: rank 0 keeps its stream
                set_rng_state(state["rng"])
            else:
                pyro.set_rng_seed(ddp.rank_seed(self.seed + self.done, self.rank))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(
                f"{where} does not hold a checkpoint of this run ({type(e).__name__}: {detail}); "
                "use another folder or start over (resume=False / --restart)"
            ) from None

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 if getattr(self, "_t0", None) is not None else 0.0

    def last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint had been written yet"
        step, where = self.last_good
        return f"the last good checkpoint is {where} (step {step})"

    def describe(self) -> str:
        """Where the run stands: its step and its last good checkpoint."""
        return f"at step {self.done}; {self.last_good_text()}"

    # ----- the loop -----------------------------------------------------------------
    def run(self) -> FitResult:
        self._t0 = t0 = time.perf_counter()
        pyro.set_rng_seed(ddp.rank_seed(self.seed, self.rank))
        hooks = []
        try:
            for cb in self.callbacks:
                cb.on_start(self)  # may resume: load_state_dict
            if self.ctx:
                ddp.broadcast_modules(self.step_obj.modules.values())
                hooks = ddp.install_gradient_averaging(self.step_obj.optimizers.values())
            warm = self.done + min(5, max((self.total_steps - self.done) // 2, 0))
            t_warm = None
            # only the callbacks that do something per step are called per step
            self._per_step = {hook: [cb for cb in self.callbacks if _overrides(cb, hook)]
                              for hook in ("on_step_end", "wants_checkpoint", "on_values")}
            step_end = self._per_step["on_step_end"]
            step_obj, batches, schedule, pending = self.step_obj, self.batches, self.schedule, self.pending
            with _Interrupt(self.describe) as self.interrupt:
                for step in range(self.done, self.total_steps):
                    step_obj.set_lr(step, schedule)
                    pending.append((step, step_obj(batches(step), step)))
                    self.done = step + 1
                    for cb in step_end:
                        cb.on_step_end(self)
                    if self.done == warm:
                        if self.device.type == "cuda":  # time from when the warm-up steps have run
                            torch.cuda.synchronize(self.device)
                        t_warm = time.perf_counter()
                    if self._after_step():
                        break
                self.read_back()
            if self.ctx:  # the final checkpoint is on disk before any rank returns
                ddp.barrier()
        finally:
            for h in hooks:
                h.remove()
            for cb in reversed(self.callbacks):
                cb.on_close(self)
        t_end = time.perf_counter()
        first = next(iter(self.history), "loss")
        done, warm_ok = self.done, t_warm is not None and self.done > warm
        return FitResult(
            losses=self.history.get(first, []), history=self.history, val_losses=self.val_losses,
            steps=done, stopped_early=self.stopped_early, resumed_from=self.resumed_from,
            seconds=t_end - t0, settings=self.settings, world_size=self.world,
            seconds_per_step=(t_end - t_warm) / (done - warm) if warm_ok else None,
            train_seconds=self.train_seconds + (t_end - t0),
        )

    def _after_step(self) -> bool:
        """Read back, log, validate and checkpoint where due; True to stop."""
        done = self.done
        end_of_epoch = done % self.log_every == 0 or done == self.total_steps
        save_due = any(cb.wants_checkpoint(self) for cb in self._per_step["wants_checkpoint"])
        # every rank reads back at the same steps (the flags are step-determined, except
        # a signal, which is shared by all ranks at the next read-back)
        if not (len(self.pending) >= self.sync_every or end_of_epoch or save_due
                or (self.ctx is None and self.interrupt.requested)):
            return False
        signum = self.read_back(self.interrupt.requested)
        if end_of_epoch:
            self._end_epoch()
        if save_due or signum or self.stop_requested:
            self.interrupt.saving = True
            try:
                for cb in self.callbacks:
                    cb.on_checkpoint(self)
            finally:
                self.interrupt.saving = False
        if signum:
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            where = (f"; the checkpoint {self.last_good[1]} (step {self.last_good[0]}) resumes it"
                     if self.last_good and self.last_good[0] == done else "; no checkpoint (nothing to resume)")
            raise Interrupted(f"interrupted at step {done} ({name}){where}", signum)
        return self.stop_requested

    def _end_epoch(self) -> None:
        done = self.done
        record = {"step": done, "epoch": done / self.per_epoch}
        record.update({k: sum(v) / len(v) for k, v in self.window.items() if v})
        record["lr"] = self.step_obj.current_lr()
        self.window = {}
        if self.val_fn is not None:
            val = float(self.val_fn())
            if self.ctx:  # the same value (and so the same early stopping) on every rank
                val = float(ddp.all_mean(torch.tensor([val], dtype=torch.float64, device=self.device)))
            if not math.isfinite(val):
                raise DivergenceError(f"the validation loss is {val} {self.describe()}")
            self.val_losses.append((done, val))
            record["val_loss"] = val
        record["seconds"] = round(self.train_seconds + self._elapsed(), 3)
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)

    def read_back(self, signum=None):
        """Check and record the pending losses; returns the (all-rank) signal, if any."""
        if not self.pending:
            return signum
        keys = list(self.pending[0][1])
        if self.ctx is None and len(self.pending) == 1:
            rows = [[v if type(v) is float else float(v) for v in self.pending[0][1].values()]]
        else:
            flat = torch.stack(
                [torch.as_tensor(out[k], dtype=torch.float64, device=self.device).detach().reshape(())
                 for _, out in self.pending for k in keys]
            )
            if self.ctx:
                flag = torch.tensor([float(signum or 0)], dtype=torch.float64, device=self.device)
                flat = ddp.all_max(torch.cat([ddp.all_mean(flat), flag]))
                signum = int(flat[-1]) or None
                flat = flat[:-1]
            flat = flat.tolist()
            rows = [flat[i * len(keys): (i + 1) * len(keys)] for i in range(len(self.pending))]
        for (step, _), row in zip(self.pending, rows):
            values = dict(zip(keys, row))
            for cb in self._per_step["on_values"]:
                cb.on_values(self, step, values)
            for k, v in values.items():
                if not k.startswith("_"):
                    self.history.setdefault(k, []).append(v)
                    self.window.setdefault(k, []).append(v)
        self.pending.clear()
        return signum
