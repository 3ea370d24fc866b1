"""Diagnostics of plain Pyro programs (Pyro's own tutorials), with no zoo-specific names or attributes."""
import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, Trace_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import inference
from inference.diagnostics import az, diagnose, to_inference_data
from inference.mcmc import mcmc


@pytest.fixture(autouse=True)
def clean():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=False):  # as plain Pyro has it
        yield
    torch.set_num_threads(n)


def gmm(plate="data", site="obs"):
    """Pyro's GMM tutorial: enumerated ``assignment``, MAP of the globals by AutoDelta."""
    K = 2

    @config_enumerate
    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
        with pyro.plate("components", K):
            locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
        with pyro.plate(plate, len(data)):
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample(site, dist.Normal(locs[assignment], scale), obs=data)

    return model


GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def fit_gmm(model):
    guide = AutoDelta(poutine.block(model, expose=["weights", "locs", "scale"]),
                      init_loc_fn=lambda site: {"weights": torch.ones(2) / 2, "scale": torch.tensor(1.0),
                                                "locs": torch.tensor([0.0, 10.0])}[site["name"]])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), TraceEnum_ELBO(max_plate_nesting=1))
    for _ in range(200):
        svi.step(GMM_DATA)
    return guide


def gmm_marginal(guide):
    with torch.no_grad():
        m = guide(GMM_DATA)
        comp = dist.Normal(m["locs"], m["scale"]).log_prob(GMM_DATA[:, None]) + m["weights"].log()
        return torch.logsumexp(comp, -1), comp.softmax(-1)


@pytest.mark.parametrize("plate,site", [("data", "obs"), ("N", "y")])
def test_gmm_tutorial(plate, site):
    model = gmm(plate, site)
    guide = fit_gmm(model)
    idata = to_inference_data(model, GMM_DATA, guide=guide, num_draws=20, num_chains=2, discrete=True)
    assert set(idata.posterior.data_vars) == {"weights", "scale", "locs", "assignment"}
    assert idata.posterior["scale"].dims == ("chain", "draw")
    assert idata.posterior["locs"].dims == ("chain", "draw", "components")
    ll = idata.log_likelihood[site]
    assert ll.dims == ("chain", "draw", "obs" if site != "obs" else plate) and ll.shape == (2, 20, 5)
    # the assignment is summed out: log sum_k w_k N(x_n; loc_k, scale) at the MAP
    marginal, resp = gmm_marginal(guide)
    assert torch.allclose(torch.as_tensor(ll.values[0, 0]).float(), marginal, atol=1e-4)
    # infer_discrete: the assignments follow the responsibilities (here near 0/1)
    z = torch.as_tensor(idata.posterior["assignment"].values).reshape(-1, 5)
    assert ((z == resp.argmax(-1)).double().mean(0) > 0.9).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata, var_names=["locs"])
        loo = az.loo(idata)
    assert list(summary.index) == ["locs[0]", "locs[1]"]
    assert math.isfinite(loo.elpd_loo) and loo.elpd_loo == pytest.approx(float(marginal.sum()), abs=1e-3)
    d = diagnose(model, GMM_DATA, guide=guide, num_samples=20)
    assert d["khat"] == math.inf and "point mass" in d["khat_reading"]


def test_gmm_tutorial_by_nuts_enumerates():
    model = gmm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inference.ConvergenceWarning)
        run = mcmc(model, GMM_DATA, num_samples=25, warmup_steps=25, num_chains=2, seed=0)
    assert isinstance(run, inference.MCMCResult) and run.seconds > 0 and run.convergence["num_chains"] == 2
    idata = to_inference_data(run)
    assert "assignment" not in idata.posterior and idata.posterior["scale"].dims == ("chain", "draw")
    assert idata.log_likelihood["obs"].shape == (2, 25, 5)
    assert bool(torch.isfinite(torch.as_tensor(idata.log_likelihood["obs"].values)).all())


def test_mcmc_fails_before_sampling(monkeypatch):
    """A model whose draws cannot be converted fails before NUTS runs a single step."""

    def model(data):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(p), infer={"enumerate": "sequential"})
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data)

    monkeypatch.setattr(pyro.infer.MCMC, "run", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises((ValueError, NotImplementedError), match="sequential"):
        mcmc(model, torch.zeros(3))


class BayesianRegression(PyroModule):
    """Pyro's Bayesian-regression tutorial: nn.Linear with PyroSample weights (cannot broadcast over draws)."""

    def __init__(self, in_features=3, out_features=1):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def test_bayesian_regression_tutorial():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * torch.randn(40, generator=g)
    data = {"x": x, "y": y}
    model = BayesianRegression()
    guide = AutoDiagonalNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(**data)
    torch_state, numpy_state = torch.get_rng_state(), __import__("numpy").random.get_state()[1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        idata = to_inference_data(model, data, guide=guide, num_draws=30, num_chains=2)
        d = diagnose(model, data, guide=guide, num_samples=60)
        loo = az.loo(idata)
        summary = az.summary(idata)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the caller's random state untouched
    assert (__import__("numpy").random.get_state()[1] == numpy_state).all()
    assert idata.attrs.get("vectorised") == 0  # ran one draw at a time
    post = idata.posterior
    assert post["linear.weight"].shape == (2, 30, 1, 3) and post["sigma"].dims == ("chain", "draw")
    assert "sigma" in summary.index.tolist()
    # the pointwise log-likelihood is Normal(x w + b, sigma) of each draw
    w = torch.as_tensor(post["linear.weight"].values[0, 3]).float()
    b = torch.as_tensor(post["linear.bias"].values[0, 3]).float()
    s = float(post["sigma"].values[0, 3])
    expected = dist.Normal(x @ w[0] + b, s).log_prob(y)
    assert torch.allclose(torch.as_tensor(idata.log_likelihood["obs"].values[0, 3]).float(), expected, atol=1e-4)
    assert math.isfinite(loo.elpd_loo) and math.isfinite(d["khat"]) and d["kl"] >= 0
    assert post["linear.weight"].values.mean((0, 1))[0, 0] == pytest.approx(1.0, abs=0.3)


def test_scalar_site_same_dims_from_guide_mcmc_and_exact():
    """A scalar site is ``mu`` with dims (chain, draw) whatever the source."""
    y = torch.tensor([0.5, 1.5, 1.0, 2.0])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(200):
        svi.step(y)
    exact = {"mu": dist.Normal(y.sum() / (len(y) + 1), (1 / (len(y) + 1)) ** 0.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = mcmc(model, y, num_samples=50, warmup_steps=50, num_chains=2)
    sources = [to_inference_data(model, y, guide=guide, num_draws=50, num_chains=2), to_inference_data(run),
               to_inference_data(exact, y, model=model, num_draws=50, num_chains=2)]
    for idata in sources:
        assert idata.posterior["mu"].dims == ("chain", "draw") and idata.posterior["mu"].shape == (2, 50)
        assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
        assert idata.observed_data["y"].dims == ("obs",)


def test_several_observed_sites_each_under_its_name():
    a, b = torch.randn(6), torch.randn(6) + 1

    def model(a, b):
        m = pyro.sample("m", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 6):
            pyro.sample("first", dist.Normal(m, 1.0), obs=a)
            pyro.sample("second", dist.Normal(m + 1, 2.0), obs=b)

    draws = {"m": torch.randn(2, 10)}
    idata = to_inference_data(draws, {"a": a, "b": b}, model=model)
    assert set(idata.log_likelihood.data_vars) == {"first", "second"}
    m = torch.as_tensor(idata.posterior["m"].values[1, 4]).float()
    got = torch.as_tensor(idata.log_likelihood["second"].values[1, 4]).float()
    assert torch.allclose(got, dist.Normal(m + 1, 2.0).log_prob(b), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isfinite(az.loo(idata, var_name="first").elpd_loo)


def test_compare_models_takes_plain_programs():
    """compare_models on (model, guide) pairs: the GMM (enumerated, MAP) and a wider one-component model."""
    model = gmm()
    guide = fit_gmm(model)

    def one(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("rows", len(data)):
            pyro.sample("y", dist.Normal(loc, 5.0), obs=data)

    wide = AutoNormal(one)
    svi = SVI(one, wide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(300):
        svi.step(GMM_DATA)
    result = inference.compare_models({"gmm": (model, guide), "one": (one, wide)}, GMM_DATA, held_out=GMM_DATA,
                                      num_draws=20, num_chains=2)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"gmm", "one"} and all(math.isfinite(r["elpd_loo"]) for r in rows.values())
    assert rows["gmm"]["held_out_log_score"] > rows["one"]["held_out_log_score"]  # two clusters beat one wide Normal
