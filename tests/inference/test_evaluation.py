"""inference.evaluate: chunked over rows (same numbers in any chunk size), limited on request."""
import math

import pytest
import torch

import inference
import zoo


def _data(n=257, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, dim, generator=g).mul(0.8).add(0.1), generator=g)


@pytest.mark.parametrize("name", ["fvsbn", "made"])
def test_evaluate_is_the_same_in_any_chunk_size(name):
    x = _data()
    model = zoo.create(name, data_dim=x.shape[1])
    with torch.no_grad():
        expected = -float(model.log_prob(x).double().mean())
    for batch_size in (1, 7, 250, 10_000):
        out = inference.evaluate(model, x, batch_size=batch_size, progress=False)
        assert out["nll"] == pytest.approx(expected, rel=1e-6)
        assert out["num_examples"] == len(x)
        assert out["bits_per_dim"] == pytest.approx(expected / (x.shape[1] * math.log(2)), rel=1e-6)


def test_evaluate_max_examples_scores_the_first_rows():
    x = _data()
    model = zoo.create("fvsbn", data_dim=x.shape[1])
    out = inference.evaluate(model, x, max_examples=40, batch_size=16, progress=False)
    assert out["num_examples"] == 40
    with torch.no_grad():
        assert out["nll"] == pytest.approx(-float(model.log_prob(x[:40]).double().mean()), rel=1e-6)


def test_evaluate_checks_the_data():
    model = zoo.create("fvsbn", data_dim=4)
    with pytest.raises(zoo.DataError, match="binary"):
        inference.evaluate(model, torch.full((3, 4), 0.5), progress=False)


def _exact_predictive_nll(model, x_train, x_test):
    """-mean log p(x | x_train) of Beta-Bernoulli: Bernoulli(E[p | x_train]) per pixel, exactly."""
    post = model.exact_posterior(x_train)["p"].base_dist
    mean = post.concentration1 / (post.concentration1 + post.concentration0)
    return -float(torch.distributions.Bernoulli(probs=mean).log_prob(x_test).sum(-1).double().mean())


def test_evaluate_under_the_autoguide_the_model_was_fitted_with():
    """fit(model, x, guide=AutoNormal): the NLL is the posterior predictive under that guide
    (near the exact one), not the model's own, unfitted guide (its prior predictive)."""
    from pyro.infer.autoguide import AutoNormal

    x, x_test = _data(n=600, seed=1), _data(n=200, seed=2)
    model = zoo.create("bernoulli", data_dim=x.shape[1])
    guide = AutoNormal(model.model)
    inference.fit(model, x, guide=guide, steps=1000, progress=False)
    under_guide = inference.evaluate(model, x_test, guide=guide, progress=False)["nll"]
    own_guide = inference.evaluate(model, x_test, progress=False)["nll"]
    exact = _exact_predictive_nll(model, x, x_test)
    assert own_guide == pytest.approx(x.shape[1] * math.log(2), rel=1e-6)  # its own guide is still the prior
    assert abs(under_guide - exact) < 0.05, (under_guide, exact)
    # the same draws for any chunking of the rows
    again = inference.evaluate(model, x_test, guide=guide, batch_size=7, progress=False)["nll"]
    assert again == pytest.approx(under_guide, rel=1e-9)


def test_evaluate_refuses_a_guide_with_local_latent_sites():
    from pyro.infer.autoguide import AutoNormal

    x = _data(n=64)
    model = zoo.create("vae", data_dim=x.shape[1], hidden=[8], latent_dim=2)
    guide = AutoNormal(model.model)
    inference.fit(model, x, guide=guide, steps=2, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="local latent sites"):
        inference.evaluate(model, x[:10], guide=guide, progress=False)
