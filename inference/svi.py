"""The one variational-inference engine: ``fit(model, data)`` for every likelihood model.

Each step evaluates the chosen objective's ``differentiable_loss`` (a Pyro ELBO) on a
minibatch, with the data plate scaled to the whole data set, and takes a plain
``torch.optim.Adam`` step on the model's (and guide's) parameters, in the style of
Pyro's ``examples/svi_torch.py``. Everything else (minibatches, schedule, checkpoints,
resumption, NaN guard, progress, early stopping, data parallelism under torchrun) is
:func:`inference.loop.train_loop`.

The fast path (``compile="jit"``, the default for the zoo's own models) replays the
objective as a graph traced once with :func:`torch.jit.trace` (:class:`Traced`), which
removes Pyro's per-step Python (traces, messengers, distribution objects) and gives the
same loss and gradients (tests/inference/test_fast_path.py checks every registered model).
"""
from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch

from inference import distributed as ddp
from inference.loop import FitResult, train_loop
from inference.objectives import Traced, make_objective

__all__ = ["COMPILE_MODES", "DEFAULTS", "as_tensor", "fit", "prepare"]

#: values of ``fit(compile=...)``
COMPILE_MODES = ("auto", "jit", "none")

#: Settings used where neither the caller nor the model's ``fit_defaults`` give one.
DEFAULTS = dict(
    objective="elbo",
    steps=None,
    epochs=20,
    batch_size=128,
    lr=1e-3,
    lr_schedule="cosine",
    final_lr_fraction=0.01,
    num_particles=1,
    clip_norm=None,
    compile="auto",
)


def as_tensor(data) -> torch.Tensor:
    """The data tensor of a :class:`zoo.Dataset` or a tensor."""
    return data.x if hasattr(data, "x") and not isinstance(data, torch.Tensor) else data


def resolve_settings(model, *, defaults: dict | None = None, **given) -> dict:
    """Merge the caller's settings over the model's ``fit_defaults`` over ``defaults``
    (:data:`DEFAULTS` unless given). Steps and epochs count as one setting: giving either
    replaces both defaults."""
    settings = dict(DEFAULTS if defaults is None else defaults)
    model_defaults = dict(getattr(model, "fit_defaults", {}))
    if given.get("steps") is not None or given.get("epochs") is not None:
        model_defaults.pop("steps", None)
        model_defaults.pop("epochs", None)
        settings["epochs"] = None
    if model_defaults.get("steps") is not None:
        settings["epochs"] = None
    settings.update(model_defaults)
    settings.update({k: v for k, v in given.items() if v is not None})
    if settings.get("steps") is not None and settings.get("epochs") is not None:
        raise ValueError("give steps or epochs, not both")
    return settings


def fit(
    model,
    data,
    *,
    objective: str | None = None,
    guide=None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: str | None = None,
    final_lr_fraction: float | None = None,
    num_particles: int | None = None,
    clip_norm: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir=None,
    val_data=None,
    early_stopping: int | None = None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    progress: bool = True,
    validate: bool = False,
    compile: str | None = None,
    distributed: bool | None = None,
) -> FitResult:
    """Train ``model`` (a :class:`zoo.ZooModel`) on ``data`` by stochastic variational inference.

    :param data: a tensor (``(N, data_dim)`` float 0/1, or ``(N,)`` int64) or a
        :class:`zoo.Dataset`.
    :param objective: a name from :data:`inference.objectives.OBJECTIVES`
        (``elbo``, ``meanfield``, ``enum``, ``iwae``, ``renyi``, ``jit_*``).
    :param guide: a guide to use instead of ``model.guide`` (e.g. an AutoGuide built on
        ``model.model``); its parameters are trained too.
    :param steps: optimisation steps; or ``epochs`` passes over the data (not both).
        Unset settings come from ``model.fit_defaults``, then :data:`DEFAULTS`.
    :param lr: Adam's initial learning rate; ``lr_schedule`` ``"cosine"`` (default) decays
        it to ``final_lr_fraction * lr`` at the last step, so the final iterate is not
        left at the noise level of a large step.
    :param num_particles: guide draws per step (vectorised); K of ``iwae``/``renyi``.
    :param seed: seeds parameter draws and minibatch order (same seed, same numbers).
    :param device: ``"cpu"`` or ``"cuda"``: model and data are moved there once.
    :param run_dir: a folder for the checkpoint and the metric log; if it holds a
        checkpoint of the same run, training resumes from it (``resume=True``).
    :param val_data: data for the validation loss (the objective per example) after every
        epoch; with ``early_stopping=P``, training stops after P epochs without
        improvement and the best parameters are restored.
    :param validate: Pyro's distribution argument checks (slow; for debugging).
    :param compile: ``"jit"`` replays the objective as a graph traced once per batch
        shape (:class:`inference.objectives.Traced`): the same loss and gradients without
        Pyro's per-step Python; valid for models of static structure (no Python control
        flow on values, no Python state that changes between steps). ``"none"``: plain
        Pyro. ``"auto"`` (default): ``"jit"`` for the zoo's own models with their own
        guide (each checked by tests/inference/test_fast_path.py), ``"none"`` for other
        models and guides (a model opts in or out with ``compile`` in ``fit_defaults``).
        An objective named ``jit_*`` is traced whatever this says.
    :param distributed: data-parallel training (:mod:`inference.distributed`): None
        (default) when launched by torchrun with several processes, True to require it,
        False never. ``batch_size`` is the global batch, split over the processes.
    :returns: a :class:`inference.loop.FitResult`.
    :raises zoo.DataError: data of the wrong shape or type, or non-binary for a Bernoulli
        likelihood. :raises inference.DivergenceError: the loss became NaN or infinite.
    """
    run = prepare(**locals())
    with pyro.validation_enabled(run.pop("validate")):
        return train_loop(**run)


def prepare(
    model,
    data,
    *,
    objective: str | None = None,
    guide=None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: str | None = None,
    final_lr_fraction: float | None = None,
    num_particles: int | None = None,
    clip_norm: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_dir=None,
    val_data=None,
    early_stopping: int | None = None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    progress: bool = True,
    validate: bool = False,
    compile: str | None = None,
    distributed: bool | None = None,
) -> dict:
    """What :func:`fit` runs: the keyword arguments of :func:`inference.loop.train_loop`.

    Takes :func:`fit`'s arguments; builds the objective (traced or not), the optimiser
    and the step function, moves model and data to the device, and returns
    ``train_loop``'s arguments plus ``validate``. ``fit`` is
    ``train_loop(**prepare(...))`` under ``pyro.validation_enabled(validate)``; the
    benchmarks call ``train_loop`` on it repeatedly to time exactly what ``fit`` does.
    """
    if getattr(model, "trainer", "svi") != "svi":
        raise ValueError(
            f"{type(model).__name__} is trained by inference.fit_{model.trainer}, not by SVI "
            "(it defines no likelihood to bound)"
        )
    settings = resolve_settings(
        model,
        objective=objective,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        final_lr_fraction=final_lr_fraction,
        num_particles=num_particles,
        clip_norm=clip_norm,
        compile=compile,
    )
    if settings["compile"] in (None, False):  # a model's fit_defaults may opt out so
        settings["compile"] = "none"
    if settings["compile"] not in COMPILE_MODES:
        raise ValueError(
            f"unknown compile mode {settings['compile']!r}; choose from {', '.join(COMPILE_MODES)}"
        )
    device = _device(device)
    ctx = ddp.context(device, required=distributed)
    x = as_tensor(data)
    model.check_data(x)
    x = x.to(device)
    model.to(device)
    if guide is None:
        guide = model.guide
    elif isinstance(guide, torch.nn.Module):
        guide.to(device)
    num_data = x.shape[0]
    batch_size = min(int(settings["batch_size"]), num_data)
    per_epoch = max(num_data // batch_size, 1)
    total = int(settings["steps"]) if settings["steps"] is not None else int(settings["epochs"]) * per_epoch
    if total < 1:
        raise ValueError(f"steps/epochs must give at least one step, got {total}")

    elbo = make_objective(
        settings["objective"],
        num_particles=settings["num_particles"],
        max_plate_nesting=model.max_plate_nesting,
    )
    traced = _use_jit(settings["compile"], model, guide, validate)
    if traced and not isinstance(elbo, Traced):
        elbo = Traced(elbo)
    modules = {"model": model}
    if isinstance(guide, torch.nn.Module):
        modules["guide"] = guide

    # lazily built guides (Pyro's AutoGuides) create their parameters on first call,
    # which must happen before the optimiser is built; it draws random numbers, so seed
    pyro.set_rng_seed(seed)
    if isinstance(guide, torch.nn.Module):
        with torch.no_grad(), poutine.block():
            guide(x[:batch_size], num_data=num_data)
    parameters = list(
        {id(p): p for m in modules.values() for p in m.parameters() if p.requires_grad}.values()
    )
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizer = torch.optim.Adam(parameters, lr=settings["lr"])
    clip = settings["clip_norm"]

    def step_fn(batch, step):
        loss = elbo.differentiable_loss(model.model, guide, batch, num_data=num_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            ddp.average_gradients(optimizer)  # clip the averaged gradient (no-op on one process)
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        return {"loss": loss.detach() / num_data}

    val_fn = None
    if val_data is not None:
        xv = as_tensor(val_data)
        model.check_data(xv)
        num_val = len(xv)
        if ctx:  # each process scores its share of the validation data
            xv = xv.tensor_split(ctx.world_size)[ctx.rank]
        xv = xv.to(device)
        val_elbo = make_objective(
            settings["objective"].removeprefix("jit_"),
            num_particles=settings["num_particles"],
            max_plate_nesting=model.max_plate_nesting,
        )

        def val_fn():
            # ELBO.loss: no graph (TraceEnum_ELBO refuses differentiable_loss under no_grad)
            with torch.no_grad():
                total_loss = sum(
                    float(val_elbo.loss(model.model, guide, chunk, num_data=len(chunk)))
                    for chunk in xv.split(1000)
                )
            total_loss = torch.as_tensor(total_loss, dtype=torch.float64).reshape(1)
            if ctx:
                total_loss = ddp.all_mean(total_loss) * ctx.world_size
            return float(total_loss) / num_val

    settings.update(
        steps=total,
        epochs=None,
        batch_size=batch_size,
        seed=seed,
        num_data=num_data,
        model=type(model).__name__,
        early_stopping=early_stopping,
        compile="jit" if traced or isinstance(elbo, Traced) else "none",
    )
    return dict(
        validate=validate,
        step_fn=step_fn,
        data=x,
        modules=modules,
        optimizers={"adam": optimizer},
        settings=settings,
        total_steps=total,
        batch_size=batch_size,
        seed=seed,
        lr=settings["lr"],
        lr_schedule=settings["lr_schedule"],
        final_lr_fraction=settings["final_lr_fraction"],
        val_fn=val_fn,
        early_stopping=early_stopping,
        run_dir=run_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=progress,
        desc=f"{getattr(model, 'registered_name', type(model).__name__)} [{settings['objective']}]",
        distributed=distributed,
    )


def _device(device) -> torch.device:
    """The device to train on (``cuda`` is this process's GPU under torchrun)."""
    return ddp.local_device(device)


def _use_jit(mode: str, model, guide, validate: bool = False) -> bool:
    """Whether ``compile=mode`` traces the objective (see :func:`fit`)."""
    if mode == "jit":
        return True
    if mode == "none" or validate:  # checks run once when tracing: debug on the plain path
        return False
    own_guide = getattr(guide, "__self__", None) is model
    return own_guide and type(model).__module__.split(".")[0] == "zoo"
