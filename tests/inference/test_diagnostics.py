"""InferenceData from every source, pointwise log-likelihoods, PSIS k-hat and posterior distances."""
import math
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pyro.infer.autoguide import AutoDelta, AutoNormal  # noqa: E402

import inference  # noqa: E402
import zoo  # noqa: E402
from inference.diagnostics import (  # noqa: E402
    az,
    diagnose,
    guide_from_distributions,
    khat_reading,
    pointwise_log_likelihood,
    posterior_distances,
    to_inference_data,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def binary_data(n=400):
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.tensor([0.1, 0.5, 0.85]).expand(n, -1), generator=g)


def categorical_data(n=300):
    g = torch.Generator().manual_seed(1)
    return torch.multinomial(torch.tensor([0.1, 0.2, 0.3, 0.4]), n, replacement=True, generator=g)


@pytest.fixture(scope="module")
def fitted():
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=3, prior=(2.0, 2.0))
    inference.fit(model, x, steps=600, progress=False)
    return model, x


def check_common(idata, n_obs, chains, draws):
    assert {"posterior", "log_likelihood", "observed_data"} <= set(idata.groups())
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "obs")
    assert ll.shape == (chains, draws, n_obs)
    assert list(idata.log_likelihood["obs"].values) == list(range(n_obs))
    assert bool(torch.isfinite(torch.as_tensor(ll.values)).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        summary = az.summary(idata)
        loo = az.loo(idata)
        waic = az.waic(idata)
    assert math.isfinite(loo.elpd_loo) and math.isfinite(waic.elpd_waic)
    # a well-identified model: LOO and WAIC agree, and the effective number of parameters is small
    assert abs(loo.elpd_loo - waic.elpd_waic) < 0.5
    axes = az.plot_posterior(idata)
    plt.close("all")
    assert axes is not None
    return summary, loo


def test_from_fitted_guide(fitted):
    model, x = fitted
    idata = to_inference_data(model, x, num_draws=250, num_chains=4)
    post = idata.posterior["p"]
    assert post.dims == ("chain", "draw", "pixel")
    assert post.shape == (4, 250, 3)
    assert list(post["pixel"].values) == [0, 1, 2]
    assert idata.observed_data["x"].dims == ("obs", "pixel")
    assert (idata.observed_data["x"].values == x.numpy()).all()
    summary, loo = check_common(idata, 400, 4, 250)
    assert list(summary.index) == ["p[0]", "p[1]", "p[2]"]
    # independent draws: r_hat ~ 1 and bulk ESS near the number of draws
    assert (summary["r_hat"] < 1.02).all() and (summary["ess_bulk"] > 600).all()
    # three free parameters: p_loo ~ 3
    assert 2.0 < loo.p_loo < 4.0
    # the draws are the guide's: their mean is the guide's mean
    q = torch.distributions.Beta(model.alpha, model.beta)
    assert torch.allclose(torch.as_tensor(post.values.mean((0, 1))).float(), q.mean.detach(), atol=0.004)


def test_from_exact_posterior_categorical():
    x = categorical_data()
    model = zoo.create("categorical", num_categories=4, concentration=0.5)
    exact = model.exact_posterior(x)
    idata = to_inference_data(exact, x, model=model, num_draws=300, num_chains=2)
    post = idata.posterior["probs"]
    assert post.dims == ("chain", "draw", "category") and post.shape == (2, 300, 4)
    assert idata.observed_data["x"].dims == ("obs",)
    assert idata.attrs["inference"] == "exact"
    check_common(idata, 300, 2, 300)
    # pointwise log-likelihood is log probs[x_n] of each draw
    draws = torch.as_tensor(post.values).reshape(-1, 4)
    expected = torch.log(draws[:, x])
    got = torch.as_tensor(idata.log_likelihood["x"].values).reshape(-1, 300)
    assert torch.allclose(got, expected, atol=1e-5)
    # exact draws have the exact moments
    assert torch.allclose(draws.mean(0).float(), exact["probs"].mean, atol=0.01)


def test_pointwise_log_likelihood_matches_bernoulli_formula():
    x = binary_data(50)
    model = zoo.create("bernoulli", data_dim=3)
    p = torch.rand(7, 3)
    lp = pointwise_log_likelihood(model, x, {"p": p}, chunk_size=3)  # several chunks
    expected = (x[None] * p[:, None].log() + (1 - x[None]) * (1 - p[:, None]).log()).sum(-1)
    assert lp.shape == (7, 50)
    assert torch.allclose(lp, expected, atol=1e-5)


def test_from_autoguide_and_draws_dict(fitted):
    _, x = fitted
    model = zoo.create("bernoulli", data_dim=3)
    guide = AutoNormal(model.model)
    inference.fit(model, x, guide=guide, steps=300, lr=0.05, progress=False)
    idata = to_inference_data(model, x, guide=guide, num_draws=100, num_chains=2)
    assert list(idata.posterior.data_vars) == ["p"]  # the guide's own (auxiliary) sites are not latents
    assert idata.posterior["p"].shape == (2, 100, 3)
    # a dict of draws (chains, draws, ...) round-trips
    draws = {"p": torch.as_tensor(idata.posterior["p"].values).float()}
    again = to_inference_data(draws, x, model=model)
    assert (again.posterior["p"].values == idata.posterior["p"].values).all()
    with pytest.raises(ValueError, match="shape"):
        to_inference_data({"p": draws["p"][..., :2]}, x, model=model)


def test_bad_sources():
    x = binary_data(10)
    model = zoo.create("bernoulli", data_dim=3)
    with pytest.raises(TypeError, match="accepts"):
        to_inference_data(42, x)
    with pytest.raises(ValueError, match="model="):
        to_inference_data(model.exact_posterior(x), x)
    with pytest.raises(ValueError, match="not latent sites"):
        to_inference_data({"q": dist.Beta(1.0, 1.0)}, x, model=model)
    with pytest.raises(zoo.DataError):
        to_inference_data(model, x[:, :2])


def test_khat_small_for_exact_large_for_underdispersed(fitted):
    _, x = fitted
    model = zoo.create("bernoulli", data_dim=3, prior=(2.0, 2.0))
    exact = model.exact_posterior(x)
    good = diagnose(model, x, guide=guide_from_distributions(exact), num_samples=2000)
    assert good["khat"] < 0.5 and good["khat_reading"] == "good"
    assert good["is_ess"] > 1900  # the exact posterior as proposal: nearly equal weights
    b = exact["p"].base_dist
    c = 30 * (b.concentration1 + b.concentration0)  # same mean, ~1/30 of the variance
    narrow = {"p": dist.Beta(b.mean * c, (1 - b.mean) * c).to_event(1)}
    bad = diagnose(model, x, guide=guide_from_distributions(narrow), num_samples=2000, reference=exact)
    assert bad["khat"] > 0.7 and bad["khat_reading"] == "unreliable"
    assert bad["distances"]["sd_rel_error_max"] > 0.7


def test_diagnose_fitted_guide_and_point_mass(fitted):
    model, x = fitted
    d = diagnose(model, x, reference=model.exact_posterior(x), num_samples=1000)
    assert d["khat"] < 0.5
    assert d["distances"]["mean_error_max"] < 0.01 and d["distances"]["sd_rel_error_max"] < 0.15
    delta = AutoDelta(model.model)
    inference.fit(model, x, guide=delta, steps=200, lr=0.05, progress=False)
    d = diagnose(model, x, guide=delta, num_samples=50)
    assert d["khat"] == math.inf and "point mass" in d["khat_reading"]


def test_posterior_distances():
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=3)
    exact = model.exact_posterior(x)
    same = posterior_distances(exact, exact)
    assert same["mean_error_max"] == 0 and same["sd_rel_error_max"] == 0 and abs(same["kl"]) < 1e-4
    draws = {"p": exact["p"].sample((20_000,))}
    close = posterior_distances(draws, exact)
    assert close["mean_error_max"] < 0.002 and close["sd_rel_error_max"] < 0.03
    b = exact["p"].base_dist
    c = 2 * (b.concentration1 + b.concentration0) + 1  # half the variance
    half = {"p": dist.Beta(b.mean * c, (1 - b.mean) * c).to_event(1)}
    far = posterior_distances(half, exact)
    assert far["sd_rel_error_max"] == pytest.approx(1 - 2**-0.5, abs=1e-3)
    assert far["kl"] > 0.1 and far["wasserstein_mean"] > close["wasserstein_mean"]
    with pytest.raises(ValueError, match="no shared sites"):
        posterior_distances({"q": draws["p"]}, exact)


def test_khat_reading():
    assert [khat_reading(k) for k in (0.2, 0.6, 0.9, math.inf)] == ["good", "ok", "unreliable", "unreliable"]


@pytest.mark.parametrize("name", zoo.available())
def test_every_binary_model_becomes_inference_data(name):
    """One call for any registered model: a posterior where it has latents the guide draws, else one
    draw of log p(x) at its point estimate (enumerated components summed out); per-data-point latents
    get the importance-sampled marginal; a model without a density gets a warning and no group."""
    cls = zoo.get(name)
    if cls.support != "binary":
        pytest.skip(f"{name} is not a binary model")
    model = zoo.create(name, data_dim=4)
    x = torch.bernoulli(torch.full((12, 4), 0.4), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = to_inference_data(model, x, num_draws=6, num_chains=2)
        d = diagnose(model, x, num_samples=40)
    try:
        model.log_prob(x[:1])
    except zoo.NoDensityError:
        assert "log_likelihood" not in idata.groups() and d["khat"] is None
        assert any("no log_likelihood group" in str(w.message) for w in caught)
        return
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape[-1] == 12
    if idata.attrs.get("point_estimate"):  # the one draw is log p(x) of the model
        assert ll.shape[:2] == (1, 1)
        tol = 1e-5 if model.exact_density else 0.5  # the VAE's: importance-sampled, two independent estimates
        assert torch.allclose(torch.as_tensor(ll.values).reshape(-1).float(), model.log_prob(x).float(), atol=tol)
    else:
        assert ll.shape[:2] == (2, 6)
    for v in getattr(idata, "posterior", {}).values() if "posterior" in idata.groups() else []:
        assert v.dims[:2] == ("chain", "draw")
    if "posterior" in idata.groups():
        assert d["khat"] is not None and d["kl"] >= -1e-6
    else:
        assert d["khat"] is None and "not applicable" in d["khat_reading"]


def test_public_calls_leave_the_callers_random_state(fitted):
    import random

    import numpy as np

    model, x = fitted
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    to_inference_data(model, x, num_draws=20, num_chains=2)
    diagnose(model, x, num_samples=50)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]
    # and the same seed gives the same draws
    a = to_inference_data(model, x, num_draws=5, num_chains=2, seed=3).posterior["p"].values
    b = to_inference_data(model, x, num_draws=5, num_chains=2, seed=3).posterior["p"].values
    assert (a == b).all()


def test_vae_log_likelihood_is_the_importance_sampled_marginal():
    model = zoo.create("vae", data_dim=4, latent_dim=2, hidden=[8])
    x = torch.bernoulli(torch.full((30, 4), 0.4), generator=torch.Generator().manual_seed(0))
    idata = to_inference_data(model, x, num_draws=4, num_chains=2, num_particles=2000)
    assert "importance-sampled marginal" in idata.attrs["log_likelihood"]
    ll = torch.as_tensor(idata.log_likelihood["x"].values).reshape(-1)
    # two independent importance-sampled estimates of the same log p(x_n) (K = 2000 each)
    assert torch.allclose(ll.float(), model.log_prob(x, num_samples=2000).float(), atol=0.05)
    d = diagnose(model, x, num_samples=200)
    assert d["per_data_point"] and d["khat"] >= d["khat_median"]
    assert d["elbo"] <= d["log_evidence"] and d["kl"] >= 0


def test_global_and_local_latents_warn_that_the_log_likelihood_is_conditional():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("schools", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    y = torch.tensor([1.0, 2.0, 3.0])
    draws = {"mu": torch.randn(2, 5), "theta": torch.randn(2, 5, 3)}
    with pytest.warns(UserWarning, match="conditional on the per-data-point latent"):
        idata = to_inference_data(draws, y, model=model)
    assert idata.posterior["theta"].dims == ("chain", "draw", "obs")
    assert "conditional" in idata.attrs["log_likelihood"]
    expected = dist.Normal(torch.as_tensor(idata.posterior["theta"].values[1, 2]).float(), 1.0).log_prob(y)
    assert torch.allclose(torch.as_tensor(idata.log_likelihood["y"].values[1, 2]).float(), expected, atol=1e-5)
