"""Likelihood evaluation, posterior draws and exact (conjugate) posteriors."""
from __future__ import annotations

import functools
import math

import torch
from pyro.infer import Predictive
from tqdm.auto import tqdm

from inference.svi import as_tensor
from zoo.base import NoDensityError, ZooModel

__all__ = ["evaluate", "exact_posterior", "posterior", "predictive_log_prob"]


@torch.no_grad()
def evaluate(model, data, *, guide=None, num_draws: int = 1000, seed: int = 0, batch_size: int = 250,
             max_examples: int | None = None, progress: bool = True, desc: str = "evaluate",
             **log_prob_kwargs) -> dict:
    """Score ``model`` on held-out ``data``.

    Returns ``nll`` (mean negative log-likelihood, nats per example), ``bits_per_dim``
    (``nll / (dims * ln 2)``), ``num_examples``, and whatever the model's
    ``evaluation_metrics`` adds (e.g. the VAE's ELBO). For a model with no density
    (``log_prob`` raises :class:`zoo.NoDensityError`) ``nll`` and ``bits_per_dim`` are
    None and ``nll_note`` says why. ``log_prob_kwargs`` go to ``model.log_prob``
    (e.g. ``num_samples`` of an importance-sampled estimate).

    Memory is bounded whatever the size of ``data``: the rows go through ``log_prob``
    ``batch_size`` at a time (moved to the model's device chunk by chunk), and only
    the running sum is kept. ``max_examples`` scores the first that many rows only
    (``num_examples`` says how many were used). A tqdm bar counts the examples
    (``progress=False`` hides it; it appears only for work longer than a second).

    ``guide``: the guide the model was fitted with when it is not the model's own (an
    AutoGuide of ``fit(model, data, guide=...)``; the model's ``log_prob`` would use its own,
    unfitted guide). The NLL is then the posterior predictive under that guide,
    ``-log (1/S) sum_s p(x | theta_s)`` with ``theta_s ~ guide`` (S = ``num_draws``, drawn
    once from ``seed``, the same draws for every row); the model's ``evaluation_metrics``
    (which use its own guide) are left out. A guide with local latent sites (one value per
    training row) cannot score new rows: ``ValueError``.
    """
    x = as_tensor(data)
    if max_examples is not None:
        x = x[: int(max_examples)]
    model.check_data(x)
    device = _device_of(model)
    out = {"num_examples": int(x.shape[0])}
    foreign = guide is not None and getattr(guide, "__self__", None) is not model
    if foreign:
        if log_prob_kwargs:
            raise ValueError(f"log_prob options {sorted(log_prob_kwargs)} do not apply to an evaluation under a guide")
        score = predictive_log_prob(model, guide, x[:2].to(device), num_draws=num_draws, seed=seed)
    else:
        score = functools.partial(model.log_prob, **log_prob_kwargs)
    total = 0.0
    bar = tqdm(total=len(x), desc=desc, unit="ex", disable=not progress, delay=1.0, leave=False, dynamic_ncols=True)
    try:
        with bar:
            for chunk in x.split(batch_size):
                total += float(score(chunk.to(device)).double().sum())
                bar.update(len(chunk))
    except NoDensityError as e:
        out.update(nll=None, bits_per_dim=None, nll_note=str(e))
    else:
        nll = -total / max(x.shape[0], 1)
        out.update(nll=nll, bits_per_dim=nll / (model.dims_per_example * math.log(2)))
    if not foreign:
        out.update(model.evaluation_metrics(x.to(device)))  # models chunk their own (the VAE's ELBO)
    return out


def predictive_log_prob(model, guide, example: torch.Tensor, *, num_draws: int = 1000, seed: int = 0):
    """A function ``x -> log (1/S) sum_s p(x_n | theta_s)``, shape ``(rows,)``: the posterior
    predictive of a zoo model under ``guide`` over its global latent sites, from S =
    ``num_draws`` draws made once here (``example``: a few rows the guide is called with)."""
    from inference.diagnostics import pointwise_log_likelihoods, posterior_draws
    from inference.traces import Program, structure

    local = structure(Program.of(model, example, guide)).local
    if local:
        raise ValueError(
            f"the guide has local latent sites {local} (one value per training row), so it cannot score "
            "held-out rows; evaluate the model with its own guide"
        )
    draws = posterior_draws(model, example, num_draws, guide=guide, seed=seed, progress=False)

    def score(chunk: torch.Tensor) -> torch.Tensor:
        ll, _ = pointwise_log_likelihoods(model, chunk, draws, guide=guide, progress=False)
        lp = sum(v.double().reshape(v.shape[0], -1) for v in ll.values())  # (S, rows)
        if lp.shape[-1] != len(chunk):
            raise ValueError(f"{type(model).__name__}: the log-likelihood is not one value per row under the guide")
        return torch.logsumexp(lp, 0) - math.log(lp.shape[0])

    return score


@torch.no_grad()
def posterior(model, data, num_samples: int = 1000, *, guide=None) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site from the fitted guide, given ``data``.

    Each value has shape ``(num_samples,) + site shape`` (e.g. ``(S, data_dim)`` for the
    ``bernoulli`` model's ``p``, ``(S, N, latent_dim)`` for local latents ``z``). A plain Pyro
    model callable needs its ``guide``; its ``data`` is a tensor (first argument), a
    :class:`zoo.Dataset` or a dict of keyword arguments.
    """
    if not isinstance(model, ZooModel):
        from inference.diagnostics import posterior_draws

        return posterior_draws(model, data, num_samples, guide=guide)
    x = as_tensor(data)
    model.check_data(x)
    x = x.to(_device_of(model))
    guide = model.guide if guide is None else guide
    return dict(Predictive(guide, num_samples=num_samples, parallel=True)(x))


def exact_posterior(model, data) -> dict:
    """The exact posterior of each global latent site, for conjugate models.

    Returns ``{site: torch.distributions.Distribution}``.
    :raises NotImplementedError: the model has no closed-form posterior.
    """
    if not hasattr(model, "exact_posterior"):
        raise NotImplementedError(f"{type(model).__name__} has no exact posterior")
    return model.exact_posterior(as_tensor(data).to(_device_of(model)))


def _device_of(model) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")
