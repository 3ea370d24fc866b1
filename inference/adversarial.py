"""The adversarial trainer: ``fit_adversarial(gan, data)``, the GAN's counterpart of ``fit``.

It plays the two-player game of Goodfellow et al. (2014), Algorithm 1,

    min_G max_D  V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ N(0, I)}[log(1 - D(G(z)))],

with one Adam optimiser per player. Each step, on a minibatch x of the data:

1. ``d_steps`` discriminator updates (fresh noise z each), each minimising
   ``loss_d = -V = softplus(-d(x)) + softplus(d(G(z)))`` per example (D = sigmoid(d));
2. one generator update on fresh noise, minimising ``loss_g``:

   * ``"minimax"``: E[log(1 - D(G(z)))] = -softplus(d(G(z))), the game's own objective
     (its gradient vanishes while D rejects the samples confidently);
   * ``"non_saturating"`` (default): -E[log D(G(z))] = softplus(-d(G(z))), same fixed
     points, strong gradients early in training (the paper's recommendation).

Both per-example losses are logged as ``loss_d`` and ``loss_g`` (nats). At the game's
equilibrium p_g = p_data and D = 1/2, so ``loss_d`` -> log 4 ~ 1.386; for a fixed G and
the best D, ``loss_d = log 4 - 2 JSD(p_data || p_g)``.

Everything else (minibatches, seeding, the learning-rate schedule, progress bar, NaN
guard, checkpoints of both players and both optimisers, resumption, Ctrl-C, metric log)
is the :class:`inference.loop.Trainer` the SVI engine runs on (:class:`AdversarialStep`
is this trainer's step object), so a GAN run folder
behaves exactly like an SVI one: a resumed run ends with the parameters of an
uninterrupted run with the same seed.

:func:`fit_discriminator` trains a discriminator alone against a fixed generator (the
inner loop of Algorithm 1 run to convergence), for checking D -> D*;
:func:`optimal_discriminator`, :func:`value_function` and :func:`jensen_shannon` evaluate
the theory on densities given on a quadrature grid (or on a discrete space).
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

import torch
from torch.nn import functional as F

from inference import callbacks as cb
from inference import distributed as ddp
from inference.loop import EpochData, FitResult, Minibatches, Schedule, Trainer
from inference.svi import as_tensor, check_settings, standard_callbacks
from inference.svi import resolve_settings as svi_resolve_settings

__all__ = [
    "ADVERSARIAL_DEFAULTS",
    "Adversarial",
    "AdversarialStep",
    "GENERATOR_LOSSES",
    "discriminator_loss",
    "fit_adversarial",
    "fit_discriminator",
    "generator_loss",
    "jensen_shannon",
    "optimal_discriminator",
    "value_function",
]

GENERATOR_LOSSES = ("non_saturating", "minimax")

#: Settings used where neither the caller nor the model's ``fit_defaults`` give one.
ADVERSARIAL_DEFAULTS = dict(
    objective="non_saturating",
    steps=None,
    epochs=100,
    batch_size=64,
    lr=2e-4,
    lr_d=None,  # None: same as lr
    betas=(0.5, 0.999),
    d_steps=1,
    lr_schedule="cosine",
    final_lr_fraction=0.1,
)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-V(D, G) per example: E[-log D(x_real)] + E[-log(1 - D(x_fake))], D = sigmoid(logits)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """The generator's loss on the discriminator's logits of its samples (module docstring)."""
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # E[log(1 - D)]
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()  # -E[log D]
    raise ValueError(f"unknown generator loss {kind!r}; choose from {', '.join(GENERATOR_LOSSES)}")


def resolve_settings(model, **given) -> dict:
    """The caller's settings over the model's ``fit_defaults`` over :data:`ADVERSARIAL_DEFAULTS`."""
    settings = svi_resolve_settings(model, defaults=ADVERSARIAL_DEFAULTS, **given)
    if settings["objective"] not in GENERATOR_LOSSES:
        raise ValueError(
            f"unknown adversarial objective {settings['objective']!r}; "
            f"choose from {', '.join(GENERATOR_LOSSES)}"
        )
    if settings["lr_d"] is None:
        settings["lr_d"] = settings["lr"]
    d_steps = settings["d_steps"]
    if isinstance(d_steps, bool) or not isinstance(d_steps, int) or d_steps < 1:
        raise ValueError(f"d_steps must be a positive integer, got {d_steps!r}")
    settings["betas"] = [float(b) for b in settings["betas"]]  # a list survives a checkpoint as is
    check_settings({**settings, "num_particles": 1, "compile": "none"}, lr_may_be_zero=True)
    if not (isinstance(settings["lr_d"], (int, float)) and math.isfinite(settings["lr_d"]) and settings["lr_d"] >= 0):
        raise ValueError(f"lr_d must be a number >= 0, got {settings['lr_d']!r}")
    return settings


def fit_adversarial(
    model,
    data,
    *,
    objective: str | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_d: float | None = None,
    betas: tuple[float, float] | None = None,
    d_steps: int | None = None,
    lr_schedule: str | None = None,
    final_lr_fraction: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir=None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    progress: bool = True,
    val_data=None,
    early_stopping: int | None = None,
    num_particles: int | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint=None,
    metric_log=None,
) -> FitResult:
    """Train a GAN (a model with ``generate``, ``discriminate``, ``generator`` and
    ``discriminator``, e.g. ``zoo.create("gan")``) on ``data`` by the adversarial game.

    :param data: a ``(N, D)`` float 0/1 tensor or a :class:`zoo.Dataset`.
    :param objective: the generator loss, ``"non_saturating"`` (default) or ``"minimax"``.
    :param steps: optimisation steps (one generator update each); or ``epochs``.
    :param lr: the generator's Adam learning rate; ``lr_d`` the discriminator's (default
        ``lr``); ``betas`` Adam's (default (0.5, 0.999), as DCGAN); both decay by
        ``lr_schedule`` (``"cosine"`` to ``final_lr_fraction`` of the start, or ``"constant"``).
    :param d_steps: discriminator updates per generator update (k of Algorithm 1).
    :param seed, device, run_dir, resume, checkpoint_every, progress, checkpoint, metric_log:
        as :func:`inference.fit`.
    :param val_data: accepted for a uniform call, and unused: the game has no validation
        loss to monitor; ``early_stopping`` and ``num_particles`` must be None.
    :param on_step: called as ``on_step(steps_done)`` after every step (e.g. to keep sample
        grids over training); it must not draw from the global random streams, or a
        resumed run would no longer equal an uninterrupted one.
    :returns: a :class:`inference.loop.FitResult` with ``history["loss_d"]`` and
        ``history["loss_g"]`` (``losses`` is ``loss_d``).
    """
    if early_stopping:
        raise ValueError("early stopping needs a validation loss; the adversarial game has none")
    if num_particles is not None:
        raise ValueError("num_particles is an SVI setting; the adversarial trainer takes none")
    if not isinstance(model, Adversarial):
        raise TypeError(f"{type(model).__name__} is not a GAN (no generate/discriminate/generator/"
                        "discriminator); train it with inference.fit")
    settings = resolve_settings(
        model, objective=objective, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
        lr_d=lr_d, betas=betas, d_steps=d_steps, lr_schedule=lr_schedule,
        final_lr_fraction=final_lr_fraction,
    )
    device = ddp.local_device(device)
    ctx = ddp.context(device)
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    x = as_tensor(data)
    model.check_data(x)
    model.to(device)
    source = data if isinstance(data, EpochData) and not isinstance(data, torch.Tensor) else x.to(device)
    rows = Minibatches(source, settings["batch_size"], seed, rank, world).to(device)
    total = settings["steps"] or settings["epochs"] * rows.per_epoch
    step = AdversarialStep(model, settings, on_step=on_step)
    settings.update(
        steps=total, epochs=None, batch_size=rows.batch_size, seed=seed, num_data=x.shape[0],
        model=type(model).__name__, trainer="adversarial", model_options=dict(getattr(model, "options", {})),
    )
    name = getattr(model, "registered_name", type(model).__name__)
    run = dict(checkpoint=checkpoint, metric_log=metric_log, run_dir=run_dir, resume=resume,
               checkpoint_every=checkpoint_every, progress=progress)
    callbacks, _ = standard_callbacks(run, f"{name} [adversarial, {settings['objective']}]")
    trainer = Trainer(step, rows, total_steps=total, seed=seed,
                      schedule=Schedule(total, settings["lr_schedule"], settings["final_lr_fraction"]),
                      settings=settings, callbacks=callbacks, context=ctx, device=device)
    return trainer.run()


@runtime_checkable
class Adversarial(Protocol):
    """What the adversarial trainer needs (and what :func:`inference.fit` refuses): a
    sampler ``generate(z, hard=...)`` and a critic ``discriminate(x)`` (with the networks
    ``generator`` and ``discriminator`` holding their parameters)."""

    def generate(self, z, hard: bool = ...): ...

    def discriminate(self, x): ...


class AdversarialStep:
    """One step of Algorithm 1: ``d_steps`` discriminator updates, one generator update."""

    def __init__(self, model, settings: dict, on_step=None):
        betas = tuple(settings["betas"])
        self.model, self.kind, self.k, self.on_step = model, settings["objective"], settings["d_steps"], on_step
        self.lrs = {"generator": settings["lr"], "discriminator": settings["lr_d"]}
        self.optimizers = {
            "generator": torch.optim.Adam(model.generator.parameters(), lr=settings["lr"], betas=betas),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=settings["lr_d"], betas=betas),
        }
        self.modules = {"model": model}
        self.latent_dim = model.latent_dim

    def _noise(self, n, device):
        return torch.randn(n, self.latent_dim, device=device)

    def __call__(self, batch, step):
        model, opt_g, opt_d = self.model, self.optimizers["generator"], self.optimizers["discriminator"]
        n = batch.shape[0]
        for _ in range(self.k):
            with torch.no_grad():
                fake = model.generate(self._noise(n, batch.device), hard=False)
            loss_d = discriminator_loss(model.discriminate(batch), model.discriminate(fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        fake = model.generate(self._noise(n, batch.device), hard=False)
        loss_g = generator_loss(model.discriminate(fake), self.kind)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if self.on_step is not None:
            self.on_step(step + 1)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def set_lr(self, step, schedule):
        for k, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = schedule(step, self.lrs[k])

    def current_lr(self):
        return self.optimizers["generator"].param_groups[0]["lr"]

    def parameters(self):
        return [p for m in self.modules.values() for p in m.parameters()]

    def state_dict(self):
        return {"modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, state, batch=None):
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])


class _DiscriminatorStep(AdversarialStep):
    """A discriminator trained alone against fixed real and fake samplers."""

    def __init__(self, discriminator, sample_real, sample_fake, batch_size, lr):
        self.d, self.real, self.fake, self.n = discriminator, sample_real, sample_fake, batch_size
        self.lrs = {"discriminator": lr}
        self.optimizers = {"discriminator": torch.optim.Adam(discriminator.parameters(), lr=lr)}
        self.modules = {"discriminator": discriminator}

    def __call__(self, _batch, step):
        opt = self.optimizers["discriminator"]
        loss = discriminator_loss(self.d(self.real(self.n)), self.d(self.fake(self.n)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss_d": loss.detach()}

    def current_lr(self):
        return self.optimizers["discriminator"].param_groups[0]["lr"]


def fit_discriminator(
    discriminator: torch.nn.Module,
    sample_real: Callable[[int], torch.Tensor],
    sample_fake: Callable[[int], torch.Tensor],
    *,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> FitResult:
    """Train ``discriminator`` (logits, ``(n, ...) -> (n,)``) against a fixed generator.

    Each step draws ``batch_size`` fresh points from ``sample_real`` (p_data) and from
    ``sample_fake`` (p_g) and takes an Adam step on :func:`discriminator_loss`, with the
    learning rate decayed by a cosine to 1% of ``lr``. The minimiser over all functions is
    D*(x) = p_data(x) / (p_data(x) + p_g(x)), with loss log 4 - 2 JSD(p_data || p_g).
    Runs on :class:`inference.loop.Trainer` (seeded, NaN-guarded);
    ``history["loss_d"]`` holds the loss per step.
    """
    step = _DiscriminatorStep(discriminator, sample_real, sample_fake, batch_size, lr)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    trainer = Trainer(step, lambda t: None, total_steps=steps, seed=seed, schedule=Schedule(steps),
                      settings=settings, callbacks=[cb.NaNGuard(), cb.Progress("discriminator", progress)])
    return trainer.run()


# ----- the theory on a quadrature grid ---------------------------------------------------
def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)) (1/2 where both vanish)."""
    total = p_data + p_g
    return torch.where(total > 0, p_data / total.where(total > 0, torch.ones_like(total)), torch.full_like(total, 0.5))


def value_function(d: torch.Tensor, p_data: torch.Tensor, p_g: torch.Tensor, weights) -> torch.Tensor:
    """V(D, G) = int p_data log D + p_g log(1 - D), by quadrature with ``weights``
    (cell volumes on a grid, or 1 on a discrete space); terms with zero density count 0."""
    log_d = torch.where(p_data > 0, torch.log(d.where(p_data > 0, torch.ones_like(d))), torch.zeros_like(d))
    log_1md = torch.where(p_g > 0, torch.log1p(-d.where(p_g > 0, torch.zeros_like(d))), torch.zeros_like(d))
    return ((p_data * log_d + p_g * log_1md) * weights).sum()


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, weights) -> torch.Tensor:
    """JSD(p || q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, in nats, by quadrature."""
    m = (p + q) / 2

    def kl(a):
        ratio = torch.where(a > 0, a / m.where(a > 0, torch.ones_like(m)), torch.ones_like(a))
        return (a * torch.log(ratio) * weights).sum()

    return (kl(p) + kl(q)) / 2
