"""The references of the posterior check, on VAEs whose true posterior is known."""
import math

import pyro
import pytest
import torch

import inference
import zoo
from experiments.posterior_check import grid_posterior, guide_check, nuts_posterior

D = 6


def blind_vae(shift: float = 0.0):
    """A VAE whose decoder ignores z (p(z|x) = N(0, I) exactly) and whose guide is
    N(shift, ~1): softplus(0 + log(e - 1)) + 1e-4 = 1.0001."""
    pyro.set_rng_seed(0)
    vae = zoo.create("vae", data_dim=D, latent_dim=2, hidden=(8,))
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
        vae.decoder[-1].bias.copy_(torch.linspace(-2, 2, D))
        vae.encoder[-1].weight.zero_()
        vae.encoder[-1].bias.zero_()
        vae.encoder[-1].bias[:2] = shift
    return vae


def data(n=3):
    return torch.tensor([[1.0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])[:n]


def test_grid_recovers_prior_and_evidence_when_decoder_ignores_z():
    vae = blind_vae()
    x = data()
    grids = grid_posterior(vae, x, size=121, limit=6.0)
    exact = torch.distributions.Bernoulli(logits=torch.linspace(-2, 2, D)).log_prob(x).sum(-1)
    for g, lp in zip(grids, exact):
        assert torch.allclose(g["mean"], torch.zeros(2, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(g["cov"], torch.eye(2, dtype=torch.float64), atol=1e-4)
        assert float(g["log_evidence"]) == pytest.approx(float(lp), abs=1e-5)


def test_guide_check_kl_and_khat():
    """q = prior: KL 0 and a good k-hat; q = N((3, 3), I): KL = 9 (= |3,3|^2 / 2), bad k-hat."""
    x = data(2)
    for shift, kl, good in ((0.0, 0.0, True), (3.0, 9.0, False)):
        vae = blind_vae(shift)
        evidence = torch.stack([g["log_evidence"] for g in grid_posterior(vae, x, size=81)])
        pyro.set_rng_seed(1)
        out = guide_check(vae, x, 4000, evidence)
        assert out["kl"].shape == (2,)
        assert torch.allclose(out["kl"].double(), torch.full((2,), kl, dtype=torch.float64), atol=0.3)
        assert bool((out["khat"] < 0.5).all()) == good and bool((out["khat"] > 0.7).all()) != good


def test_nuts_samples_the_prior_when_decoder_ignores_z():
    vae = blind_vae()
    draws, divergences = nuts_posterior(vae, data(1), num_chains=2, num_warmup=60, num_draws=200, seed=0, max_tree_depth=5)
    assert draws.shape == (2, 200, 1, 2) and len(divergences) == 2
    flat = draws.reshape(-1, 1, 2)
    # 400 draws of N(0, 1) per coordinate: se of the mean ~0.05-0.1 with autocorrelation
    assert flat.mean(0).abs().max() < 0.3
    assert (flat.std(0) - 1).abs().max() < 0.25
    assert all(p.requires_grad for p in vae.parameters())  # restored afterwards


def test_grid_evidence_matches_importance_sampling_on_trained_vae():
    g = torch.Generator().manual_seed(0)
    s = torch.bernoulli(torch.full((300, 1), 0.5), generator=g)
    x = torch.bernoulli(torch.where(s.bool(), torch.tensor(0.9), torch.tensor(0.15)).expand(300, D), generator=g)
    pyro.set_rng_seed(0)
    vae = zoo.create("vae", data_dim=D, latent_dim=2, hidden=(16,))
    inference.fit(vae, x, steps=150, batch_size=100, lr=2e-2, progress=False)
    probe = x[:4]
    evidence = torch.stack([g["log_evidence"] for g in grid_posterior(vae, probe, size=161)])
    # Importance sampling from the defensive mixture 1/2 prior + 1/2 q(z|x): the weights
    # p(x, z) / (p(z)/2 + q(z|x)/2) <= 2 p(x|z) are bounded, so their standard error is a
    # trustworthy yardstick (q alone gave heavy-tailed weights: errors up to 0.13 on some seeds).
    K = 50_000
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        loc, scale = vae.encode(probe)
        q = torch.distributions.Normal(loc, scale)
        prior = torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(loc))
        pick = torch.rand(K, *loc.shape[:-1], 1) < 0.5
        z = torch.where(pick, prior.sample((K,)), q.sample((K,)))
        log_proposal = torch.logaddexp(prior.log_prob(z).sum(-1), q.log_prob(z).sum(-1)) - math.log(2)
        log_w = (vae.log_joint(probe, z) - log_proposal).double()  # (K, 4)
    m = log_w.max(0).values
    w = (log_w - m).exp()
    estimate = w.mean(0).log() + m
    se = w.std(0) / w.mean(0) / K**0.5  # delta method: sd of log mean w
    assert ((evidence - estimate).abs() < 6 * se + 2e-3).all(), (evidence, estimate, se)
    assert math.isfinite(float(evidence.sum()))
