"""Training objectives, chosen by name.

=================  ====================================================================
name               objective
=================  ====================================================================
``elbo``           :class:`pyro.infer.Trace_ELBO`
``meanfield``      :class:`pyro.infer.TraceMeanField_ELBO` (analytic KL where known)
``enum``           :class:`pyro.infer.TraceEnum_ELBO` (discrete latents summed out)
``iwae``           importance-weighted bound of Burda et al. 2016 (``num_particles`` K)
``renyi``          Renyi alpha-bound of Li & Turner 2016 (``alpha`` = 0.5, K particles)
``jit_<name>``     any of the above compiled with ``torch.jit.trace`` (:class:`Traced`)
=================  ====================================================================

Every objective provides ``differentiable_loss(model, guide, *args, **kwargs)``: the
negative bound, a differentiable scalar, which is all the engine needs.
"""
from __future__ import annotations

import math

import pyro.infer as infer
import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_identically_zero
from pyro.poutine.util import site_is_subsample

from inference.traced import Traced

__all__ = ["OBJECTIVES", "RenyiBound", "Traced", "data_plate_frame", "make_objective"]


class RenyiBound(ELBO):
    r"""The Renyi alpha-bound, with the IWAE bound (``alpha = 0``) as its special case.

    For each data point n with local latents z and K guide draws z_k,

    .. math:: \mathcal{L}_\alpha = \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k
              \Big(\frac{p(x_n, z_k)}{q(z_k \mid x_n)}\Big)^{1-\alpha}.

    Unlike :class:`pyro.infer.RenyiELBO` (pyro-ppl 1.9.2), which log-sum-exps the
    *scaled* log-weights and so is biased under minibatch subsampling, this applies the
    data plate's scale *after* the per-data-point log-mean-exp, and it provides
    ``differentiable_loss``. The data plate is found by structure
    (:func:`data_plate_frame`), whatever its name. Models with only global latents (no
    latent site inside the data plate) get one importance weight per particle for the whole data set.
    Latents both global and local are not supported (there is no per-point bound).
    Particles are vectorised; the guide must be reparameterisable.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: int = 1):
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO: use objective 'elbo'")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.alpha = alpha

    def _get_trace(self, model, guide, args, kwargs):
        from pyro.infer.enum import get_importance_trace

        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        K = self.num_particles
        particle_dim = -self.max_plate_nesting  # vectorised ELBOs add the particle plate to it
        plate = data_plate_frame(model_trace, args)
        glob = 0.0  # (K,) log-weight of sites outside the data plate
        local = 0.0  # (K, B) per-data-point log-weight, unscaled
        scale = 1.0
        has_local_latent = has_global_latent = False
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                if guide_trace is trace and not is_identically_zero(site["score_parts"][1]):
                    raise NotImplementedError(
                        "the Renyi/IWAE objective needs a reparameterisable guide"
                    )
                lp = site["unscaled_log_prob"]
                frames = [f for f in site["cond_indep_stack"] if plate is not None and f.name == plate]
                if frames:
                    data_dim = frames[0].dim
                    lp = _sum_rightmost_except(lp, keep=(particle_dim, data_dim))
                    local = local + sign * lp
                    scale = site["scale"]
                    if trace is guide_trace:
                        has_local_latent = True
                else:
                    lp = _sum_rightmost_except(lp, keep=(particle_dim,))
                    glob = glob + sign * lp
                    if trace is guide_trace:
                        has_global_latent = True
        if has_local_latent and has_global_latent:
            raise NotImplementedError(
                "the Renyi/IWAE objective needs latents either all local or all global"
            )
        a = 1.0 - self.alpha
        if has_local_latent:  # local: log-mean-exp per data point, then scale
            bound = torch.logsumexp(a * local, dim=0) - math.log(K)
            total = scale * bound.sum() / a + _mean(glob)
        else:  # global: one weight per particle for the whole (scaled) data set
            log_w = glob + (scale * local.sum(-1) if torch.is_tensor(local) else 0.0)
            total = (torch.logsumexp(a * log_w, dim=0) - math.log(K)) / a
        return -total

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


#: the plate Pyro adds for vectorised particles (not a plate of the model)
_PARTICLE_PLATE = "num_particles_vectorized"


def data_plate_frame(model_trace, args=()) -> str | None:
    """The name of the data plate of a model trace, found by structure, not by name.

    Candidates are the plates enclosing every observed site. Of those, the one that
    subsamples (a minibatch scaled to the data set); else the one whose size is the
    number of rows of the first tensor argument; else the only one. None when the
    observed sites share no plate (all latents are then global).

    :raises ValueError: several plates qualify equally (the bound would depend on the pick).
    """
    observed = [s for s in model_trace.nodes.values()
                if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)]
    if not observed:
        return None
    frames = None
    for site in observed:
        here = {f.name: f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLE_PLATE}
        frames = here if frames is None else {k: v for k, v in frames.items() if k in here}
    if not frames:
        return None
    if len(frames) == 1:
        return next(iter(frames))
    sizes = {}
    for name in frames:
        sub = model_trace.nodes.get(name)
        if sub is not None and site_is_subsample(sub):
            sizes[name] = (sub["fn"].size, len(sub["value"]))
    subsampling = [n for n, (full, b) in sizes.items() if b < full]
    if len(subsampling) == 1:
        return subsampling[0]
    rows = next((a.shape[0] for a in args if torch.is_tensor(a) and a.dim() > 0), None)
    by_rows = [n for n in frames if n in sizes and sizes[n][1] == rows]
    if len(by_rows) == 1:
        return by_rows[0]
    raise ValueError(
        f"cannot tell the data plate among the plates {sorted(frames)} that enclose every observed site "
        "(none subsamples, and not exactly one has the data's size): the importance-weighted bound "
        "needs to know which plate holds the data points"
    )


def _sum_rightmost_except(t: torch.Tensor, keep: tuple[int, ...]) -> torch.Tensor:
    """Sum a (K, ..., B)-shaped log-prob over every dim but the particle (and data) dims.

    The result has shape (K,) or (K, B); size-1 broadcast dims are dropped.
    """
    if not torch.is_tensor(t):
        return t
    ndim = max(t.dim(), max(-d for d in keep))
    t = t.reshape((1,) * (ndim - t.dim()) + t.shape)
    keep_pos = sorted(ndim + d for d in keep)
    drop = [i for i in range(ndim) if i not in keep_pos]
    t = t.sum(drop) if drop else t
    return t


def _mean(t):
    return t.mean(0).sum() if torch.is_tensor(t) else t


OBJECTIVES = {
    "elbo": infer.Trace_ELBO,
    "meanfield": infer.TraceMeanField_ELBO,
    "enum": infer.TraceEnum_ELBO,
    "iwae": lambda **kw: RenyiBound(alpha=0.0, **kw),
    "renyi": lambda **kw: RenyiBound(alpha=0.5, **kw),
}
OBJECTIVES.update({f"jit_{name}": name for name in list(OBJECTIVES)})


def make_objective(name: str, *, num_particles: int = 1, max_plate_nesting: int = 1) -> ELBO:
    """The objective called ``name`` (see the module docstring).

    ``num_particles`` > 1 averages (ELBO) or importance-weights (``iwae``, ``renyi``)
    that many guide draws, vectorised. ``iwae``/``renyi`` default to K = 2.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    kw = dict(max_plate_nesting=max_plate_nesting, num_particles=int(num_particles))
    if name in ("iwae", "renyi"):
        kw["num_particles"] = max(kw["num_particles"], 2)
    else:
        kw["vectorize_particles"] = kw["num_particles"] > 1
    if name.startswith("jit_"):
        return Traced(make_objective(name[4:], num_particles=num_particles, max_plate_nesting=max_plate_nesting))
    return OBJECTIVES[name](**kw)
