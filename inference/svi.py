"""The one variational-inference engine: ``fit(model, data, guide=None, **settings)``.

``model`` is a :class:`zoo.ZooModel` or **any Pyro model callable** (a function, a bound
method, a ``PyroModule``), ``guide`` a callable, an AutoGuide instance or an AutoGuide's
name (:data:`GUIDES`). Each step is one :class:`SVIStep`: Pyro's ``elbo(model, guide)``
loss module evaluated on the step's batch and a ``torch.optim.Adam`` step on every
parameter the program touches (module parameters and ``pyro.param`` sites of the global
store, found as ``pyro.infer.SVI`` finds them), driven by :class:`inference.loop.Trainer`.

* A plain callable gets the full data every step, exactly as ``pyro.infer.SVI`` would; a
  ``pyro.plate(name, N, subsample_size=B)`` in it subsamples, with the engine fixing each
  step's indices from (seed, step) (conditioning the plate's index site), so runs are
  deterministic and resumable.
* A :class:`zoo.ZooModel` is given minibatches ``model(x[idx], num_data=N)``; its data
  plate (found by structure: the plate of the data's size) gets the true row indices
  ``idx``, so per-row guide parameters and per-row tensors stay with their rows. A full
  batch is never permuted.

The fast path (``compile="auto"`` for a ZooModel that declares ``static_structure`` with
its own guide) replays the objective as a traced graph (:mod:`inference.traced`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import pyro
import pyro.infer.autoguide as autoguide
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from inference import callbacks as cb
from inference import distributed as ddp
from inference.checkpoint import CHECKPOINT, METRICS, Checkpointer, MetricLog
from inference.loop import LR_SCHEDULES, EpochData, FitResult, Minibatches, Schedule, Trainer, epoch_permutation
from inference.objectives import Traced, make_objective
from zoo.base import ZooModel
from zoo.data import DataError

__all__ = ["COMPILE_MODES", "DEFAULTS", "GUIDES", "SVIStep", "as_tensor", "build_trainer", "fit"]

#: values of ``fit(compile=...)``
COMPILE_MODES = ("auto", "jit", "none")

#: AutoGuides by name (``fit(model, data, guide="auto_normal")``)
GUIDES = {
    "auto_normal": autoguide.AutoNormal,
    "auto_delta": autoguide.AutoDelta,
    "auto_diagonal_normal": autoguide.AutoDiagonalNormal,
    "auto_mvn": autoguide.AutoMultivariateNormal,
    "auto_multivariate_normal": autoguide.AutoMultivariateNormal,
    "auto_lowrank_mvn": autoguide.AutoLowRankMultivariateNormal,
    "auto_laplace": autoguide.AutoLaplaceApproximation,
}

#: Settings used where neither the caller nor the model's ``fit_defaults`` give one.
#: Without steps or epochs a run takes ``epochs`` passes and at least ``min_steps`` steps.
DEFAULTS = dict(
    objective="elbo",
    steps=None,
    epochs=20,
    min_steps=2000,
    batch_size=128,
    optimizer="adam",
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    lr_schedule="cosine",
    final_lr_fraction=0.01,
    num_particles=1,
    clip_norm=None,
    weight_decay=0.0,
    fused=False,
    compile="auto",
)

#: the optimisers ``fit`` offers: torch's, with their own settings (``betas`` are Adam's)
OPTIMIZERS = ("adam", "adagrad")

#: every setting ``fit`` takes besides ``DEFAULTS`` (and their defaults)
RUN_OPTIONS = dict(
    seed=0, device="cpu", val_data=None, early_stopping=None, checkpoint=None, metric_log=None,
    run_dir=None, resume=True, checkpoint_every=None, progress=True, validate=False,
    distributed=None, max_plate_nesting=None, callbacks=(), sync_every=None,
)


def as_tensor(data) -> torch.Tensor:
    """The data tensor of a :class:`zoo.Dataset` or a tensor."""
    return data.x if hasattr(data, "x") and not isinstance(data, torch.Tensor) else data


def resolve_settings(model, *, defaults: dict | None = None, **given) -> dict:
    """Merge the caller's settings over the model's ``fit_defaults`` over ``defaults``
    (:data:`DEFAULTS` unless given). Steps and epochs count as one setting: giving either
    replaces both defaults."""
    settings = dict(DEFAULTS if defaults is None else defaults)
    model_defaults = dict(getattr(model, "fit_defaults", {}) if isinstance(model, ZooModel) or defaults else {})
    if given.get("steps") is not None or given.get("epochs") is not None:
        model_defaults.pop("steps", None)
        model_defaults.pop("epochs", None)
        settings["epochs"] = None
        settings["min_steps"] = None
    if model_defaults.get("steps") is not None or model_defaults.get("epochs") is not None:
        settings["epochs"] = None
        settings["min_steps"] = None
    settings.update(model_defaults)
    settings.update({k: v for k, v in given.items() if v is not None})
    if settings.get("steps") is not None and settings.get("epochs") is not None:
        raise ValueError("give steps or epochs, not both")
    return settings


# ----- checks of settings, up front ------------------------------------------------------
def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_settings(s: dict, *, lr_may_be_zero: bool = False) -> dict:
    """Refuse invalid settings with a one-line ``ValueError`` before any work."""
    s["batch_size"] = _positive_int("batch_size", s["batch_size"])
    s["steps"] = _positive_int("steps", s.get("steps"), allow_none=True)
    s["epochs"] = _positive_int("epochs", s.get("epochs"), allow_none=True)
    if not (lr_may_be_zero and s["lr"] == 0):  # a frozen player of the adversarial game
        s["lr"] = _positive_float("lr", s["lr"])
    s["num_particles"] = _positive_int("num_particles", s["num_particles"])
    s["clip_norm"] = _positive_float("clip_norm", s.get("clip_norm"), allow_none=True)
    wd = s.get("weight_decay", 0.0)
    if isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not math.isfinite(wd) or wd < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {wd!r}")
    s["weight_decay"] = float(wd)
    if s.get("optimizer", "adam") not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.get('optimizer')!r}")
    if not isinstance(s.get("fused", False), bool):
        raise ValueError(f"fused must be True or False, got {s['fused']!r}")
    betas = s.get("betas", (0.9, 0.999))
    try:
        betas = [float(b) for b in betas]
    except (TypeError, ValueError):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}") from None
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {s.get('betas')!r}")
    s["betas"] = betas
    if not isinstance(s.get("eps", 1e-8), (int, float)) or not float(s.get("eps", 1e-8)) > 0:
        raise ValueError(f"eps must be a positive number (Adam's), got {s.get('eps')!r}")
    if s["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {s['lr_schedule']!r}; choose from {', '.join(LR_SCHEDULES)}")
    if not 0 <= float(s["final_lr_fraction"]) <= 1:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {s['final_lr_fraction']!r}")
    if s["compile"] in (None, False):  # a model's fit_defaults may opt out so
        s["compile"] = "none"
    if s["compile"] not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {s['compile']!r}; choose from {', '.join(COMPILE_MODES)}")
    return s


# ----- data -------------------------------------------------------------------------------
@dataclass
class Batch:
    """What one step evaluates: ``loss(*args, **kwargs)`` with the sites in ``condition``
    (a plate's index site -> the step's row indices) fixed."""

    args: tuple
    kwargs: dict
    condition: dict = field(default_factory=dict)


class RowBatches:
    """Minibatches of a ZooModel: ``(x[idx],)``, ``num_data=N``, the data plate fixed to idx."""

    def __init__(self, rows: Minibatches, plate: str | None):
        self.rows, self.plate = rows, plate
        self.per_epoch, self.num_data = rows.per_epoch, rows.num_data

    def __call__(self, step: int) -> Batch:
        idx = self.rows.indices(step)
        x = torch.index_select(self.rows.epoch_data(step), 0, idx)  # x[idx], without indexing's Python
        return Batch((x,), {"num_data": self.num_data}, {self.plate: idx} if self.plate else {})


class ProgramBatches:
    """The full data of a plain program every step; each subsampling plate's indices of
    the step drawn from (seed, plate, step) in epochs of permutations."""

    def __init__(self, args, kwargs, plates: dict, seed: int, rank=0, world=1, source=None):
        self.args, self.kwargs, self.plates, self.seed = args, kwargs, plates, seed
        self.rank, self.world, self.source = rank, world, source
        for name, (size, b) in plates.items():
            if b % world:
                raise ValueError(f"the subsample size {b} of plate {name!r} is not divisible by "
                                 f"the {world} processes of this data-parallel run")
        self.per_epoch = max([size // b for size, b in plates.values()], default=1)
        self.num_data = None
        self._perms = {}
        self._epoch, self._args = None, args

    def _indices(self, i, name, size, b, step):
        per_epoch = max(size // b, 1)
        epoch, j = divmod(step, per_epoch)
        key = (name, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != name}
            self._perms[key] = epoch_permutation(epoch, size, self.seed + 7919 * i)
        local = b // self.world
        start = j * b + self.rank * local
        return self._perms[key][start:start + local]

    def __call__(self, step: int) -> Batch:
        args = self.args
        if self.source is not None:  # a data set drawn afresh each epoch: its first argument
            epoch = step // self.per_epoch
            if epoch != self._epoch:
                self._epoch = epoch
                self._args = (self.source.for_epoch(epoch).to(self.args[0].device),) + tuple(self.args[1:])
            args = self._args
        condition = {name: self._indices(i, name, size, b, step)
                     for i, (name, (size, b)) in enumerate(sorted(self.plates.items()))}
        device = next((a.device for a in args if torch.is_tensor(a)), None)
        if device is not None:
            condition = {k: v.to(device) for k, v in condition.items()}
        return Batch(args, self.kwargs, condition)


def _program_data(data, device):
    """(args, kwargs, for_epoch source) of a plain program's data."""
    source = data if isinstance(data, EpochData) and not isinstance(data, torch.Tensor) else None
    if isinstance(data, dict):
        kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
        return (), kwargs, None
    if data is None:
        return (), {}, None
    x = as_tensor(data)
    if not torch.is_tensor(x):  # any other object (a list, say) is the first argument, as is
        return (x,), {}, None
    return (x.to(device),), {}, source


# ----- structure ----------------------------------------------------------------------------
def probe(fn, *args, guide=None, **kwargs):
    """A trace of the model ``fn`` run once with no effect outside: random numbers
    restored, new ``pyro.param`` sites discarded, no handler of the caller sees it. A
    model whose prior cannot be sampled (an improper prior) is run on a draw of ``guide``."""
    store = pyro.get_param_store()
    with torch.random.fork_rng(devices=_cuda_devices(args, kwargs)), store.scope(state=store.get_state()), \
            poutine.block(), torch.no_grad():
        try:
            return poutine.trace(fn).get_trace(*args, **kwargs)
        except NotImplementedError:
            if guide is None or isinstance(guide, str):
                raise
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            return poutine.trace(poutine.replay(fn, trace=guide_trace)).get_trace(*args, **kwargs)


def _cuda_devices(args, kwargs):
    return sorted({t.device.index or 0 for t in list(args) + list(kwargs.values())
                   if torch.is_tensor(t) and t.device.type == "cuda"})


def latent_sites(trace) -> list[str]:
    return [name for name, s in trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
            and not s["infer"].get("is_auxiliary")]


def subsample_plates(trace) -> dict:
    """{plate name: (size, subsample size)} of the plates of a trace that subsample."""
    out = {}
    for name, s in trace.nodes.items():
        if s["type"] == "sample" and site_is_subsample(s):
            size, b = s["fn"].size, len(s["value"])
            if b < size:
                out[name] = (int(size), int(b))
    return out


def check_objective(trace, objective: str) -> None:
    """An objective must fit the model's latents: enumerated sites need ``enum``."""
    enumerated = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["infer"].get("enumerate")]
    if enumerated and objective.removeprefix("jit_") != "enum":
        raise ValueError(
            f"the model marks {enumerated} for enumeration (infer={{'enumerate': ...}}), which objective "
            f"{objective!r} would sample instead of summing out: use objective='enum'"
        )


def _zoo_data_plate(trace, num_data: int) -> str | None:
    plates = [n for n, s in trace.nodes.items()
              if s["type"] == "sample" and site_is_subsample(s) and s["fn"].size == num_data]
    if len(plates) > 1:
        from inference.objectives import data_plate_frame

        return data_plate_frame(trace)
    return plates[0] if plates else None


class _FixIndices(Messenger):
    """Sets the index sites of plates (``data``: plate name -> indices): the plate then
    subsamples those rows, scaled by size / len(indices), as if it had drawn them."""

    def __init__(self, data: dict):
        super().__init__()
        self.data = data

    def _pyro_sample(self, msg):
        if msg["name"] in self.data and site_is_subsample(msg):
            msg["value"] = self.data[msg["name"]]


# ----- the step -----------------------------------------------------------------------------
class SVIStep:
    """One SVI step: ``loss = elbo(model, guide)(*batch)``, backward, Adam (see module docstring).

    Parameters are found as ``pyro.infer.SVI`` finds them (the ``param`` sites the loss
    touches, module parameters beside them), on the first step and, for plain programs,
    every step; the optimiser is built on the first step. Before every optimiser step
    the gradients are checked (a non-finite one skips the update and stops the run with
    the parameters intact).
    """

    def __init__(self, model, guide, objective, *, modules: dict, lr: float, betas=(0.9, 0.999),
                 clip_norm=None, scale: float = 1.0, capture: bool = True, validate_first: bool = False,
                 weight_decay: float = 0.0, fused: bool = False, optimizer: str = "adam", eps: float = 1e-8):
        self.objective = objective
        self._condition: dict = {}
        if capture:  # plain path: the step's plate indices apply to model and guide
            model = _FixIndices(self._condition)(model)
            guide = _FixIndices(self._condition)(guide)
        self.loss = objective(model, guide)  # Pyro's ELBOModule
        self._model, self._guide = model, guide
        self.modules = modules
        self.lr, self.betas, self.eps, self.clip = lr, tuple(betas), float(eps), clip_norm
        self.weight_decay = float(weight_decay)
        # torch's multi-tensor Adam: the per-parameter Adams of pyro.optim, bit for bit, faster on
        # CPU (where torch's default is one tensor at a time); fused: torch's one-kernel Adam
        self.impl = dict(fused=True) if fused else dict(foreach=True)
        self.kind = optimizer  # "adam" or "adagrad" (Adagrad: no betas, torch's accumulator from 0)
        self.scale = scale
        self.capture = capture
        self.validate_first = validate_first
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self.optimizer = None
        self.optimizers = {}
        self._lr_now = lr
        self._add([(p, None) for p in self._module_params()])  # known now; pyro.param sites on step 0
        self._build()

    def _module_params(self):
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def _name_of(self, p, store_names, module_names):
        if id(p) in module_names:
            return module_names[id(p)]
        if p in store_names:
            return "store:" + store_names[p]
        return f"param:{len(self.names)}"

    def _add(self, found):
        """Add newly found parameters (tensors; ``(tensor, None)`` pairs) to the optimiser."""
        known = {id(p) for p in self.params}
        new = []
        for p, _ in found:
            if id(p) not in known and p.requires_grad:
                known.add(id(p))
                new.append(p)
        if not new:
            return
        module_names = {id(p): f"{k}:{n}" for k, m in self.modules.items() for n, p in m.named_parameters()}
        store_names = pyro.get_param_store()._param_to_name
        for p in new:
            self.names.append(self._name_of(p, store_names, module_names))
            self.params.append(p)
        if self.optimizer is not None:
            self.optimizer.add_param_group({"params": new, "lr": self._lr_now, "weight_decay": self.weight_decay,
                                            **({"betas": self.betas, "eps": self.eps} if self.kind == "adam" else {})})

    def _build(self):
        if self.optimizer is None and self.params:
            if self.kind == "adam":
                self.optimizer = torch.optim.Adam(self.params, lr=self._lr_now, betas=self.betas, eps=self.eps,
                                                  weight_decay=self.weight_decay, **self.impl)
            else:
                self.optimizer = torch.optim.Adagrad(self.params, lr=self._lr_now, weight_decay=self.weight_decay, **self.impl)
            self.optimizers = {self.kind: self.optimizer}

    def _captured(self, trace):
        out = []
        for site in trace.nodes.values():
            value = site["value"]
            u = getattr(value, "unconstrained", None)
            p = u() if callable(u) else value
            if torch.is_tensor(p) and p.requires_grad and p.is_leaf:
                out.append((p, site["name"]))
        return out

    def evaluate(self, batch: Batch):
        """The loss of ``batch`` (parameters found on the way)."""
        self._condition.clear()
        self._condition.update(batch.condition)
        if not self.capture:  # the ELBOModule's forward, without nn.Module's call
            return self.objective.differentiable_loss(self._model, self._guide, *batch.args, **batch.kwargs)
        with poutine.trace(param_only=True) as capture:
            if self.validate_first:  # Pyro's model/guide checks once, even with validation off
                self.validate_first = False
                with pyro.validation_enabled(True):
                    loss = self.loss(*batch.args, **batch.kwargs)
            else:
                loss = self.loss(*batch.args, **batch.kwargs)
        self._add([(p, None) for p in self._module_params()] + self._captured(capture.trace))
        self._build()
        return loss

    def __call__(self, batch: Batch, step: int) -> dict:
        loss = self.evaluate(batch)
        if self.optimizer is None:
            raise ValueError("the model and guide have no trainable parameters (no pyro.param site, "
                             "no module parameter)")
        for p in self.params:  # the optimiser's zero_grad(set_to_none=True), without its bookkeeping
            p.grad = None
        loss.backward()
        if self.clip:
            ddp.average_gradients(self.optimizer)  # clip the averaged gradient (no-op on one process)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        norm = cb.gradient_norm([p.grad for p in self.params])
        if norm.device.type == "cpu":  # no device to wait for: check before the update, read now
            if not math.isfinite(norm.item()):
                return {"loss": loss.item() / self.scale, "_grad_finite": 0.0}  # no update: state stays good
            self.optimizer.step()
            return {"loss": loss.item() / self.scale, "_grad_finite": 1.0}
        finite = norm.isfinite()  # checked at the next read-back (and the parameters before any checkpoint)
        self.optimizer.step()
        return {"loss": loss.detach() / self.scale, "_grad_finite": finite}

    def set_lr(self, step: int, schedule: Schedule) -> None:
        self._lr_now = schedule(step, self.lr)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr_now

    def current_lr(self) -> float:
        return self._lr_now

    def parameters(self):
        return list(self.params) or self._module_params()

    def state_dict(self) -> dict:
        store = pyro.get_param_store()._param_to_name
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "params": {store[p]: p.detach().clone() for p in self.params if p in store},
            "param_names": list(self.names),
            "optimizers": {self.kind: self.optimizer.state_dict()} if self.optimizer is not None else {},
        }

    def load_state_dict(self, state: dict, batch: Batch) -> None:
        names = list(state["param_names"])
        if self.capture and set(names) - set(self.names):  # create them (lazy guides): one loss, no effect
            with torch.random.fork_rng(devices=_cuda_devices(batch.args, batch.kwargs)):
                self.evaluate(batch)
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, value in state["params"].items():
                if name not in store:
                    raise KeyError(f"parameter {name!r} of the checkpoint is not in the program")
                store._params[name].copy_(value)
        by_name = dict(zip(self.names, self.params))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"parameters {missing[:3]} of the checkpoint are not in the program")
        self.params, self.names = [by_name[n] for n in names], names
        self.optimizer = None
        self._build()
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizers"][self.kind])
            for group in self.optimizer.param_groups:  # this run's implementation, not the file's
                group.update(foreach=self.impl.get("foreach"), fused=self.impl.get("fused"))


# ----- fit ------------------------------------------------------------------------------------
def fit(model, data=None, guide=None, **settings) -> FitResult:
    """Train ``model`` on ``data`` by stochastic variational inference.

    :param model: a :class:`zoo.ZooModel`, or any Pyro model callable (function, bound
        method, ``PyroModule``).
    :param data: a tensor (the first positional argument of model and guide), a
        :class:`zoo.Dataset` (its tensor; with ``for_epoch(e)``, epoch e trains on
        ``data.for_epoch(e)``), or a dict (keyword arguments; non-tensors pass through).
    :param guide: a callable, an AutoGuide instance, or an AutoGuide's name from
        :data:`GUIDES` (``"auto_normal"``, ``"auto_delta"``, ``"auto_mvn"``, ...). Default:
        a ZooModel's own guide; for a plain program without latent sites, the empty guide.

    Settings (unset ones come from a ZooModel's ``fit_defaults``, then :data:`DEFAULTS`):

    * ``objective``: a name from :data:`inference.objectives.OBJECTIVES` (``elbo``,
      ``meanfield``, ``enum``, ``iwae``, ``renyi``, ``jit_*``).
    * ``steps`` or ``epochs`` (not both); with neither, 20 epochs and at least
      ``min_steps`` (2000) steps. ``batch_size`` (a ZooModel's minibatch).
    * ``optimizer``: ``"adam"`` (default) or ``"adagrad"`` (torch's, as Germain et al. train MADE);
      ``lr``, ``betas`` and ``eps`` (Adam's); ``lr_schedule`` ``"cosine"`` (default, decays to
      ``final_lr_fraction * lr``), ``"constant"`` or ``"staged"`` (Burda et al. 2016's: 8 stages of
      3^i parts of the run at ``lr * 10**(-i/7)``, see :func:`inference.loop.lr_at`); ``clip_norm``; ``num_particles``;
      ``weight_decay`` (Adam's L2 penalty on every parameter, as ``torch.optim.Adam``; default 0).
      The loss is the data set's negative ELBO, not a per-example mean: a weight decay ``w``
      tuned on a mean loss over N examples is ``w * N`` here (a Gaussian prior of precision
      ``w * N`` on the parameters). ``fused``: torch's fused Adam kernel (``torch.optim.Adam(
      fused=True)``, CPU or CUDA; several times faster on millions of parameters, equal to the
      default multi-tensor Adam within float rounding, not bit for bit; default False).
    * ``seed`` (same seed, same numbers), ``device`` (``"cpu"``, ``"cuda"``).
    * ``checkpoint``: a file (or :class:`~inference.checkpoint.Checkpointer`) to
      checkpoint into every ``checkpoint_every`` steps and resume from (``resume=True``);
      ``metric_log``: a JSON-lines file (or :class:`~inference.checkpoint.MetricLog`);
      ``run_dir``: shorthand for both, ``run_dir/checkpoint.pt`` and ``run_dir/metrics.jsonl``.
    * ``val_data`` (the validation loss after every epoch) and ``early_stopping=P``.
    * ``validate``: Pyro's argument checks throughout (they run on the first step anyway).
    * ``compile``: ``"auto"`` (the traced fast path for a ZooModel declaring
      ``static_structure`` with its own guide), ``"jit"``, ``"none"``.
    * ``distributed``: data-parallel under torchrun (None: when launched so).
    * ``max_plate_nesting``: for a plain program (default: found by Pyro).
    * ``callbacks``: extra :class:`inference.callbacks.Callback` objects.

    With ``lr_schedule="constant"`` a plain program follows ``pyro.infer.SVI`` with
    ``pyro.optim.Adam`` of the same settings, bit for bit.

    :returns: a :class:`inference.loop.FitResult`.
    :raises zoo.DataError: data of the wrong shape or type for a ZooModel.
    :raises ValueError: invalid settings, or a program that cannot be trained as given.
    :raises inference.DivergenceError: the loss, a gradient or a parameter became NaN or
        infinite, or the loss blew up (the checkpoint keeps the last good state).
    """
    trainer, validate = build_trainer(model, data, guide, **settings)
    with pyro.validation_enabled(validate):
        return trainer.run()


def build_trainer(model, data=None, guide=None, **given):
    """(the :class:`Trainer` that :func:`fit` runs, ``validate``): for timing exactly what
    ``fit`` does (the benchmarks)."""
    from inference.adversarial import Adversarial

    if isinstance(model, Adversarial):
        raise ValueError(
            f"{type(model).__name__} is trained by inference.fit_adversarial, not by SVI "
            "(it defines no likelihood to bound)"
        )
    unknown = set(given) - set(DEFAULTS) - set(RUN_OPTIONS)
    if unknown:
        raise TypeError(f"fit() got unknown settings {sorted(unknown)}")
    run = {**RUN_OPTIONS, **{k: given.pop(k) for k in list(given) if k in RUN_OPTIONS}}
    settings = check_settings(resolve_settings(model, **given))
    if run["early_stopping"] is not None:
        run["early_stopping"] = _positive_int("early_stopping", run["early_stopping"])
        if run["val_data"] is None:
            raise ValueError("early_stopping needs val_data (the validation loss it watches)")
    seed = run["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    device = ddp.local_device(run["device"])
    ctx = ddp.context(device, required=run["distributed"])
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    build = _zoo_program if isinstance(model, ZooModel) else _plain_program
    step, batches, extra, val_fn = build(model, data, guide, settings, run, device, ctx, rank, world)
    total = settings["steps"] or settings["epochs"] * batches.per_epoch
    if settings.get("min_steps") and not settings.get("steps"):
        total = max(total, int(settings["min_steps"]))
    settings.update(steps=total, epochs=None, seed=seed, early_stopping=run["early_stopping"], **extra)
    settings["betas"] = list(settings["betas"])
    desc = f"{getattr(model, 'registered_name', getattr(model, '__name__', type(model).__name__))} [{settings['objective']}]"
    callbacks, checkpointer = standard_callbacks(run, desc)
    trainer = Trainer(step, batches, total_steps=total, seed=seed,
                      schedule=Schedule(total, settings["lr_schedule"], settings["final_lr_fraction"]),
                      settings=settings, callbacks=callbacks, val_fn=val_fn, sync_every=run["sync_every"],
                      context=ctx, device=device)
    trainer.run_dir = checkpointer.path.parent if checkpointer is not None else None
    return trainer, bool(run["validate"])


def standard_callbacks(run: dict, desc: str):
    """(callbacks, checkpointer) of a run's settings: the NaN guard, the checkpoint and metric
    log (from ``checkpoint``/``metric_log``/``run_dir``), early stopping, progress, extras."""
    callbacks = [cb.NaNGuard()]
    checkpointer, log = _outputs(run)
    if checkpointer is not None:
        callbacks.append(cb.Checkpoint(checkpointer))
    if log is not None:
        callbacks.append(cb.MetricLogger(log))
    if run.get("early_stopping"):
        callbacks.append(cb.EarlyStopping(run["early_stopping"]))
    callbacks += [cb.Progress(desc, run.get("progress", True)), *run.get("callbacks", ())]
    return callbacks, checkpointer


def _outputs(run):
    checkpointer, log = run.get("checkpoint"), run.get("metric_log")
    if run.get("run_dir") is not None:
        from pathlib import Path

        folder = Path(run["run_dir"])
        checkpointer = checkpointer or folder / CHECKPOINT
        log = log or folder / METRICS
    if checkpointer is not None and not isinstance(checkpointer, Checkpointer):
        checkpointer = Checkpointer(checkpointer)
    if checkpointer is not None:
        checkpointer.every = run.get("checkpoint_every") or checkpointer.every
        checkpointer.resume = checkpointer.resume and run.get("resume", True)
    if log is not None and not isinstance(log, MetricLog):
        log = MetricLog(log)
    if log is not None and not ddp.is_main_process():
        log = None
    return checkpointer, log


def _objective(settings, max_plate_nesting, traced=False):
    elbo = make_objective(settings["objective"], num_particles=settings["num_particles"],
                          max_plate_nesting=max_plate_nesting)
    return Traced(elbo) if traced and not isinstance(elbo, Traced) else elbo


def _zoo_program(model, data, guide, settings, run, device, ctx, rank, world):
    """The step and minibatches of a ZooModel: rows ``x[idx]`` with ``num_data = N``."""
    if isinstance(data, dict):
        raise DataError(f"{type(model).__name__} takes a tensor or a zoo.Dataset, not a dict")
    x = as_tensor(data)
    model.check_data(x)
    model.to(device)
    source = data if isinstance(data, EpochData) and not isinstance(data, torch.Tensor) else x.to(device)
    guide = _make_guide(guide, model.model, model.guide)
    if isinstance(guide, torch.nn.Module):
        guide.to(device)
    num_data = x.shape[0]
    rows = Minibatches(source, settings["batch_size"], run["seed"], rank, world)
    if not isinstance(source, torch.Tensor):
        rows.to(device)
    settings["batch_size"] = rows.batch_size
    structure = probe(model.model, x[: rows.batch_size].to(device), num_data=num_data, guide=guide)
    check_objective(structure, settings["objective"])
    plate = _zoo_data_plate(structure, num_data)
    if plate is None and rows.batch_size < num_data:
        raise ValueError(f"{type(model).__name__}.model has no plate of the data's size {num_data} to "
                         "scale a minibatch by: put the data points in zoo.data_plate(x, num_data)")
    own_guide = getattr(guide, "__self__", None) is model
    traced = _use_jit(settings["compile"], model, own_guide, run["validate"]) or settings["objective"].startswith("jit_")
    elbo = _objective(settings, model.max_plate_nesting, traced)
    modules = {"model": model}
    if isinstance(guide, torch.nn.Module):
        modules["guide"] = guide
    step = SVIStep(model.model, guide, elbo, modules=modules, lr=settings["lr"], betas=settings["betas"],
                   clip_norm=settings["clip_norm"], scale=num_data, capture=not traced,
                   weight_decay=settings["weight_decay"], fused=settings["fused"], optimizer=settings["optimizer"],
                   eps=settings["eps"],
                   validate_first=not traced and not run["validate"])
    if traced:
        if not step.params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        plate = None  # the traced graph ignores the indices (declared static structure)
    batches = RowBatches(rows, plate)
    extra = dict(num_data=num_data, model=type(model).__name__, model_options=dict(model.options),
                 compile="jit" if traced or isinstance(elbo, Traced) else "none")
    val_fn = None
    if run["val_data"] is not None:
        xv = as_tensor(run["val_data"])
        model.check_data(xv)
        val_fn = _val_fn(model.model, guide, settings, model.max_plate_nesting, xv, ctx, device, per_row=True)
    return step, batches, extra, val_fn


def _val_fn(model_fn, guide, settings, max_plate_nesting, xv, ctx, device, per_row):
    num_val = len(xv)
    if ctx:  # each process scores its share of the validation data
        xv = xv.tensor_split(ctx.world_size)[ctx.rank]
    xv = xv.to(device)
    val_elbo = make_objective(settings["objective"].removeprefix("jit_"), num_particles=settings["num_particles"],
                              max_plate_nesting=max_plate_nesting)

    def val_fn():
        # ELBO.loss: no graph (TraceEnum_ELBO refuses differentiable_loss under no_grad)
        with torch.no_grad():
            total = sum(float(val_elbo.loss(model_fn, guide, chunk, num_data=len(chunk)))
                        for chunk in xv.split(1000))
        total = torch.as_tensor(total, dtype=torch.float64).reshape(1)
        if ctx:
            total = ddp.all_mean(total) * ctx.world_size
        return float(total) / num_val

    return val_fn


def _use_jit(mode: str, model, own_guide: bool, validate: bool = False) -> bool:
    """Whether ``compile=mode`` traces the objective (see :func:`fit`)."""
    if mode == "jit":
        return True
    if mode == "none" or validate:  # checks run once when tracing: debug on the plain path
        return False
    return own_guide and bool(getattr(model, "static_structure", False))


def _make_guide(guide, model_fn, default=None):
    if guide is None:
        return default
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; choose from {', '.join(GUIDES)} or pass a callable")
        return GUIDES[guide](model_fn)
    if not callable(guide):
        raise TypeError(f"guide must be a callable, an AutoGuide or a name, got {type(guide).__name__}")
    return guide


def _empty_guide(*args, **kwargs):
    """The empty guide: right for a program without latent sites."""


def _owner(fn):
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _plain_program(model, data, guide, settings, run, device, ctx, rank, world):
    """The step of a plain Pyro program: the full data each step, as ``pyro.infer.SVI``."""
    if not callable(model):
        raise TypeError(f"model must be a ZooModel or a Pyro model callable, got {type(model).__name__}")
    args, kwargs, source = _program_data(data, device)
    for fn in (model, guide):
        if _owner(fn) is not None:
            _owner(fn).to(device)
    structure = probe(model, *args, guide=guide, **kwargs)
    check_objective(structure, settings["objective"])
    latents = latent_sites(structure)
    if guide is None:
        if latents:
            raise ValueError(
                f"the model has latent sites {latents[:5]} and no guide: pass guide=... (a function, "
                "an AutoGuide, or a name such as 'auto_normal')"
            )
        guide = _empty_guide
    guide = _make_guide(guide, model)
    modules = {}
    for key, fn in (("model", model), ("guide", guide)):
        if _owner(fn) is not None and all(_owner(fn) is not m for m in modules.values()):
            modules[key] = _owner(fn)
            _owner(fn).to(device)
    plates = subsample_plates(structure)
    batches = ProgramBatches(args, kwargs, plates, run["seed"], rank, world, source)
    max_nesting = run["max_plate_nesting"]
    if max_nesting is None:
        max_nesting = max([-f.dim for s in structure.nodes.values() if s["type"] == "sample"
                           for f in s["cond_indep_stack"] if f.vectorized], default=0)
    traced = settings["objective"].startswith("jit_")
    elbo = _objective(settings, max_nesting, traced)
    step = SVIStep(model, guide, elbo, modules=modules, lr=settings["lr"], betas=settings["betas"],
                   clip_norm=settings["clip_norm"], scale=1.0, capture=True,
                   weight_decay=settings["weight_decay"], fused=settings["fused"], optimizer=settings["optimizer"],
                   eps=settings["eps"],
                   validate_first=not run["validate"])
    extra = dict(model=getattr(model, "__qualname__", type(model).__name__), plates=sorted(plates),
                 compile="jit" if traced else "none")
    val_fn = None
    if run["val_data"] is not None:
        vargs, vkwargs, _ = _program_data(run["val_data"], device)
        val_elbo = make_objective(settings["objective"].removeprefix("jit_"),
                                  num_particles=settings["num_particles"], max_plate_nesting=max_nesting)

        def val_fn():
            with torch.no_grad():
                return float(val_elbo.loss(model, guide, *vargs, **vkwargs))

    return step, batches, extra, val_fn
