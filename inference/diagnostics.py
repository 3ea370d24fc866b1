"""ArviZ for every posterior of the zoo, and the checks variational inference needs.

Every function takes a fitted zoo model or any Pyro program (a model callable with its
guide), called on data given as a tensor (first argument), a ``zoo.Dataset`` or a dict of
keyword arguments; no site or plate name is special (see :mod:`inference.traces`).

* :func:`to_inference_data`: an ``arviz.InferenceData`` in one call from a fitted guide,
  an MCMC run, an exact conjugate posterior (``{site: Distribution}``) or a dict of draws.
  Every source gets ``posterior`` (``chain``, ``draw`` and named dimensions: ``obs`` for
  the data plate, a plate's name for another plate, ``pixel`` / ``category`` for a zoo
  model's pixels and categories), ``observed_data`` and a pointwise ``log_likelihood``
  group (``log p(x_n | theta_s)`` per observed site, every draw s and data point n, with
  enumerated discrete sites summed out; the model runs vectorised over the draws, or one
  draw at a time where it cannot), so ``az.loo``/``az.waic`` work.
* :func:`diagnose`: the Pareto-smoothed importance-sampling k-hat of a guide used as a
  proposal for the posterior (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it
  work?"), read as k < 0.5 good, 0.5-0.7 usable, > 0.7 unreliable; KL(q || posterior)
  estimated from the same weights; and, given a reference posterior, the distances of
  :func:`posterior_distances`.
* :func:`posterior_distances`: mean and standard-deviation errors, the mean 1-Wasserstein
  distance between marginals, and the KL divergence where both sides are distributions
  with a closed form.

References: Vehtari, Gelman & Gabry (2017), "Practical Bayesian model evaluation using
leave-one-out cross-validation and WAIC"; Vehtari et al. (2024), "Pareto smoothed
importance sampling"; Kumar et al. (2019), "ArviZ a unified library for exploratory
analysis of Bayesian models in Python".
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

from inference.traces import (
    DRAWS,
    Program,
    Structure,
    batched,
    contract,
    depends_on_enum,
    local_rng,
    map_draws,
    run_guide,
    run_model,
    structure,
)
from zoo.base import NoDensityError, ZooModel

__all__ = [
    "diagnose",
    "guide_from_distributions",
    "importance_log_weights",
    "khat_reading",
    "latent_sites",
    "pointwise_log_likelihood",
    "pointwise_log_likelihoods",
    "posterior_draws",
    "posterior_distances",
    "psis_khat",
    "to_inference_data",
]

#: PSIS k-hat thresholds (Vehtari et al. 2024): below the first "good", below the second
#: "ok" (usable, slower convergence), above it "unreliable".
KHAT_GOOD, KHAT_OK = 0.5, 0.7


# ----------------------------------------------------------------------------------------
# the model's structure
# ----------------------------------------------------------------------------------------
def latent_sites(model, data=None, guide=None) -> dict[str, dict]:
    """The model's unobserved sample sites: ``{name: {"shape", "event_dim", "local", "enumerated"}}``.

    ``local`` is True for sites in the data plate (one value per data point): the plate every
    observed site shares, whatever its name (see :func:`inference.traces.structure`).
    ``model`` is a :class:`zoo.ZooModel` or a Pyro model callable; ``data`` a tensor,
    :class:`zoo.Dataset` or a dict of keyword arguments.
    """
    st = structure(Program.of(model, data, guide))
    return {k: {key: v[key] for key in ("shape", "event_dim", "local", "enumerated")} for k, v in st.latent.items()}


def _chunk(st: Structure, num: int, requested: int | None) -> int:
    """Draws per vectorised chunk: the broadcast log-densities stay near 2^24 numbers."""
    if requested is not None:
        return max(1, int(requested))
    per_draw = sum(math.prod(o["shape"]) for o in st.observed.values()) + sum(
        math.prod(v["shape"]) for v in st.latent.values())
    per_draw *= max([math.prod(v["shape"][:1]) for v in st.latent.values() if v["enumerated"]] + [1])
    return max(1, min(num, 2**24 // max(1, per_draw)))


def _loglik_groups(trace, st: Structure) -> dict[str, list[str]]:
    """``{variable: sites}`` of the log-likelihood: each observed site alone, except those that
    depend on an enumerated site, which form one group with the enumerated sites (summed out)."""
    groups, joint = {}, []
    for name in st.observed:
        (joint if st.enumerated and depends_on_enum(trace, name) else groups.setdefault(name, [])).append(name)
    if joint:
        groups["+".join(joint)] = joint + st.enumerated
    return groups


def _pointwise(trace, st: Structure, draws_plate: bool) -> dict[str, torch.Tensor]:
    """Per group: log p(x_n | theta) with enumerated sites summed out, over (draws?, data?)."""
    out = {}
    for var, names in _loglik_groups(trace, st).items():
        local = st.data_plate is not None and all(st.observed[n]["local"] for n in names if n in st.observed)
        if local and st.enumerated and any(n in st.latent and not st.latent[n]["local"] for n in names):
            local = False  # a global enumerated site couples the data points: one joint value
        target = ([DRAWS] if draws_plate else []) + ([st.data_plate] if local else [])
        out[var] = contract(trace, names, target, scaled=False)
    return out


@torch.no_grad()
def pointwise_log_likelihoods(model, data, draws: dict[str, torch.Tensor], *, guide=None, chunk_size: int | None = None,
                              progress=None) -> tuple[dict[str, torch.Tensor], bool]:
    """``{observed variable: log p(x_n | theta_s)}`` of every draw s and data point n, and whether
    the model ran vectorised over the draws.

    ``draws`` maps every sampled latent site to ``(S,) + site shape`` values (empty for a model
    without such sites: one draw). Each observed site is a variable of its own, shape ``(S, N)``
    (in the data plate) or ``(S,)``; observed sites that depend on an enumerated discrete site
    form one variable (names joined by ``+``) with that site summed out, as ``TraceEnum_ELBO``
    does. The model runs once per chunk of draws under a plate over the draws; a model that
    cannot broadcast over draws runs once per draw (with a progress bar).
    """
    prog = Program.of(model, data, guide)
    return _pointwise_of(prog, structure(prog), draws, chunk_size, progress)


@torch.no_grad()
def _pointwise_of(prog, st, draws, chunk_size=None, progress=None):
    missing = sorted(set(st.sampled) - set(draws))
    if missing:
        raise NotImplementedError(
            f"{prog.name}: no draws for latent sites {missing}; the pointwise log-likelihood needs a value for every "
            "latent site that is not enumerated")
    draws = {k: v.to(prog.device) for k, v in draws.items() if k in st.sampled}
    if not draws:
        return {k: v.unsqueeze(0) for k, v in _pointwise(run_model(prog, st), st, False).items()}, True
    num = next(iter(draws.values())).shape[0]

    def batch(a, b):
        return _pointwise(run_model(prog, st, values={k: v[a:b] for k, v in draws.items()}, num=b - a), st, True)

    def one(i):
        return _pointwise(run_model(prog, st, values={k: v[i] for k, v in draws.items()}), st, False)

    return map_draws(batch, one, num, _chunk(st, num, chunk_size), progress=progress)


def pointwise_log_likelihood(model, data, draws: dict[str, torch.Tensor], *, chunk_size: int | None = None,
                             guide=None) -> torch.Tensor:
    """The ``(S, N)`` pointwise log-likelihood of a model with one observed variable
    (see :func:`pointwise_log_likelihoods`)."""
    ll, _ = pointwise_log_likelihoods(model, data, draws, chunk_size=chunk_size, guide=guide)
    if len(ll) != 1:
        raise ValueError(f"the model has several observed variables {sorted(ll)}: use pointwise_log_likelihoods")
    return next(iter(ll.values()))


def _guide_values(trace, st: Structure, num: int | None) -> dict[str, torch.Tensor]:
    lead = () if num is None else (num,)
    return {k: trace.nodes[k]["value"].reshape(lead + st.latent[k]["shape"])
            for k in st.sampled if k in trace.nodes and trace.nodes[k]["type"] == "sample"}


@torch.no_grad()
def posterior_draws(model, data, num_samples: int, *, guide=None, seed: int = 0, progress=None) -> dict[str, torch.Tensor]:
    """``num_samples`` draws ``(S,) + site shape`` of every sampled latent site from the guide
    (default the zoo model's own), vectorised where the guide broadcasts over draws; the
    caller's random state is left as it was."""
    prog = Program.of(model, data, guide)
    if prog.guide is None:
        raise ValueError(f"{prog.name}: give guide= (a plain Pyro model has no guide of its own)")
    return _guide_draws(prog, structure(prog), num_samples, seed, progress)


@torch.no_grad()
def _guide_draws(prog, st, num, seed, progress):
    with local_rng(seed, prog.device):
        out, _ = map_draws(lambda a, b: _guide_values(run_guide(prog, st, prog.guide, b - a), st, b - a),
                           lambda i: _guide_values(run_guide(prog, st, prog.guide), st, None),
                           num, _chunk(st, num, None), progress=progress, check=False)
    return out


@torch.no_grad()
def importance_log_weights(model, data, guide=None, *, num_samples: int = 1000, chunk_size: int | None = None,
                           seed: int = 0, per_data_point: bool = False, progress=None):
    """``log p(x, theta_s) - log q(theta_s)`` for ``num_samples`` draws ``theta_s ~ q`` (the guide).

    Returns ``(log_weights, draws {site: (S,) + site shape})``: ``log_weights`` has shape ``(S,)``,
    or ``(S, N)`` with ``per_data_point`` (a guide over per-data-point latents only, e.g. a VAE's
    encoder: one weight per draw and data point). Enumerated sites are summed out of
    ``p(x, theta)``. Vectorised over draws in chunks (one draw at a time where the model cannot
    broadcast); the caller's random state is left as it was.
    """
    prog = Program.of(model, data, guide)
    return _importance(prog, structure(prog), num_samples, chunk_size, seed, per_data_point, progress)


@torch.no_grad()
def _importance(prog, st, num_samples, chunk_size, seed, per_data_point, progress):
    if prog.guide is None:
        raise ValueError(f"{prog.name}: give guide= (a plain Pyro model has no guide of its own)")
    if not st.sampled:
        raise ValueError(f"{prog.name} has no latent sites to sample: there is no posterior to approximate")
    if per_data_point and st.data_plate is None:
        raise ValueError(f"{prog.name}: per_data_point weights need a data plate (a plate all observed sites share)")
    target = [st.data_plate] if per_data_point else []
    model_sites = list(st.latent) + list(st.observed)

    def weights(num):
        guide_trace = run_guide(prog, st, prog.guide, num)
        model_trace = run_model(prog, st, guide_trace=guide_trace, num=num)
        draws = [DRAWS] if num is not None else []
        g_sites = [k for k, s in guide_trace.nodes.items() if s["type"] == "sample"]
        lw = contract(model_trace, model_sites, draws + target) - contract(guide_trace, g_sites, draws + target)
        return {"lw": lw, **_guide_values(guide_trace, st, num)}

    with local_rng(seed, prog.device):
        out, _ = map_draws(lambda a, b: weights(b - a), lambda i: weights(None), num_samples,
                           _chunk(st, num_samples, chunk_size), progress=progress, check=False)
    lw = out.pop("lw")
    return lw, out


# ----------------------------------------------------------------------------------------
# InferenceData
# ----------------------------------------------------------------------------------------
def to_inference_data(
    source,
    data=None,
    *,
    model=None,
    guide=None,
    num_draws: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    log_likelihood: bool = True,
    discrete: bool = False,
    num_particles: int = 200,
    dims: dict | None = None,
    coords: dict | None = None,
    progress=None,
) -> az.InferenceData:
    """An ``arviz.InferenceData`` of a posterior of a zoo model or of any Pyro program.

    :param source: one of

        * a fitted :class:`zoo.ZooModel` (its guide, or ``guide``) or a Pyro model callable with
          ``guide=`` (a function, an AutoGuide, ...): ``num_chains x num_draws`` independent
          draws from the guide given ``data``;
        * an :class:`inference.mcmc.MCMCResult` or a ``pyro.infer.MCMC`` that has run (``model``
          and ``data`` default to the ones it ran on);
        * a dict ``{site: torch.distributions.Distribution}`` such as
          ``model.exact_posterior(x)``: ``num_chains x num_draws`` exact draws (needs ``model``);
        * a dict ``{site: tensor}`` of draws shaped ``(chains, draws) + site shape``.
    :param data: what the model is called with: a tensor (its first argument), a
        :class:`zoo.Dataset`, or a dict of keyword arguments.
    :param log_likelihood: add the pointwise ``log_likelihood`` group: one variable per observed
        site (its own name), dims ``chain, draw, obs`` (``obs``: the data plate, whatever its
        name). Enumerated discrete sites are summed out. For per-data-point latents sampled by
        a guide with no global latent beside them (a VAE's encoder) the variable is the
        importance-sampled marginal ``log p(x_n)`` (``num_particles`` draws per point; one
        "draw", ``attrs["log_likelihood"]`` says so); with global latents too it is
        conditional on the local ones and a warning says that PSIS-LOO over it is unreliable.
    :param discrete: add posterior draws of the enumerated discrete sites (``infer_discrete``
        at temperature 1, one per posterior draw).
    :param dims, coords: ArviZ dimension names and coordinates overriding the defaults.
    :returns: InferenceData with ``posterior``, ``observed_data``, ``log_likelihood`` (and
        ``sample_stats.diverging`` for MCMC). Independent draws (guide, exact) are split into
        ``num_chains`` chains. A site has the same dims whatever the source. Where a group
        cannot be computed (no density, latent sites the guide does not sample) a warning says
        why and the group is missing. The caller's random state is left as it was.
    """
    prog, grouped, stats, attrs = _posterior_source(source, data, model, guide, num_draws, num_chains, seed, progress)
    kind = attrs["inference"].split(":")[0]
    st = structure(prog)
    unknown = sorted(set(grouped) - set(st.latent))
    if unknown:
        raise ValueError(f"{unknown} are not latent sites of {prog.name} (those are {sorted(st.latent)})")
    grouped = {k: _site_shaped(k, v, st) for k, v in grouped.items()}
    if discrete and st.enumerated:
        grouped.update(_discrete_draws(prog, st, grouped, num_draws, num_chains, seed))
    ll = None
    if log_likelihood:
        ll, more = _log_likelihood_group(prog, st, grouped, kind, num_particles, seed, progress)
        attrs.update(more)
    site_dims, site_coords = _default_dims(prog, st, grouped, ll)
    site_dims.update(dims or {})
    site_coords.update(coords or {})
    posterior_np = {k: v.detach().cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy()
                    for k, v in grouped.items()}
    observed = {k: o["value"].detach().cpu().numpy() for k, o in st.observed.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: "more chains than draws" etc.
        return az.from_dict(
            posterior=posterior_np or None,
            log_likelihood={k: v.detach().cpu().double().numpy() for k, v in ll.items()} if ll else None,
            observed_data=observed or None,
            sample_stats=stats,
            dims=site_dims,
            coords=site_coords,
            attrs={"model": prog.name, **attrs},
        )


def _posterior_source(source, data, model, guide, num_draws, num_chains, seed, progress):
    """(program, {site: (chains, draws, ...)}, sample_stats, attrs) of any accepted source."""
    from inference.mcmc import MCMCResult

    if isinstance(source, MCMCResult):
        model = source.model if model is None else model
        data = source.data if data is None else data
        source = source.mcmc
    if isinstance(source, pyro.infer.MCMC):
        prog = _mcmc_program(source, model, data)
        st = structure(prog)
        grouped = {k: v for k, v in source.get_samples(group_by_chain=True).items() if k in st.latent}
        return prog, grouped, _mcmc_stats(source, grouped), {"inference": "mcmc"}
    if isinstance(source, dict):
        if model is None or (data is None and isinstance(model, ZooModel)):
            raise ValueError("give model= and data= with a dict of distributions or draws")
        prog = Program.of(model, data, guide)
        if source and all(isinstance(v, torch.distributions.Distribution) for v in source.values()):
            with local_rng(seed, prog.device):
                grouped = {k: d.sample((num_chains, num_draws)) for k, d in source.items()}
            return prog, grouped, None, {"inference": "exact"}
        if all(isinstance(v, torch.Tensor) for v in source.values()):
            return prog, dict(source), None, {"inference": "draws"}
        raise TypeError("a dict source must map sites to Distributions or to tensors of draws")
    if isinstance(source, ZooModel) or callable(source):
        if model is not None and model is not source:
            raise ValueError("model= differs from the fitted model given as source")
        if isinstance(source, ZooModel) and data is None:
            raise ValueError("give the data the guide was fitted to")
        prog = Program.of(source, data, guide)
        if prog.guide is None:
            raise ValueError(f"{prog.name}: give guide= (the guide fitted to it) to draw a posterior")
        st = structure(prog)
        draws = _guide_draws(prog, st, num_chains * num_draws, seed, progress) if st.sampled else {}
        grouped = {k: v.reshape((num_chains, num_draws) + v.shape[1:]) for k, v in draws.items()}
        name = "guide" if guide is None else f"guide:{getattr(guide, '__name__', type(guide).__name__)}"
        return prog, grouped, None, {"inference": name}
    raise TypeError(
        "to_inference_data accepts a fitted zoo model, a Pyro model callable with guide=, an MCMCResult or "
        f"pyro.infer.MCMC, or a dict of distributions or draws; got {type(source).__name__}")


def _mcmc_program(run, model, data) -> Program:
    if model is None:
        fn = run.kernel.model
        model = getattr(fn, "__self__", None) if isinstance(getattr(fn, "__self__", None), ZooModel) else fn
        if model is None:
            raise TypeError("give model=: the MCMC kernel has no model (it was built from a potential_fn)")
    if data is None:
        if isinstance(model, ZooModel):
            if not run._args:
                raise ValueError("give data=: the MCMC object has no record of the data it ran on")
            data = run._args[0]
        else:
            prog = Program.of(model)
            prog.args, prog.kwargs = tuple(run._args), dict(run._kwargs)
            return prog
    return Program.of(model, data)


def _site_shaped(name, v: torch.Tensor, st: Structure) -> torch.Tensor:
    """Draws ``(chains, draws) + the site's shape`` whatever the source gave (a guide's scalar
    site may come as ``(..., 1)``)."""
    shape = st.latent[name]["shape"]
    if tuple(v.shape[2:]) != shape:
        if v.dim() < 2 or math.prod(v.shape[2:]) != math.prod(shape):
            raise ValueError(f"draws of {name!r} must have shape (chains, draws) + {shape}, got {tuple(v.shape)}")
        v = v.reshape(tuple(v.shape[:2]) + shape)
    return v


def _log_likelihood_group(prog, st, grouped, kind, num_particles, seed, progress) -> tuple[dict | None, dict]:
    """The log_likelihood group's variables ``(chains, draws, ...)`` and attrs; None with a warning
    where it does not apply."""
    why = _no_density(prog)
    lacking = sorted(set(st.sampled) - set(grouped))
    if not why and lacking:
        why = f"latent sites {lacking} have no draws (the guide does not sample them)"
    if why:
        warnings.warn(f"{prog.name}: no log_likelihood group: {why}", UserWarning, stacklevel=3)
        return None, {}
    local, attrs = st.local, {}
    if local and kind == "guide" and not set(st.sampled) - set(local):
        return _marginal_group(prog, st, num_particles, seed, progress)
    if local:
        warnings.warn(
            f"{prog.name}: the log_likelihood group is conditional on the per-data-point latent sites {local} "
            "(log p(x_n | z_n, theta)); PSIS-LOO over it is unreliable (expect large Pareto k)", UserWarning, stacklevel=3)
        attrs["log_likelihood"] = f"conditional on the per-data-point latents {local}"
    chains, per_chain = next(iter(grouped.values())).shape[:2] if grouped else (1, 1)
    if not grouped:
        attrs["point_estimate"] = 1
    flat = {k: v.reshape((chains * per_chain,) + v.shape[2:]) for k, v in grouped.items() if k in st.sampled}
    ll, vectorised = _pointwise_of(prog, st, flat, progress=progress)
    if not vectorised:
        attrs["vectorised"] = 0
    return {k: v.reshape((chains, per_chain) + v.shape[1:]) for k, v in ll.items()}, attrs


def _marginal_group(prog, st, num_particles, seed, progress):
    """log p(x_n), importance-sampled with the guide over the per-data-point latents."""
    lw, _ = _importance(prog, st, num_particles, None, seed + 1, True, progress)
    marginal = torch.logsumexp(lw.double(), 0) - math.log(lw.shape[0])
    attrs = dict(log_likelihood=f"importance-sampled marginal log p(x_n): {num_particles} guide draws per data point "
                                f"of the per-data-point latents {st.local}", point_estimate=1)
    return {"+".join(st.observed): marginal.reshape((1, 1) + marginal.shape)}, attrs


def _no_density(prog) -> str | None:
    """Why the model has no density to evaluate (a zoo model whose log_prob raises NoDensityError)."""
    if prog.zoo is None or not prog.args:
        return None
    try:
        prog.zoo.log_prob(prog.args[0][:1])
    except NoDensityError as e:
        return str(e).split(";")[0]
    return None


def _discrete_draws(prog, st, grouped, num_draws, num_chains, seed) -> dict:
    """Posterior draws of the enumerated sites given each draw of the others (``infer_discrete``)."""
    from pyro.infer import infer_discrete

    chains, per_chain = next(iter(grouped.values())).shape[:2] if grouped else (num_chains, num_draws)
    num = chains * per_chain
    flat = {k: v.reshape((num,) + v.shape[2:]) for k, v in grouped.items() if k in st.sampled}

    def sample(values, num):
        if num is not None:
            values = {k: batched(v, st.latent[k]["shape"], st.latent[k]["event_dim"], st.nesting) for k, v in values.items()}
        fn = poutine.condition(prog.model, data=values)
        first = -(st.nesting + 1)
        if num is not None:
            fn, first = _draws_plate(fn, num, first), first - 1
        fn = infer_discrete(fn, first_available_dim=first, temperature=1)
        with poutine.block():
            tr = poutine.trace(fn).get_trace(*prog.args, **prog.kwargs)
        lead = () if num is None else (num,)
        return {k: tr.nodes[k]["value"].reshape(lead + st.latent[k]["shape"]) for k in st.enumerated}

    with local_rng(seed + 2, prog.device), torch.no_grad():
        out, _ = map_draws(lambda a, b: sample({k: v[a:b] for k, v in flat.items()}, b - a),
                           lambda i: sample({k: v[i] for k, v in flat.items()}, None), num, 100, check=False)
    return {k: v.reshape((chains, per_chain) + st.latent[k]["shape"]) for k, v in out.items()}


def _draws_plate(fn, num, dim):
    def wrapped(*args, **kwargs):
        with pyro.plate(DRAWS, num, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def _default_dims(prog, st, grouped, ll) -> tuple[dict, dict]:
    """Named dimensions of every variable: ``obs`` for the data plate (whatever its name; the
    plate's name where a site is called ``obs``), a
    plate's own name for another plate, ``pixel`` / ``category`` for a zoo model's pixels and
    categories, else ``SITE_dim_i``. A zoo model may set ``arviz_dims = {site: [names]}``."""
    own = dict(getattr(prog.zoo, "arviz_dims", None) or {})
    names = set(grouped) | set(st.observed) | set(ll or {})
    obs = next(d for d in ("obs", st.data_plate, f"{st.data_plate}_dim") if d not in names)  # a dim is no variable
    dims = {}
    for name, v in grouped.items():
        dims[name] = list(own[name]) if name in own else _site_dims(prog, st, name, st.latent[name], tuple(v.shape[2:]), obs)
    for name, o in st.observed.items():
        dims[name] = list(own[name]) if name in own else _site_dims(prog, st, name, o, o["shape"], obs)
    for var, v in (ll or {}).items():  # one dims list per name in ArviZ: an observed site's serves both
        if var not in dims:
            dims[var] = [obs] if v.dim() > 2 and st.data_plate is not None else []
    coords = {}
    for name, names in dims.items():
        shape = tuple(grouped[name].shape[2:]) if name in grouped else (
            st.observed[name]["shape"] if name in st.observed else tuple(ll[name].shape[2:]))
        for d, size in zip(names, shape):
            coords.setdefault(d, np.arange(size))
    return dims, coords


def _site_dims(prog, st, name, info, shape, obs) -> list[str]:
    batch = len(shape) - info["event_dim"]
    plates = {dim: plate for plate, dim in info["frames"]}
    zoo_model = prog.zoo
    names = []
    for i, size in enumerate(shape):
        plate = plates.get(i - batch) if i < batch else None
        if plate is not None:
            names.append(obs if plate == st.data_plate else plate)
        elif zoo_model is not None and i == len(shape) - 1 and zoo_model.support == "binary" and size == zoo_model.data_dim:
            names.append("pixel")
        elif zoo_model is not None and i == len(shape) - 1 and zoo_model.support == "categorical" \
                and size == zoo_model.num_categories:
            names.append("category")
        else:
            names.append(f"{name}_dim_{i}")
    return names


def _mcmc_stats(mcmc, grouped) -> dict | None:
    """``diverging`` (chain, draw) from Pyro's per-chain divergence indices."""
    if not grouped:
        return None
    chains, draws = next(iter(grouped.values())).shape[:2]
    diverging = np.zeros((chains, draws), dtype=bool)
    for i, diag in enumerate(getattr(mcmc, "_diagnostics", []) or []):
        for j in (diag or {}).get("divergences", []):
            if i < chains and 0 <= j < draws:
                diverging[i, j] = True
    return {"diverging": diverging}


# ----------------------------------------------------------------------------------------
# PSIS k-hat of a guide
# ----------------------------------------------------------------------------------------
def guide_from_distributions(distributions: dict) -> callable:
    """A guide that draws each site from the given distribution (e.g. an exact posterior)."""

    def guide(*args, **kwargs):
        for name, d in distributions.items():
            pyro.sample(name, d)

    return guide


def psis_khat(log_weights) -> float | np.ndarray:
    """The Pareto k-hat of the largest importance weights (``az.psislw``): a float for ``(S,)``
    weights, one per column for ``(S, N)``."""
    lw = np.asarray(torch.as_tensor(log_weights, dtype=torch.float64).cpu())
    if lw.ndim == 2:
        return np.array([psis_khat(lw[:, j]) for j in range(lw.shape[1])])
    if not np.all(np.isfinite(lw)):
        return math.inf
    if np.ptp(lw) < 1e-9 * max(1.0, np.abs(lw).max()):  # constant weights: perfect proposal
        return -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(lw)
    return float(np.asarray(k))


def khat_reading(k: float) -> str:
    """The standard reading of a PSIS k-hat."""
    if k is None or math.isnan(k):
        return "undefined"
    if k < KHAT_GOOD:
        return "good"
    if k < KHAT_OK:
        return "ok"
    return "unreliable"


def _kl_estimate(lw: torch.Tensor) -> float:
    """KL(q || posterior) = log p(x) - ELBO, both from the weights (log-mean-exp minus mean)."""
    lw = lw.double()
    return float((torch.logsumexp(lw, 0) - math.log(lw.shape[0]) - lw.mean(0)).sum())


def diagnose(model, data, *, guide=None, reference=None, num_samples: int = 1000, seed: int = 0, progress=None) -> dict:
    """Check a variational fit: PSIS k-hat of the guide as a proposal, KL, and distances to a reference.

    :param model: a :class:`zoo.ZooModel` or a Pyro model callable (then ``guide`` is required).
    :param guide: the guide to check (default the zoo model's own).
    :param reference: a reference posterior: ``{site: Distribution}`` (e.g. the exact one),
        ``{site: draws (S, ...)}`` (e.g. from MCMC), or an InferenceData.
    :returns: ``{"khat", "khat_reading", "is_ess", "kl", "elbo", "log_evidence", "num_samples"}``
        plus ``"distances"`` (:func:`posterior_distances`) with a reference. ``kl`` is KL(q ||
        posterior) estimated from the same weights (log-mean-exp of the log weights, an estimate
        of log p(x), minus their mean, the ELBO; low by the Jensen gap of S draws). Enumerated
        discrete sites are summed out of p(x, theta). For a guide over per-data-point latents only
        (a VAE's encoder), the weights are per data point: ``khat`` is the largest over the data
        points (``khat_median`` beside it, ``per_data_point`` True) and ``kl``, ``elbo`` and
        ``log_evidence`` are sums over them. A guide whose draws do not vary (AutoDelta) is no
        proposal: k-hat is ``inf``. Where k-hat does not apply (no latent sites, no density, sites
        the guide does not sample) the result has ``khat`` None, ``khat_reading`` saying why, and
        a warning.
    """
    prog = Program.of(model, data, guide)
    st = structure(prog)
    why = _no_density(prog) or (None if st.sampled else "no latent sites to sample (no posterior to approximate)")
    if not why and prog.guide is None:
        why = "no guide"
    if why:
        warnings.warn(f"{prog.name}: no PSIS k-hat: {why}", UserWarning, stacklevel=2)
        return {"khat": None, "khat_reading": f"not applicable: {why}", "num_samples": int(num_samples)}
    per_point = bool(st.local) and not set(st.sampled) - set(st.local)
    log_w, draws = _importance(prog, st, num_samples, None, seed, per_point, progress)
    lacking = sorted(set(st.sampled) - set(draws))
    if lacking:
        why = f"latent sites {lacking} are not sampled by the guide"
        warnings.warn(f"{prog.name}: no PSIS k-hat: {why}", UserWarning, stacklevel=2)
        return {"khat": None, "khat_reading": f"not applicable: {why}", "num_samples": int(num_samples)}
    point_mass = all(bool((v == v[:1]).all()) for v in draws.values())
    k = psis_khat(log_w)
    k_all = np.atleast_1d(k)
    k_max = math.inf if point_mass else float(np.max(k_all))
    w = torch.softmax(log_w.double(), 0)
    elbo = float(log_w.double().mean(0).sum())
    out = {
        "khat": k_max,
        "khat_reading": "point mass (not a proposal)" if point_mass else khat_reading(k_max),
        "is_ess": float((1.0 / (w**2).sum(0)).min()),  # importance-sampling effective sample size
        "kl": math.inf if point_mass else _kl_estimate(log_w),
        "elbo": elbo,
        "log_evidence": float((torch.logsumexp(log_w.double(), 0) - math.log(num_samples)).sum()),
        "num_samples": int(num_samples),
        "per_data_point": per_point,
    }
    if per_point:
        out["khat_median"] = math.inf if point_mass else float(np.median(k_all))
    if reference is not None:
        out["distances"] = posterior_distances(draws, reference)
    return out


# ----------------------------------------------------------------------------------------
# distances between posteriors
# ----------------------------------------------------------------------------------------
def _as_draws(post, num: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{site: (S,) + shape}`` draws of an InferenceData, draws dict or distributions dict."""
    if isinstance(post, az.InferenceData):
        out = {}
        for k, v in post.posterior.data_vars.items():
            a = np.asarray(v.values)
            out[k] = torch.as_tensor(a.reshape((-1,) + a.shape[2:]))
        return out
    if isinstance(post, dict):
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            return {
                k: v.sample((num,)) if isinstance(v, torch.distributions.Distribution) else torch.as_tensor(v)
                for k, v in post.items()
            }
    raise TypeError(f"expected InferenceData or a dict of draws/distributions, got {type(post).__name__}")


def _moments(post, draws):
    out = {}
    for k, v in draws.items():
        if isinstance(post, dict) and isinstance(post.get(k), torch.distributions.Distribution):
            d = post[k]
            out[k] = (d.mean.double(), d.variance.double().sqrt())
        else:
            v = v.double()
            out[k] = (v.mean(0), v.std(0) if v.shape[0] > 1 else torch.zeros_like(v[0]))
    return out


def posterior_distances(approx, reference, *, num: int = 4000, seed: int = 0) -> dict:
    """How far ``approx`` is from ``reference``, per site and overall.

    Both are InferenceData, ``{site: draws (S, ...)}`` or ``{site: Distribution}``
    (distributions use their exact moments). Per site (over its scalar components):

    * ``mean_error_max`` / ``mean_error_mean``: |E_q - E_ref|, largest and average;
    * ``sd_rel_error_max`` / ``sd_rel_error_mean``: |sd_q - sd_ref| / sd_ref;
    * ``wasserstein_mean``: the 1-Wasserstein distance of the marginals, averaged;
    * ``kl``: KL(q || ref) summed over components, where both are distributions with a
      closed-form KL (e.g. the Beta guide against the exact Beta posterior).

    The top level repeats these as the largest (``*_max``) / average over all sites.
    """
    from scipy.stats import wasserstein_distance

    qd, rd = _as_draws(approx, num, seed), _as_draws(reference, num, seed + 1)
    shared = sorted(set(qd) & set(rd))
    if not shared:
        raise ValueError(f"no shared sites: {sorted(qd)} vs {sorted(rd)}")
    qm, rm = _moments(approx, {k: qd[k] for k in shared}), _moments(reference, {k: rd[k] for k in shared})
    sites = {}
    for k in shared:
        (mq, sq), (mr, sr) = qm[k], rm[k]
        if mq.shape != mr.shape:
            raise ValueError(f"site {k!r}: shapes {tuple(mq.shape)} and {tuple(mr.shape)} differ")
        me = (mq - mr).abs().flatten()
        se = ((sq - sr).abs() / sr.clamp_min(1e-300)).flatten()
        a = qd[k].double().reshape(qd[k].shape[0], -1).cpu().numpy()
        b = rd[k].double().reshape(rd[k].shape[0], -1).cpu().numpy()
        w = [wasserstein_distance(a[:, j], b[:, j]) for j in range(a.shape[1])]
        entry = dict(
            mean_error_max=float(me.max()),
            mean_error_mean=float(me.mean()),
            sd_rel_error_max=float(se.max()),
            sd_rel_error_mean=float(se.mean()),
            wasserstein_mean=float(np.mean(w)),
        )
        q, r = (approx.get(k) if isinstance(approx, dict) else None), (reference.get(k) if isinstance(reference, dict) else None)
        if isinstance(q, torch.distributions.Distribution) and isinstance(r, torch.distributions.Distribution):
            try:
                entry["kl"] = float(torch.distributions.kl_divergence(q, r).sum())
            except NotImplementedError:
                pass
        sites[k] = entry
    out = {"sites": sites}
    for key in ("mean_error", "sd_rel_error"):
        out[f"{key}_max"] = max(s[f"{key}_max"] for s in sites.values())
        out[f"{key}_mean"] = float(np.mean([s[f"{key}_mean"] for s in sites.values()]))
    out["wasserstein_mean"] = float(np.mean([s["wasserstein_mean"] for s in sites.values()]))
    if all("kl" in s for s in sites.values()):
        out["kl"] = sum(s["kl"] for s in sites.values())
    return out

