"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

Draw theta ~ p(theta) and a data set x ~ p(x | theta) from the model, compute L posterior
draws theta_1..L ~ q(theta | x) and the rank of theta among them (how many draws are
below it, 0..L) for every scalar component. If q is the exact posterior, each rank is
uniform on 0..L whatever the model; a q that is too narrow piles ranks at both ends
(a U), one too wide in the middle, a biased one to one side. The uniformity test is
Pearson's chi-square over equal-probability bins of ranks.

    >>> result = inference.sbc(model, inference.sbc_exact(model), num_simulations=200)
    >>> result.p_value, result.rejects()
    >>> result.plot("sbc.png")

``posterior_fn(x)`` returns ``{site: Distribution}`` or ``{site: draws (L, ...)}``; ready
made: :func:`sbc_exact` (the conjugate posterior) and :func:`sbc_fitted_guide` (fit a fresh
copy of the model's guide to every simulated data set with :func:`inference.fit`).

Independent components: a model whose components are independent a priori and a
posteriori (the Beta-Bernoulli model, one Beta per pixel) is many one-dimensional SBC
replicates in one simulation: ``pool=True`` tests all ranks together, so one fit of a
200-pixel model gives 200 calibration replicates. Otherwise (``pool=False``) each
component is tested on its own and the smallest p-value is Bonferroni-corrected.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyro.poutine as poutine
import torch

from inference.traces import Program, call_args, local_rng, structure
from zoo.base import ZooModel

__all__ = ["SBCResult", "sbc", "sbc_exact", "sbc_fitted_guide", "uniformity_test"]


@dataclass
class SBCResult:
    """Ranks of an SBC run and their uniformity test.

    :ivar ranks: int array ``(num_simulations, num_components)``, values in ``0..num_draws``.
    :ivar names: one label per component (``"p[3]"``).
    :ivar num_draws: L, posterior draws per simulation (ranks take L + 1 values).
    :ivar num_bins: bins of the chi-square test (each holds (L + 1) / num_bins ranks).
    :ivar pooled: whether the test pooled all components' ranks.
    :ivar chi2: the chi-square statistic (pooled) or the largest per component.
    :ivar p_value: the test's p-value (per component: Bonferroni-corrected minimum).
    :ivar component_p_values: per-component p-values (None when pooled).
    """

    ranks: np.ndarray
    names: list[str]
    num_draws: int
    num_bins: int
    pooled: bool
    chi2: float
    p_value: float
    component_p_values: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def rejects(self, alpha: float = 0.01) -> bool:
        """Whether uniformity is rejected at level ``alpha``."""
        return bool(self.p_value < alpha)

    def to_dict(self) -> dict:
        return dict(
            num_simulations=int(self.ranks.shape[0]),
            num_components=int(self.ranks.shape[1]),
            num_draws=self.num_draws,
            num_bins=self.num_bins,
            pooled=self.pooled,
            chi2=self.chi2,
            p_value=self.p_value,
            **self.extra,
        )

    def plot(self, path, *, title: str | None = None) -> Path:
        """Save the rank histogram (with a 99% band for uniform ranks) and the ECDF difference plot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from scipy.stats import binom

        ranks = self.ranks.reshape(-1)
        n, L, B = ranks.size, self.num_draws, self.num_bins
        fig = Figure(figsize=(10, 4))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        counts = np.bincount(ranks * B // (L + 1), minlength=B)
        lo, hi = binom.ppf(0.005, n, 1 / B), binom.ppf(0.995, n, 1 / B)
        ax1.axhspan(lo, hi, color="0.85", label="99% band if uniform")
        ax1.bar(np.arange(B), counts, width=0.9, color="C0")
        ax1.axhline(n / B, color="0.4", lw=1)
        ax1.set_xlabel(f"rank bin ({(L + 1) // B} ranks each)")
        ax1.set_ylabel("count")
        ax1.legend(loc="lower right")
        ax1.set_title(f"rank histogram (p = {self.p_value:.3g})")
        # ECDF difference: F_n(u) - u for the normalised ranks, with a pointwise 95% band
        u = np.linspace(0, 1, 201)
        z = (np.sort(ranks) + 0.5) / (L + 1)
        ecdf = np.searchsorted(z, u, side="right") / n
        band = 1.96 * np.sqrt(u * (1 - u) / n)
        ax2.fill_between(u, -band, band, color="0.85", label="95% pointwise band")
        if not self.pooled and self.ranks.shape[1] <= 12:
            for j in range(self.ranks.shape[1]):
                zj = (np.sort(self.ranks[:, j]) + 0.5) / (L + 1)
                ax2.plot(u, np.searchsorted(zj, u, side="right") / zj.size - u, lw=0.7, alpha=0.6)
        ax2.plot(u, ecdf - u, color="k", lw=1.5, label="all ranks")
        ax2.axhline(0, color="0.4", lw=1)
        ax2.set_xlabel("normalised rank")
        ax2.set_ylabel("ECDF - uniform")
        ax2.legend(loc="lower right")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        return path


def uniformity_test(ranks, num_draws: int, num_bins: int) -> tuple[float, float]:
    """Pearson's chi-square test that ``ranks`` (in 0..num_draws) are uniform: (chi2, p)."""
    from scipy.stats import chisquare

    ranks = np.asarray(ranks).reshape(-1)
    if (num_draws + 1) % num_bins:
        raise ValueError(f"num_bins={num_bins} must divide num_draws + 1 = {num_draws + 1}")
    counts = np.bincount(ranks * num_bins // (num_draws + 1), minlength=num_bins)
    stat, p = chisquare(counts)
    return float(stat), float(p)


def _default_bins(num_draws: int, n: int) -> int:
    """The most bins (<= 20) that divide L + 1 and expect >= 5 ranks each."""
    for b in range(min(20, num_draws + 1), 1, -1):
        if (num_draws + 1) % b == 0 and n / b >= 5:
            return b
    raise ValueError(
        f"too few ranks ({n}) for a chi-square test over bins of 0..{num_draws}; "
        "use more simulations or components"
    )


def sbc(
    model,
    posterior_fn: Callable,
    *,
    num_simulations: int = 100,
    num_data: int = 20,
    num_draws: int = 99,
    num_bins: int | None = None,
    pool: bool = False,
    sites: list[str] | None = None,
    data=None,
    seed: int = 0,
) -> SBCResult:
    """Simulation-based calibration of ``posterior_fn`` for ``model``.

    :param model: a :class:`zoo.ZooModel`, whose ``model(None, num_data=N)`` simulates its
        global latents from the prior and returns N new data points; or a Pyro model callable
        with ``data`` (its arguments: a tensor, :class:`zoo.Dataset` or dict of keyword
        arguments), simulated with its observed sites drawn (``poutine.uncondition``).
    :param posterior_fn: ``x -> {site: Distribution}`` or ``{site: draws (L, ...)}``
        (:func:`sbc_exact`, :func:`sbc_fitted_guide`). For a plain program it gets the model
        conditioned on the simulated observations (a callable taking ``data``'s arguments).
    :param num_simulations: data sets simulated.
    :param num_data: data points per simulated data set (zoo models).
    :param num_draws: L, posterior draws per data set (ranks take L + 1 values).
    :param num_bins: bins of the chi-square test (default: up to 20, dividing L + 1).
    :param pool: test all components' ranks together (right when components are
        independent, e.g. the Beta-Bernoulli model's pixels); else per component with a
        Bonferroni correction.
    :param sites: the latent sites to check (default: all global ones, found structurally).
    :returns: an :class:`SBCResult`. The caller's random state is left as it was.
    """
    if num_simulations < 1 or num_draws < 1 or num_data < 1:
        raise ValueError("num_simulations, num_draws and num_data must be positive")
    g = torch.Generator().manual_seed(seed)
    rows, names, chosen = [], None, None
    for i in range(num_simulations):
        with local_rng(seed * 100_003 + i):
            truth_trace, x = _simulate(model, num_data, data)
            if chosen is None:
                chosen = _global_sites(model, x, data, sites)
            truth = {k: truth_trace.nodes[k]["value"] for k in chosen}
            post = posterior_fn(x)
        row, labels = [], []
        for k in chosen:
            draws = _draws_of(post[k], k, num_draws, g)
            t = truth[k].reshape(-1)
            row.append((draws.reshape(num_draws, -1) < t).sum(0))
            labels += [f"{k}[{j}]" for j in range(t.numel())]
        rows.append(torch.cat(row))
        names = labels
    ranks = torch.stack(rows).cpu().numpy().astype(np.int64)
    return _result(ranks, names, num_draws, num_bins, pool)


def _simulate(model, num_data, data):
    """(trace of one simulation, what posterior_fn gets: new data, or the conditioned program)."""
    with torch.no_grad(), poutine.block():
        if isinstance(model, ZooModel):
            trace = poutine.trace(model.model).get_trace(None, num_data=num_data)
            return trace, trace.nodes["_RETURN"]["value"]
        args, kwargs = call_args(data)
        st = structure(Program.of(model, data))
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    observed = {k: trace.nodes[k]["value"] for k in st.observed}
    return trace, poutine.condition(model, data=observed)


def _global_sites(model, x, data, sites):
    prog = Program.of(model, x) if isinstance(model, ZooModel) else Program.of(model, data)
    info = structure(prog).sampled
    chosen = sites or [k for k, v in info.items() if not v["local"]]
    if not chosen:
        raise ValueError(f"{prog.name} has no global latent sites to calibrate")
    return chosen


def _draws_of(d, k, num_draws, g):
    if isinstance(d, torch.distributions.Distribution):
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
            return d.sample((num_draws,))
    draws = torch.as_tensor(d)
    if draws.shape[0] != num_draws:
        raise ValueError(f"posterior_fn gave {draws.shape[0]} draws of {k!r}, expected {num_draws}")
    return draws


def _result(ranks, names, num_draws, num_bins, pool) -> SBCResult:
    n = ranks.size if pool else ranks.shape[0]
    bins = num_bins or _default_bins(num_draws, n)
    if pool:
        chi2, p = uniformity_test(ranks, num_draws, bins)
        per = None
    else:
        tests = [uniformity_test(ranks[:, j], num_draws, bins) for j in range(ranks.shape[1])]
        per = [t[1] for t in tests]
        j = int(np.argmin(per))
        chi2, p = tests[j][0], min(1.0, per[j] * len(per))
    return SBCResult(ranks=ranks, names=names, num_draws=num_draws, num_bins=bins, pooled=pool,
                     chi2=chi2, p_value=p, component_p_values=per)


def sbc_exact(model) -> Callable:
    """``posterior_fn`` giving the model's exact conjugate posterior."""
    if not hasattr(model, "exact_posterior"):
        raise NotImplementedError(f"{type(model).__name__} has no exact posterior")
    return model.exact_posterior


def sbc_fitted_guide(model, *, num_draws: int = 99, guide_factory: Callable | None = None, **fit_kwargs) -> Callable:
    """``posterior_fn`` that fits a fresh copy of ``model`` (its guide, or ``guide_factory(copy)``)
    to each simulated data set with :func:`inference.fit` and returns ``num_draws`` guide draws."""
    import inference

    initial = copy.deepcopy(model)
    fit_kwargs.setdefault("progress", False)

    def posterior_fn(x):
        fresh = copy.deepcopy(initial)
        guide = guide_factory(fresh) if guide_factory is not None else None
        inference.fit(fresh, x, guide=guide, **fit_kwargs)
        return inference.posterior(fresh, x, num_draws, guide=guide)

    return posterior_fn
