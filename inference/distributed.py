"""Data-parallel training with :mod:`torch.distributed` (one process per CPU or GPU).

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address), :func:`inference.fit` and :class:`inference.loop.Trainer` run
data-parallel with no change to the calling code::

    torchrun --nproc_per_node=4 --no-python zoo train vae --data mnist --device cuda

How a step is split: the minibatch of step t is the same global minibatch on every rank
(it depends only on (seed, t)); rank r takes its r-th contiguous slice of it, evaluates
the objective on that slice with the data plate scaled to the *whole* data set, and
before every optimiser step the gradients are averaged over the ranks. The average of
the ranks' estimates ``(N / b) sum_slice`` is ``(N / B) sum_batch``: the same estimate
as one process on the global batch, so W processes follow the single-process run with
the same seed (exactly, up to float summation order, for objectives without guide
draws; with guide draws each rank draws its own, from its own random stream).

Why gradients are averaged by an optimiser hook and not by wrapping the model in
:class:`~torch.nn.parallel.DistributedDataParallel`: Pyro's objectives call
``model.model``/``model.guide`` themselves, never ``module.forward``, so DDP's
forward-time bookkeeping would need a wrapper module per trainer, and DDP rejects
parameters that get no gradient in a step unless told to search the graph for them
every step. A step pre-hook on each optimiser (:func:`average_gradients`, one coalesced
all-reduce per optimiser step) serves every trainer unchanged, the SVI engine and the
adversarial trainer's two optimisers alike. What it gives up is DDP's overlap of the
all-reduce with the backward pass, which matters little at these models' sizes (the
largest, MADE 784-500-784, has 0.8 M parameters: 3 MB per all-reduce).
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "Context",
    "average_gradients",
    "context",
    "env_world_size",
    "is_main_process",
    "local_device",
    "rank_seed",
]


@dataclass(frozen=True)
class Context:
    """The process group this process trains in: its ``rank`` of ``world_size``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a data-parallel run (for writing files)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def local_device(device: str | torch.device) -> torch.device:
    """The device this process should use: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.

    :raises ValueError: CUDA requested but not available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if device.index is None and env_world_size() > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def context(device: str | torch.device = "cpu", *, required: bool | None = None) -> Context | None:
    """Join (initialising if needed) the process group of a data-parallel run.

    Returns None for a single-process run. A process group initialised by the caller is
    used as it is; otherwise one is initialised from torchrun's environment variables
    with the ``nccl`` backend for CUDA devices and ``gloo`` for CPU.

    :param required: True to raise if this is not a data-parallel run, False to never
        join one (None: join when launched with ``WORLD_SIZE`` > 1).
    """
    if required is False:
        return None
    if not _active():
        if env_world_size() > 1 and not (dist.is_available() and dist.is_initialized()):
            if not dist.is_available():
                raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
            backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            atexit.register(_destroy)
    if not _active():
        if required:
            raise ValueError(
                "data-parallel training was requested but this process is not part of a "
                "process group of several processes (launch it with torchrun)"
            )
        return None
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size())


def _destroy():
    """Leave the process group together: a rank tearing gloo down while its peer is still
    talking to it can abort ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
            else:
                dist.barrier()
        except Exception:  # a peer already gone: nothing to wait for
            pass
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream (rank 0 keeps ``seed``)."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2**63 - 1)


def _parameters(params_or_optimizer) -> list[torch.Tensor]:
    if isinstance(params_or_optimizer, torch.optim.Optimizer):
        return [p for g in params_or_optimizer.param_groups for p in g["params"]]
    return list(params_or_optimizer)


def average_gradients(params_or_optimizer) -> None:
    """Replace every gradient by its mean over the ranks (no-op outside a process group).

    One all-reduce of all gradients, flattened together with a has-gradient mask, so a
    parameter that got a gradient on some ranks only is updated on all of them. Given
    an optimiser, marks its gradients as averaged, so that the step pre-hook installed
    by :class:`inference.loop.Trainer` does not average them again (call it yourself
    when the gradients must be averaged before the step, e.g. before clipping them).
    """
    if isinstance(params_or_optimizer, torch.optim.Optimizer):
        params_or_optimizer._zoo_gradients_averaged = True
    if not _active():
        return
    params = [p for p in _parameters(params_or_optimizer) if p.requires_grad]
    if not params:
        return
    device = params[0].device
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device)
            for p in params
        ]
        + [torch.tensor([float(p.grad is not None) for p in params], device=device, dtype=params[0].dtype)]
    )
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    local = [p.grad is not None for p in params]
    # reading the mask back syncs with the device: only needed when a gradient is missing here
    has_grad = local if all(local) else (flat[-len(params):] > 0).tolist()
    offset = 0
    for p, keep in zip(params, has_grad):
        n = p.numel()
        if keep:
            g = flat[offset : offset + n].view_as(p).to(p.device)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def _pre_step_hook(optimizer, args, kwargs):
    if getattr(optimizer, "_zoo_gradients_averaged", False):
        optimizer._zoo_gradients_averaged = False
        return
    average_gradients(optimizer)
    optimizer._zoo_gradients_averaged = False


def install_gradient_averaging(optimizers) -> list:
    """Average gradients over the ranks before every step of each optimiser; returns the hook handles."""
    return [opt.register_step_pre_hook(_pre_step_hook) for opt in optimizers]


def broadcast_modules(modules) -> None:
    """Copy rank 0's parameters and buffers to every rank (so all start from the same point)."""
    if not _active():
        return
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (``t`` itself outside a process group)."""
    if not _active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def all_max(t: torch.Tensor) -> torch.Tensor:
    if not _active():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj) -> list:
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()
