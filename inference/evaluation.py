"""Likelihood evaluation, posterior draws and exact (conjugate) posteriors."""
from __future__ import annotations

import math

import torch
from pyro.infer import Predictive
from tqdm.auto import tqdm

from inference.svi import as_tensor
from zoo.base import NoDensityError, ZooModel

__all__ = ["evaluate", "exact_posterior", "posterior"]


@torch.no_grad()
def evaluate(model, data, *, batch_size: int = 250, max_examples: int | None = None,
             progress: bool = True, desc: str = "evaluate", **log_prob_kwargs) -> dict:
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
    """
    x = as_tensor(data)
    if max_examples is not None:
        x = x[: int(max_examples)]
    model.check_data(x)
    device = _device_of(model)
    out = {"num_examples": int(x.shape[0])}
    total = 0.0
    bar = tqdm(total=len(x), desc=desc, unit="ex", disable=not progress, delay=1.0, leave=False, dynamic_ncols=True)
    try:
        with bar:
            for chunk in x.split(batch_size):
                total += float(model.log_prob(chunk.to(device), **log_prob_kwargs).double().sum())
                bar.update(len(chunk))
    except NoDensityError as e:
        out.update(nll=None, bits_per_dim=None, nll_note=str(e))
    else:
        nll = -total / max(x.shape[0], 1)
        out.update(nll=nll, bits_per_dim=nll / (model.dims_per_example * math.log(2)))
    out.update(model.evaluation_metrics(x.to(device)))  # models chunk their own (the VAE's ELBO)
    return out


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
