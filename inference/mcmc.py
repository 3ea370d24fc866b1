"""Reference posteriors by NUTS (Pyro's ``MCMC``), with convergence checked.

    >>> run = inference.mcmc(model, x, num_chains=4)        # an MCMCResult (run.mcmc: Pyro's MCMC)
    >>> idata = inference.to_inference_data(run)             # chains, draws, log-likelihood
    >>> run.convergence                                      # r_hat / ESS per site

NUTS (Hoffman & Gelman 2014) runs ``model.model`` on the full data; Pyro moves every
constrained latent (a Beta's ``p``, a Dirichlet's ``probs``) to an unconstrained space and
back. The chains run one after the other in this process (deterministic given ``seed``, no
worker processes), each from its own random initialisation. After the run,
:func:`convergence` computes the rank-normalised split r_hat and the bulk and tail ESS of
every site (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021) and a
:class:`ConvergenceWarning` is issued when any r_hat exceeds 1.01, the ESS is below
100 per chain, or a transition diverged (the thresholds of Vehtari et al. 2021: r_hat < 1.01
with a bulk and tail ESS above 400 for 4 chains). Meant for models small enough for NUTS: a
few hundred latent dimensions at most (not local latents of a large data set).

Defaults: 4 chains x 1000 draws after 500 warm-up steps, so that a correct sampler passes the
1.01 check with high probability on these small models whatever the CPU's float rounding.
Measured (scripts in the notes of this change): on the test's 2-pixel
Beta-Bernoulli, 2 x 400 draws gave a largest r_hat of 1.0006-1.0117 over 8 seeds (1 of 8 above
1.01; 1.016 seen on an Intel CPU), 4 x 1000 gave 1.0013-1.0024 over 4 seeds (bulk ESS >= 2899).
For independent draws (a perfect sampler), the largest r_hat over 64 components exceeds 1.01
in 18.5% of 200 replicates at 2 x 400 draws and in none at 4 x 500 or 4 x 1000.
The model is checked before sampling: its latent sites, its size, and that draws of it turn
into an InferenceData (a failure there costs no sampling time). Models with sites marked for
parallel enumeration (``@config_enumerate``) run as Pyro's NUTS runs them: enumerated out.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from inference.traces import Program, local_rng, structure

__all__ = ["ConvergenceWarning", "MCMCResult", "RHAT_MAX", "convergence", "mcmc"]

#: r_hat above this, or an ESS below ``ESS_PER_CHAIN * chains``, issues a warning.
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100
#: default draws per chain and warm-up steps (see the module docstring for why)
NUM_SAMPLES, WARMUP_STEPS = 1000, 500


class ConvergenceWarning(UserWarning):
    """MCMC draws that should not be trusted as a reference (r_hat, ESS or divergences)."""


@dataclass
class MCMCResult:
    """A NUTS run of :func:`mcmc`.

    :ivar mcmc: the ``pyro.infer.MCMC`` that ran (``get_samples``, ``diagnostics``, ...).
    :ivar model: the model it sampled (a zoo model or the Pyro callable given).
    :ivar data: the data it conditioned on (as given to :func:`mcmc`).
    :ivar convergence: the dict of :func:`convergence` (None with ``check=False``).
    :ivar seconds: wall time of sampling (warm-up included).
    """

    mcmc: MCMC
    model: object
    data: object
    convergence: dict | None
    seconds: float

    def get_samples(self, num_samples=None, group_by_chain: bool = False) -> dict:
        """The draws of the sampled sites (``MCMC.get_samples``)."""
        return self.mcmc.get_samples(num_samples, group_by_chain=group_by_chain)


def mcmc(
    model,
    data=None,
    *,
    num_samples: int = NUM_SAMPLES,
    warmup_steps: int = WARMUP_STEPS,
    num_chains: int = 4,
    seed: int = 0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    max_latent_dim: int = 1000,
    progress: bool = False,
    check: bool = True,
    num_threads: int | None = 1,
) -> MCMCResult:
    """Draw ``num_chains x num_samples`` posterior draws of ``model``'s latents given ``data`` by NUTS.

    :param model: a :class:`zoo.ZooModel` with global latent sites (e.g. ``bernoulli``) or any
        Pyro model callable. Sites marked for parallel enumeration (``@config_enumerate``) are
        summed out by Pyro's NUTS (the plate nesting is read from a trace).
    :param data: the full data set: a tensor (the model's first argument), a :class:`zoo.Dataset`
        or a dict of keyword arguments; no subsampling.
    :param jit_compile: trace the potential energy with the PyTorch JIT (faster per step
        for larger models, slower to start).
    :param max_latent_dim: refuse models with more latent dimensions than this (NUTS is the
        wrong tool for them; use SVI).
    :param num_threads: torch's intra-op threads while sampling (restored afterwards). NUTS
        on a small model is bound by per-step overhead, and a second thread only adds
        contention (measured 5x slower with 2 threads on a busy 2-core machine); None
        leaves the setting alone.
    :param check: compute :func:`convergence` and warn (:class:`ConvergenceWarning`) on failure.
    :returns: an :class:`MCMCResult`.
    :raises ValueError: no latent sites, too many latent dimensions, num_chains < 1, or a model
        whose draws could not be turned into an InferenceData (checked before sampling).
    """
    if int(num_chains) < 1 or int(num_samples) < 1 or int(warmup_steps) < 0:
        raise ValueError("num_chains and num_samples must be >= 1 and warmup_steps >= 0")
    prog = Program.of(model, data)
    st = _preflight(prog, model, data, max_latent_dim)
    kernel = NUTS(prog.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                  jit_compile=jit_compile, ignore_jit_warnings=True, max_plate_nesting=st.nesting)
    with warnings.catch_warnings():
        # Pyro draws chains one by one when they outnumber the CPUs (and says so); we always do
        warnings.filterwarnings("ignore", message="num_chains=.*more than available_cpu")
        run = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                   disable_progbar=not progress)
    if num_chains > 1 and not isinstance(run.sampler, pyro.infer.mcmc.api._UnarySampler):
        # sequential chains in this process: deterministic, and the module's parameters need
        # no pickling into worker processes
        run.sampler = pyro.infer.mcmc.api._UnarySampler(
            kernel, num_samples, run.warmup_steps, num_chains, not progress, initial_params=None, hook=None
        )
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        start = time.perf_counter()
        with local_rng(seed, prog.device):
            run.run(*prog.args, **prog.kwargs)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    result = MCMCResult(run, model, data, None, seconds)
    if check:
        result.convergence = convergence(result, warn=True)
    return result


def _preflight(prog, model, data, max_latent_dim):
    """The model's structure, after checking that it has latents NUTS can sample and that its
    draws convert to an InferenceData (with log-likelihood): a failure costs no sampling time."""
    from inference.diagnostics import to_inference_data

    st = structure(prog)
    if not st.sampled:
        raise ValueError(f"{prog.name} has no latent sites: nothing for MCMC to sample")
    dim = sum(math.prod(s["shape"]) for s in st.sampled.values())
    if dim > max_latent_dim:
        raise ValueError(
            f"{prog.name} has {dim} latent dimensions on this data (> max_latent_dim={max_latent_dim}); "
            "NUTS is too slow there, use SVI or raise max_latent_dim")
    fake = {k: st.trace.nodes[k]["value"].detach().expand((2, 2) + v["shape"]) for k, v in st.sampled.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_inference_data(fake, data, model=model)
    except Exception as e:  # noqa: BLE001 - whatever it is, say it before sampling, not after
        raise ValueError(f"{prog.name}: its MCMC draws could not be turned into an InferenceData "
                         f"({type(e).__name__}: {e}); not sampling") from e
    return st


def convergence(source, *, warn: bool = False) -> dict:
    """r_hat and ESS of every site of an MCMC run (or an InferenceData with several chains).

    :returns: ``{"r_hat_max", "ess_bulk_min", "ess_tail_min", "divergences", "num_chains",
        "num_draws", "ok", "sites": {site: {...}}}``; ``ok`` is False when r_hat > 1.01,
        an ESS < 100 per chain, or any divergence.
    :param warn: issue a :class:`ConvergenceWarning` saying what failed.
    """
    from inference.diagnostics import az, to_inference_data

    if isinstance(source, (MCMC, MCMCResult)):
        idata = to_inference_data(source, log_likelihood=False)
    else:
        idata = source
    post = idata.posterior
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(idata)
        bulk = az.ess(idata, method="bulk")
        tail = az.ess(idata, method="tail")
    sites = {}
    for name in post.data_vars:
        sites[name] = dict(
            r_hat_max=float(np.nanmax(rhat[name].values)),
            ess_bulk_min=float(np.nanmin(bulk[name].values)),
            ess_tail_min=float(np.nanmin(tail[name].values)),
        )
    divergences = 0
    if hasattr(idata, "sample_stats") and "diverging" in idata.sample_stats:
        divergences = int(idata.sample_stats["diverging"].values.sum())
    out = dict(
        r_hat_max=max(s["r_hat_max"] for s in sites.values()),
        ess_bulk_min=min(s["ess_bulk_min"] for s in sites.values()),
        ess_tail_min=min(s["ess_tail_min"] for s in sites.values()),
        divergences=divergences,
        num_chains=int(chains),
        num_draws=int(draws),
        sites=sites,
    )
    problems = []
    if chains > 1 and not out["r_hat_max"] <= RHAT_MAX:
        problems.append(f"r_hat up to {out['r_hat_max']:.3f} (> {RHAT_MAX})")
    min_ess = ESS_PER_CHAIN * chains
    if not min(out["ess_bulk_min"], out["ess_tail_min"]) >= min_ess:
        problems.append(
            f"ESS as low as {min(out['ess_bulk_min'], out['ess_tail_min']):.0f} (< {min_ess}: 100 per chain)"
        )
    if divergences:
        problems.append(f"{divergences} divergent transitions")
    if chains < 2:
        problems.append("one chain: r_hat cannot be checked")
    out["ok"] = not problems
    out["problems"] = problems
    if warn and problems:
        warnings.warn("MCMC did not pass its convergence checks: " + "; ".join(problems), ConvergenceWarning, stacklevel=2)
    return out
