"""ArviZ for every posterior of the zoo, and the checks variational inference needs.

* :func:`to_inference_data`: an ``arviz.InferenceData`` in one call from a fitted zoo
  model (draws from its guide, or from any guide given), a Pyro ``MCMC`` run, an exact
  conjugate posterior (``{site: Distribution}``) or a dict of draws. Every source gets
  ``posterior`` (``chain``, ``draw`` and named dimensions: ``pixel`` for a binary
  model's per-pixel sites, ``category`` for a categorical model's, ``obs`` for sites in
  the data plate), ``observed_data`` and a pointwise ``log_likelihood`` group
  (``log p(x_n | theta_s)`` for every draw s and data point n, computed by running the
  model once under a vectorised plate over the draws), so ``az.loo``/``az.waic`` work.
* :func:`diagnose`: the Pareto-smoothed importance-sampling k-hat of a guide used as a
  proposal for the posterior (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it
  work?"), read as k < 0.5 good, 0.5-0.7 usable, > 0.7 unreliable; and, given a
  reference posterior, the distances of :func:`posterior_distances`.
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
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

from inference.evaluation import _device_of, posterior
from inference.svi import as_tensor
from zoo.base import ZooModel

__all__ = [
    "diagnose",
    "guide_from_distributions",
    "importance_log_weights",
    "khat_reading",
    "latent_sites",
    "pointwise_log_likelihood",
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
def _prototype(model, x) -> pyro.poutine.Trace:
    """One trace of the model on ``x`` (latents drawn from the prior, or from the guide where the
    prior cannot be sampled, e.g. an improper flat prior), without side effects."""
    with torch.no_grad(), poutine.block():
        try:
            return poutine.trace(model.model).get_trace(x)
        except NotImplementedError:
            guide_trace = poutine.trace(model.guide).get_trace(x)
            return poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)


def latent_sites(model, x) -> dict[str, dict]:
    """The model's unobserved sample sites: ``{name: {"shape", "event_dim", "local"}}``.

    ``local`` is True for sites inside the ``data`` plate (one value per data point).
    """
    trace = _prototype(model, x)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        out[name] = dict(
            shape=tuple(site["value"].shape),
            event_dim=site["fn"].event_dim,
            local=any(f.name == "data" for f in site["cond_indep_stack"]),
            enumerated=site["infer"].get("enumerate") is not None,
        )
    return out


def _vectorised(fn, num: int, nesting: int):
    """``fn`` run inside a plate of ``num`` draws left of the model's own plates."""

    def wrapped(*args, **kwargs):
        with pyro.plate("_draws", num, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _batched(value: torch.Tensor, shape: tuple, event_dim: int, nesting: int) -> torch.Tensor:
    """Draws ``(s,) + shape`` reshaped to broadcast under the draw plate (as Predictive does)."""
    batch_dims = len(shape) - event_dim
    return value.reshape((value.shape[0],) + (1,) * (nesting - batch_dims) + tuple(shape))


@torch.no_grad()
def pointwise_log_likelihood(model, data, draws: dict[str, torch.Tensor], *, chunk_size: int | None = None) -> torch.Tensor:
    """``log p(x_n | theta_s)`` of every draw s and data point n: a ``(S, N)`` tensor.

    ``draws`` maps every latent site of the model to ``(S,) + site shape`` values.
    The model runs once per chunk of draws, conditioned on them, under a plate over the
    draws (vectorised: no Python loop over draws or data points). For a site with local
    latents (``z`` in the data plate) the result is the conditional ``log p(x_n | z_n, theta)``.
    A model without latent sites (all parameters point estimates), or given no draws of
    latents it integrates out itself (an enumerated mixture component), gives
    ``model.log_prob(x)`` as a single draw, shape ``(1, N)``; a model without a density
    raises :class:`zoo.NoDensityError`.
    """
    x = as_tensor(data)
    model.check_data(x)
    sites = latent_sites(model, x)
    if not sites:
        return model.log_prob(x).reshape(1, -1)
    missing = sorted(set(sites) - set(draws))
    if missing:
        if not draws:  # latents the model integrates out itself (an enumerated mixture component)
            return model.log_prob(x).reshape(1, -1)  # (or zoo.NoDensityError saying why not)
        raise NotImplementedError(
            f"{type(model).__name__}: no draws for latent sites {missing}; the pointwise "
            "log-likelihood needs a value for every latent site"
        )
    nesting = model.max_plate_nesting
    num = next(iter(draws.values())).shape[0]
    n = x.shape[0]
    if chunk_size is None:  # keep the broadcast (s, N, data_dim) log-probabilities near 2^24 numbers
        chunk_size = max(1, min(num, 2**24 // max(1, n * model.dims_per_example)))
    out = []
    for start in range(0, num, chunk_size):
        values = {
            name: _batched(draws[name][start : start + chunk_size], info["shape"], info["event_dim"], nesting)
            for name, info in sites.items()
        }
        s = next(iter(values.values())).shape[0]
        conditioned = _vectorised(poutine.condition(model.model, data=values), s, nesting)
        with poutine.block():
            trace = poutine.trace(conditioned).get_trace(x)
        site = trace.nodes["x"]
        lp = site["fn"].log_prob(site["value"])
        out.append(_per_data_point(lp, site, s, n, nesting))
    return torch.cat(out)


def _per_data_point(lp: torch.Tensor, site: dict, s: int, n: int, nesting: int) -> torch.Tensor:
    """Reduce a log-prob with batch dims (draws, *plates) to shape (draws, data points)."""
    full = nesting + 1
    if lp.dim() < full:
        lp = lp.reshape((1,) * (full - lp.dim()) + tuple(lp.shape))
    data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == "data"]
    if not data_dims:
        raise NotImplementedError("the observed site 'x' is not in the 'data' plate")
    lp = lp.movedim(full + data_dims[0], 1)
    return lp.expand((s, n) + tuple(lp.shape[2:])).reshape(s, n, -1).sum(-1)


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
    dims: dict | None = None,
    coords: dict | None = None,
) -> az.InferenceData:
    """An ``arviz.InferenceData`` of a posterior of a zoo model.

    :param source: one of

        * a fitted :class:`zoo.ZooModel`: ``num_chains x num_draws`` independent draws from
          its guide (or from ``guide``, e.g. a trained AutoGuide) given ``data``;
        * a ``pyro.infer.MCMC`` that has run (several chains; ``model`` and ``data``
          default to the ones it ran on);
        * a dict ``{site: torch.distributions.Distribution}`` such as
          ``model.exact_posterior(x)``: ``num_chains x num_draws`` exact draws (needs ``model``);
        * a dict ``{site: tensor}`` of draws shaped ``(chains, draws) + site shape``.
    :param data: the data the posterior conditions on (tensor or :class:`zoo.Dataset`);
        becomes ``observed_data`` and the points of ``log_likelihood``.
    :param log_likelihood: add the pointwise ``log_likelihood`` group (variable ``x``,
        dimensions ``chain, draw, obs``).
    :param dims, coords: ArviZ dimension names and coordinates overriding the defaults.
    :returns: InferenceData with groups ``posterior``, ``observed_data``, ``log_likelihood``
        (and ``sample_stats`` with ``diverging`` for MCMC). Independent draws (guide, exact)
        are split into ``num_chains`` chains, so ``r_hat`` ~ 1 and ESS ~ the number of draws
        are what ``az.summary`` should report for them. A model without latent sites (all
        parameters point estimates) gives an empty posterior and one draw of log-likelihood
        (``attrs["point_estimate"] = 1``).
    """
    sample_stats = None
    attrs = {}
    if isinstance(source, pyro.infer.MCMC):
        if model is None:
            model = getattr(source.kernel.model, "__self__", None)
            if not isinstance(model, ZooModel):
                raise TypeError("give model=: the MCMC kernel's model is not a zoo model's method")
        if data is None:
            if not source._args:
                raise ValueError("give data=: the MCMC object has no record of the data it ran on")
            data = source._args[0]
        grouped = source.get_samples(group_by_chain=True)
        x = as_tensor(data)
        sites = latent_sites(model, x)
        grouped = {k: v for k, v in grouped.items() if k in sites}
        sample_stats = _mcmc_stats(source, grouped)
        attrs["inference"] = "mcmc"
    elif isinstance(source, ZooModel):
        if model is not None and model is not source:
            raise ValueError("model= differs from the fitted model given as source")
        model = source
        if data is None:
            raise ValueError("give the data the guide was fitted to")
        x = as_tensor(data)
        sites = latent_sites(model, x)
        pyro.set_rng_seed(seed)
        draws = posterior(model, x, num_chains * num_draws, guide=guide) if sites else {}
        grouped = {k: _by_chain(v, num_chains) for k, v in draws.items() if k in sites}
        attrs["inference"] = "guide" if guide is None else f"guide:{type(guide).__name__}"
    elif isinstance(source, dict):
        if model is None or data is None:
            raise ValueError("give model= and data= with a dict of distributions or draws")
        x = as_tensor(data)
        sites = latent_sites(model, x)
        grouped = {}
        if source and all(isinstance(v, torch.distributions.Distribution) for v in source.values()):
            torch.manual_seed(seed)
            for k, d in source.items():
                grouped[k] = d.sample((num_chains, num_draws))
            attrs["inference"] = "exact"
        elif all(isinstance(v, torch.Tensor) for v in source.values()):
            for k, v in source.items():
                if k in sites and tuple(v.shape[2:]) != sites[k]["shape"]:
                    raise ValueError(
                        f"draws of {k!r} must have shape (chains, draws) + {sites[k]['shape']}, got {tuple(v.shape)}"
                    )
            grouped = dict(source)
            attrs["inference"] = "draws"
        else:
            raise TypeError("a dict source must map sites to Distributions or to tensors of draws")
    else:
        raise TypeError(
            "to_inference_data accepts a fitted zoo model, a pyro.infer.MCMC, or a dict of "
            f"distributions or draws; got {type(source).__name__}"
        )
    model.check_data(x)
    unknown = sorted(set(grouped) - set(sites))
    if unknown:
        raise ValueError(f"{unknown} are not latent sites of {type(model).__name__} (those are {sorted(sites)})")

    site_dims, site_coords = _default_dims(model, sites, x)
    site_dims["x"] = ["obs"] + (["pixel"] if x.dim() == 2 else [])
    site_dims.update(dims or {})
    site_coords.update(coords or {})
    for name in site_dims:  # coordinates of every named dimension in use
        for d, size in zip(site_dims[name], _shape_of(name, grouped, sites, x)):
            site_coords.setdefault(d, np.arange(size))

    posterior_np = {k: v.detach().cpu().double().numpy() for k, v in grouped.items()}
    ll = None
    if log_likelihood:
        if grouped:
            chains, per_chain = next(iter(grouped.values())).shape[:2]
            flat = {k: v.reshape((chains * per_chain,) + v.shape[2:]) for k, v in grouped.items()}
            lp = pointwise_log_likelihood(model, x, flat).reshape(chains, per_chain, -1)
        else:
            lp = pointwise_log_likelihood(model, x, {}).reshape(1, 1, -1)
            attrs["point_estimate"] = 1
        ll = {"x": lp.detach().cpu().double().numpy()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: "more chains than draws" etc.
        idata = az.from_dict(
            posterior=posterior_np or None,
            log_likelihood=ll,
            observed_data={"x": x.detach().cpu().numpy()},
            sample_stats=sample_stats,
            dims={k: v for k, v in site_dims.items() if k in posterior_np or k == "x"},
            coords=site_coords,
            attrs={"model": type(model).__name__, **attrs},
        )
    return idata


def _shape_of(name, grouped, sites, x):
    if name == "x":
        return tuple(x.shape)
    if name in grouped:
        return tuple(grouped[name].shape[2:])
    if name in sites:
        return sites[name]["shape"]
    return ()


def _by_chain(v: torch.Tensor, num_chains: int) -> torch.Tensor:
    return v.reshape((num_chains, v.shape[0] // num_chains) + v.shape[1:])


def _default_dims(model, sites: dict, x) -> tuple[dict, dict]:
    """Named dimensions: ``obs`` (data plate), ``pixel`` / ``category``, else ``SITE_dim_i``.

    A model may set ``arviz_dims = {site: [names]}`` to name its own.
    """
    dims, coords = {}, {}
    own = dict(getattr(model, "arviz_dims", None) or {})
    for name, info in sites.items():
        if name in own:
            dims[name] = list(own[name])
            continue
        shape = info["shape"]
        names = []
        for i, size in enumerate(shape):
            if info["local"] and i == len(shape) - info["event_dim"] - 1:
                names.append("obs")
            elif i == len(shape) - 1 and model.support == "binary" and size == model.data_dim:
                names.append("pixel")
            elif i == len(shape) - 1 and model.support == "categorical" and size == model.num_categories:
                names.append("category")
            else:
                names.append(f"{name}_dim_{i}")
        dims[name] = names
    return dims, coords


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

    def guide(x=None, num_data=None):
        for name, d in distributions.items():
            pyro.sample(name, d)

    return guide


@torch.no_grad()
def importance_log_weights(model, data, guide=None, *, num_samples: int = 1000, chunk_size: int | None = None, seed: int = 0):
    """``log p(x, theta_s) - log q(theta_s)`` for ``num_samples`` draws ``theta_s ~ q``.

    Returns ``(log_weights (S,), draws {site: (S,) + site shape})``. Vectorised with
    Pyro's ``vectorized_importance_weights``, in chunks of draws to bound memory.
    """
    x = as_tensor(data)
    model.check_data(x)
    x = x.to(_device_of(model))
    guide = model.guide if guide is None else guide
    sites = latent_sites(model, x)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no latent sites: there is no posterior to approximate")
    if chunk_size is None:
        chunk_size = max(1, min(num_samples, 2**24 // max(1, x.shape[0] * model.dims_per_example)))
    pyro.set_rng_seed(seed)
    weights, draws = [], {k: [] for k in sites}
    for start in range(0, num_samples, chunk_size):
        s = min(chunk_size, num_samples - start)
        with poutine.block():
            lw, _, guide_trace = vectorized_importance_weights(
                model.model, guide, x, num_samples=s, max_plate_nesting=model.max_plate_nesting
            )
        weights.append(lw.reshape(s))
        for k, info in sites.items():
            draws[k].append(guide_trace.nodes[k]["value"].reshape((s,) + info["shape"]))
    return torch.cat(weights), {k: torch.cat(v) for k, v in draws.items()}


def psis_khat(log_weights) -> float:
    """The Pareto k-hat of the largest importance weights (``az.psislw``)."""
    lw = np.asarray(torch.as_tensor(log_weights, dtype=torch.float64).cpu())
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
    if math.isnan(k):
        return "undefined"
    if k < KHAT_GOOD:
        return "good"
    if k < KHAT_OK:
        return "ok"
    return "unreliable"


def diagnose(model, data, *, guide=None, reference=None, num_samples: int = 1000, seed: int = 0) -> dict:
    """Check a variational fit: PSIS k-hat of the guide as a proposal, and its distance to a reference.

    :param guide: the guide to check (default ``model.guide``).
    :param reference: a reference posterior: ``{site: Distribution}`` (e.g. the exact one),
        ``{site: draws (S, ...)}`` (e.g. from MCMC), or an InferenceData.
    :returns: ``{"khat", "khat_reading", "is_ess", "num_samples"}`` plus ``"distances"``
        (from :func:`posterior_distances`) when a reference is given. A guide whose draws do
        not vary (a point mass such as AutoDelta) is no proposal: k-hat is ``inf``.
    """
    log_w, draws = importance_log_weights(model, data, guide, num_samples=num_samples, seed=seed)
    point_mass = all(bool((v == v[:1]).all()) for v in draws.values())
    k = math.inf if point_mass else psis_khat(log_w)
    w = torch.softmax(log_w.double(), 0)
    out = {
        "khat": k,
        "khat_reading": "point mass (not a proposal)" if point_mass else khat_reading(k),
        "is_ess": float(1.0 / (w**2).sum()),  # importance-sampling effective sample size
        "num_samples": int(num_samples),
    }
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

