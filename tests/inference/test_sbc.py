"""Simulation-based calibration: uniform ranks for correct posteriors, rejection for a wrong one."""
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import zoo
from inference.sbc import sbc, sbc_exact, sbc_fitted_guide, uniformity_test


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def half_variance(model):
    """The exact Beta posterior's mean with half its variance (var = m(1-m)/(c+1): c -> 2c+1)."""

    def posterior_fn(x):
        b = model.exact_posterior(x)["p"].base_dist
        c = 2 * (b.concentration1 + b.concentration0) + 1
        return {"p": dist.Beta(b.mean * c, (1 - b.mean) * c).to_event(1)}

    return posterior_fn


def test_exact_posterior_is_calibrated():
    model = zoo.create("bernoulli", data_dim=4, prior=(2.0, 3.0))
    result = sbc(model, sbc_exact(model), num_simulations=200, num_data=15, num_draws=99)
    assert result.ranks.shape == (200, 4) and result.ranks.min() >= 0 and result.ranks.max() <= 99
    assert result.names == ["p[0]", "p[1]", "p[2]", "p[3]"]
    assert not result.pooled and len(result.component_p_values) == 4
    assert not result.rejects(1e-4), result.to_dict()  # a correct posterior: p ~ U(0,1)


def test_exact_dirichlet_posterior_is_calibrated():
    model = zoo.create("categorical", num_categories=3, concentration=[1.0, 2.0, 3.0])
    result = sbc(model, sbc_exact(model), num_simulations=200, num_data=10)
    assert result.ranks.shape == (200, 3)
    assert not result.rejects(1e-4), result.to_dict()  # a correct posterior: p ~ U(0,1)


def test_half_variance_is_rejected(tmp_path):
    model = zoo.create("bernoulli", data_dim=4, prior=(2.0, 3.0))
    result = sbc(model, half_variance(model), num_simulations=200, num_data=15)
    assert result.rejects(0.01) and result.p_value < 1e-4, result.to_dict()
    # too narrow: ranks pile up at both ends
    r = result.ranks.reshape(-1)
    assert np.mean((r < 10) | (r >= 90)) > 0.28  # 0.2 if calibrated; ~0.37 +- 0.015 measured
    path = result.plot(tmp_path / "sbc.png", title="half variance")
    assert path.stat().st_size > 10_000


def test_fitted_conjugate_guide_is_calibrated():
    """One fit of a 200-pixel Beta-Bernoulli model = 200 independent one-pixel SBC replicates, twice."""
    model = zoo.create("bernoulli", data_dim=200)
    result = sbc(model, sbc_fitted_guide(model, steps=400), num_simulations=2, num_data=20, pool=True, seed=3)
    assert result.pooled and result.ranks.shape == (2, 200)
    assert not result.rejects(1e-4), result.to_dict()  # a correct posterior: p ~ U(0,1)


def test_undertrained_guide_is_rejected():
    """An AutoNormal guide (Normal on the logit) stopped after 60 small steps is still near its
    initialisation, not the posterior: SBC sees it."""
    model = zoo.create("bernoulli", data_dim=200, prior=(0.3, 0.3))
    fit = sbc_fitted_guide(model, steps=60, lr=0.02, guide_factory=lambda m: AutoNormal(m.model))
    result = sbc(model, fit, num_simulations=1, num_data=5, pool=True, seed=3)
    assert result.rejects(0.01), result.to_dict()


def test_bad_arguments():
    model = zoo.create("bernoulli", data_dim=2)
    with pytest.raises(ValueError, match="positive"):
        sbc(model, sbc_exact(model), num_simulations=0)
    with pytest.raises(ValueError, match="divide"):
        uniformity_test(np.arange(10), num_draws=9, num_bins=3)
    with pytest.raises(ValueError, match="too few ranks"):
        sbc(model, sbc_exact(model), num_simulations=3)
    with pytest.raises(ValueError, match="draws"):
        sbc(model, lambda x: {"p": torch.rand(5, 2)}, num_simulations=30, num_draws=9)
