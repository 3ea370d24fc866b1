"""Any Pyro program, traced under a plate of posterior draws: the machinery behind the diagnostics.

The diagnostics (:mod:`inference.diagnostics`, :mod:`inference.mcmc`, :mod:`inference.compare`)
take a zoo model or a plain Pyro program and know nothing about its site or plate names:

* :class:`Program`: a model callable, its guide, and the arguments the data gives them
  (a tensor is the first positional argument, a :class:`zoo.Dataset` its ``.x``, a dict
  keyword arguments). A :class:`zoo.ZooModel` gives its ``.model`` / ``.guide``.
* :func:`structure`: one trace of the model, read structurally: latent sites (enumerated,
  per data point or global), observed sites (``is_observed``, any name, several), the data
  plate (the plate every observed site shares: the one that subsamples, else the one of
  the data's size, else the outermost) and the plate nesting.
* :func:`run_model`: the model with latent values set (draws, or a guide trace replayed),
  vectorised under a plate ``_draws`` left of the model's plates, and enumerated sites
  enumerated in parallel left of that (:class:`pyro.poutine.enum`, as ``TraceEnum_ELBO``).
* :func:`contract`: the log density of chosen sites with enumerated sites summed out, by
  Pyro's tensor message passing (:func:`pyro.ops.contract.contract_to_tensor`), reduced to
  the draws and (optionally) the data plate: ``(S,)`` or ``(S, N)``.
* :func:`map_draws`: run a per-draw computation vectorised, or, where the model cannot
  broadcast over a batch of draws (``PyroModule[nn.Linear]`` with ``PyroSample`` weights),
  one draw at a time with a progress bar; the vectorised result is checked against one
  draw run alone, so a model that broadcasts wrongly falls back too.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

__all__ = ["DRAWS", "Program", "Structure", "contract", "local_rng", "map_draws", "run_model", "structure"]

#: name of the plate over posterior draws (left of the model's own plates)
DRAWS = "_draws"


@dataclass
class Program:
    """A Pyro model, its guide (or None) and the arguments it is called with."""

    model: callable
    guide: callable | None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    zoo: object | None = None  # the ZooModel, when the program is one
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, model, data=None, guide=None) -> "Program":
        """From a :class:`zoo.ZooModel` (its ``.model``/``.guide``; data checked by it) or a callable."""
        from zoo.base import ZooModel

        if isinstance(model, ZooModel):
            x = data_tensor(data)
            if x is not None:
                model.check_data(x)
            device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
            args = () if x is None else (x.to(device),)
            return cls(model.model, model.guide if guide is None else guide, args, {}, model, device)
        if not callable(model):
            raise TypeError(f"expected a zoo model or a Pyro model callable, got {type(model).__name__}")
        args, kwargs = call_args(data)
        return cls(model, guide, args, kwargs)

    @property
    def name(self) -> str:
        if self.zoo is not None:
            return type(self.zoo).__name__
        return getattr(self.model, "__name__", type(self.model).__name__)

    def with_data(self, data) -> "Program":
        """The same model and guide called on other data."""
        if self.zoo is not None:
            return Program.of(self.zoo, data, self.guide)
        args, kwargs = call_args(data)
        return Program(self.model, self.guide, args, kwargs)


def data_tensor(data):
    """The tensor of a tensor or :class:`zoo.Dataset` (None for None)."""
    if data is None or isinstance(data, torch.Tensor):
        return data
    if hasattr(data, "x") and isinstance(data.x, torch.Tensor):
        return data.x
    if isinstance(data, dict):
        raise TypeError("a zoo model takes its data as a tensor or zoo.Dataset, not a dict of keyword arguments")
    return torch.as_tensor(data)


def call_args(data) -> tuple[tuple, dict]:
    """(args, kwargs) a plain Pyro program is called with: tensor -> (x,), Dataset -> (x,), dict -> kwargs."""
    if data is None:
        return (), {}
    if isinstance(data, dict):
        return (), dict(data)
    if isinstance(data, tuple):
        return data, {}
    return (data_tensor(data),), {}


@contextlib.contextmanager
def local_rng(seed: int, device=None):
    """Draw from torch's generator seeded with ``seed`` and restore the caller's state afterwards."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


# ----------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------
@dataclass
class Structure:
    """What one trace of a program shows (see :func:`structure`)."""

    trace: object
    latent: dict  # name -> {"shape", "event_dim", "local", "enumerated", "frames"}
    observed: dict  # name -> {"shape", "event_dim", "local", "frames", "value"}
    data_plate: str | None
    data_size: int | None
    nesting: int

    @property
    def enumerated(self) -> list[str]:
        return [k for k, v in self.latent.items() if v["enumerated"]]

    @property
    def sampled(self) -> dict:
        """Latent sites a posterior draws (all but the enumerated ones)."""
        return {k: v for k, v in self.latent.items() if not v["enumerated"]}

    @property
    def local(self) -> list[str]:
        """Sampled latent sites with one value per data point."""
        return [k for k, v in self.sampled.items() if v["local"]]


def _frames(site) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized]


@torch.no_grad()
def _prototype(prog: Program):
    """One trace of the model (latents from the prior, or from the guide where the prior cannot
    be sampled, e.g. an improper flat prior), without side effects on the caller's RNG."""
    with local_rng(0, prog.device), poutine.block():
        try:
            return poutine.trace(prog.model).get_trace(*prog.args, **prog.kwargs), None
        except NotImplementedError:
            if prog.guide is None:
                raise
            guide_trace = poutine.trace(prog.guide).get_trace(*prog.args, **prog.kwargs)
            model = poutine.replay(prog.model, trace=guide_trace)
            return poutine.trace(model).get_trace(*prog.args, **prog.kwargs), guide_trace


def structure(prog: Program) -> Structure:
    """Latent and observed sites, the data plate and the plate nesting of ``prog``'s model."""
    trace, guide_trace = _prototype(prog)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
    observed = [s for s in sites if s["is_observed"]]
    plate, size = _data_plate(trace, observed, prog.args)
    nesting = max([-f.dim for s in sites for f in _frames(s)] + [0])
    if guide_trace is not None:
        nesting = max([nesting] + [-f.dim for s in guide_trace.nodes.values() if s["type"] == "sample" for f in _frames(s)])
    if prog.zoo is not None:
        nesting = max(nesting, int(prog.zoo.max_plate_nesting))

    def info(s):
        return dict(
            shape=tuple(s["value"].shape),
            event_dim=s["fn"].event_dim,
            local=plate is not None and any(f.name == plate for f in s["cond_indep_stack"]),
            frames=[(f.name, f.dim) for f in _frames(s)],
        )

    latent = {}
    for s in sites:
        if not s["is_observed"]:
            how = s["infer"].get("enumerate")
            if how == "sequential":
                raise NotImplementedError(f"site {s['name']!r}: sequential enumeration is not supported; use 'parallel'")
            latent[s["name"]] = dict(info(s), enumerated=how == "parallel")
    obs = {s["name"]: dict(info(s), value=s["value"]) for s in observed}
    return Structure(trace, latent, obs, plate, size, nesting)


def _data_plate(trace, observed, args) -> tuple[str | None, int | None]:
    """The plate that indexes data points: shared by every observed site; among several, the one
    that subsamples, else the one whose size is the data's length, else the outermost."""
    if not observed:
        return None, None
    shared = [f for f in _frames(observed[0]) if all(any(g.name == f.name for g in _frames(s)) for s in observed[1:])]
    if not shared:
        return None, None

    def length(f):
        node = trace.nodes.get(f.name)
        return len(node["value"]) if node is not None and site_is_subsample(node) else f.size

    if len(shared) > 1:
        sub = [f for f in shared if length(f) < f.size]
        n = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else None
        sized = [f for f in shared if n is not None and length(f) == n]
        shared = sub or sized or shared
    f = shared[0]  # cond_indep_stack lists the outermost plate first
    return f.name, length(f)


# ----------------------------------------------------------------------------------------
# running the model on draws
# ----------------------------------------------------------------------------------------
def batched(value: torch.Tensor, shape: tuple, event_dim: int, nesting: int) -> torch.Tensor:
    """Draws ``(s,) + shape`` reshaped to broadcast under the draws plate (as ``Predictive`` does)."""
    batch_dims = len(shape) - event_dim
    return value.reshape((value.shape[0],) + (1,) * max(0, nesting - batch_dims) + tuple(shape))


def run_model(prog: Program, st: Structure, *, values=None, guide_trace=None, num: int | None = None):
    """A packed trace of the model with latents set by ``values`` ({site: (num,) + shape}, or one
    draw's values when ``num`` is None) or by replaying ``guide_trace``; enumerated sites enumerated."""
    fn = prog.model
    if values:
        if num is not None:
            values = {k: batched(v, st.latent[k]["shape"], st.latent[k]["event_dim"], st.nesting) for k, v in values.items()}
        fn = poutine.condition(fn, data=values)
    if guide_trace is not None:
        fn = poutine.replay(fn, trace=guide_trace)
    first = -(st.nesting + 1)
    if num is not None:
        fn = _in_draws_plate(fn, num, first)
        first -= 1
    if st.enumerated:
        fn = poutine.enum(fn, first_available_dim=first)
    with poutine.block():
        trace = poutine.trace(fn).get_trace(*prog.args, **prog.kwargs)
    return _packed(trace)


def run_guide(prog: Program, st: Structure, guide, num: int | None = None):
    """A packed trace of ``guide`` (vectorised over ``num`` draws, or one draw)."""
    fn = guide if num is None else _in_draws_plate(guide, num, -(st.nesting + 1))
    with poutine.block():
        trace = poutine.trace(fn).get_trace(*prog.args, **prog.kwargs)
    return _packed(trace)


def _in_draws_plate(fn, num, dim):
    def wrapped(*args, **kwargs):
        with pyro.plate(DRAWS, num, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def _packed(trace):
    lengths = {}
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for f in _frames(site):
                lengths.setdefault(f.name, f.size)
    for name in list(lengths):
        node = trace.nodes.get(name)
        if node is not None and site_is_subsample(node):
            lengths[name] = len(node["value"])
    trace = prune_subsample_sites(trace)
    trace.plate_lengths = lengths
    trace.compute_log_prob()
    trace.pack_tensors()
    return trace


def enum_symbols(trace) -> set:
    """The packed symbols of enumerated dimensions."""
    plates = set(trace.plate_to_symbol.values())
    out = set()
    for s in trace.nodes.values():
        if s["type"] == "sample" and s["infer"].get("_enumerate_dim") is not None:
            out |= set(s["packed"]["log_prob"]._pyro_dims) - plates
    return out


def depends_on_enum(trace, name: str) -> bool:
    return bool(set(trace.nodes[name]["packed"]["log_prob"]._pyro_dims) & enum_symbols(trace))


def contract(trace, names, target: list[str], *, scaled: bool = True) -> torch.Tensor:
    """Sum of the log densities of sites ``names`` with enumerated dimensions summed out and every
    plate not in ``target`` summed over: a tensor with one axis per plate of ``target`` (in order)."""
    terms = OrderedDict()
    for name in names:
        site = trace.nodes[name]
        lp = site["packed"]["log_prob" if scaled else "unscaled_log_prob"]
        if not scaled and site["mask"] is not None:
            mask = site["packed"]["mask"]
            lp = _packed_where(mask, lp)
        ordinal = frozenset(trace.plate_to_symbol[f.name] for f in _frames(site))
        terms.setdefault(ordinal, []).append(lp)
    symbols = [trace.plate_to_symbol[t] for t in target]
    sizes = _plate_sizes(trace)
    sizes.update({trace.plate_to_symbol[k]: n for k, n in trace.plate_lengths.items() if k in trace.plate_to_symbol})
    ring = LogRing(dim_to_size=sizes)
    out = contract_to_tensor(terms, enum_symbols(trace), target_ordinal=frozenset(symbols), ring=ring)
    dims = getattr(out, "_pyro_dims", "")
    return out.permute([dims.index(s) for s in symbols]) if symbols else out.reshape(())


def _packed_where(mask, lp):
    from pyro.ops import packed

    return packed.scale_and_mask(lp, mask=mask)


def _plate_sizes(trace) -> dict:
    sizes = {}
    for s in trace.nodes.values():
        if s["type"] != "sample":
            continue
        lp = s["packed"]["log_prob"]
        for sym, n in zip(getattr(lp, "_pyro_dims", ""), lp.shape):
            sizes[sym] = max(sizes.get(sym, 1), n)
    return sizes


def map_draws(batch_fn, one_fn, num: int, chunk_size: int, *, progress=None, check: bool = True):
    """Results of ``num`` draws: ``batch_fn(start, stop)`` vectorised over a chunk of draws (returns
    ``{key: (stop - start, ...)}``), or ``one_fn(i)`` per draw (``{key: (...)}``) where the
    vectorised run fails or differs from draw ``start`` run alone. Returns ``({key: (num, ...)},
    vectorised)``."""
    from tqdm.auto import tqdm

    vectorised, out = True, []
    try:
        out.append(batch_fn(0, min(chunk_size, num)))
    except Exception:  # noqa: BLE001 - any failure of broadcasting: fall back to one draw at a time
        vectorised = False
    if vectorised and check:  # a model may broadcast without error and still wrongly
        try:
            alone = one_fn(0)
        except Exception:  # noqa: BLE001 - runs only vectorised: trust that
            alone = {}
        for k, v in alone.items():
            if not torch.allclose(out[0][k][0].double(), v.double(), rtol=1e-4, atol=1e-4, equal_nan=True):
                vectorised = False
    if vectorised:
        for start in range(chunk_size, num, chunk_size):
            out.append(batch_fn(start, min(start + chunk_size, num)))
        return {k: torch.cat([o[k] for o in out]) for k in out[0]}, True
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    rows = [one_fn(i) for i in tqdm(range(num), desc="draws, one at a time", disable=disable, leave=False)]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}, False
