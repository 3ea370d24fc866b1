"""Plain Pyro programs through ``inference.fit``, each beside plain ``pyro.infer.SVI``.

Programs from Pyro's own tutorials and examples, written as there: the SVI tutorial's
coin (a ``pyro.param`` guide), eight schools (AutoNormal), the GMM tutorial (``enum``,
AutoDelta), a regression with covariates in a dict (a ``PyroModule`` with an
AutoDiagonalNormal) and the VAE example (``pyro.module`` networks). Where the algorithm is
the same (constant learning rate, the same Adam settings), the numbers are the same, bit
for bit. Also: rows keep their identity (full batch, ZooModel minibatches, Pyro's
subsample idiom), ``for_epoch`` data, resumption of ``pyro.param`` sites, clear errors.
"""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal, init_to_value
from pyro.nn import PyroModule, PyroSample
from torch.distributions import constraints

import inference
from zoo.base import ZooModel, data_plate


def svi_run(model, guide, args=(), kwargs=None, steps=100, lr=0.01, betas=(0.9, 0.999), loss=None, seed=0,
            weight_decay=0.0, eps=1e-8):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr, "betas": betas, "weight_decay": weight_decay, "eps": eps}),
              loss or Trace_ELBO())
    for _ in range(steps):
        svi.step(*args, **(kwargs or {}))
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def fit_run(model, data, guide, steps=100, lr=0.01, betas=(0.9, 0.999), **kw):
    pyro.clear_param_store()
    result = inference.fit(model, data, guide, steps=steps, lr=lr, betas=betas, lr_schedule="constant",
                           progress=False, seed=0, **kw)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, result


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), (k, a[k], b[k])


# ----- the SVI tutorial's coin ------------------------------------------------------------
COIN = [torch.tensor(1.0)] * 6 + [torch.tensor(0.0)] * 4


def coin_model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def coin_guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def test_coin_with_default_settings_reaches_the_exact_posterior():
    inference.fit(coin_model, COIN, coin_guide, progress=False)
    a, b = pyro.param("alpha_q").item(), pyro.param("beta_q").item()
    mean, sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    exact_mean, exact_sd = 16 / 30, math.sqrt(16 * 14 / (30**2 * 31))
    assert abs(mean - exact_mean) < 0.02
    assert abs(sd - exact_sd) < 0.15 * exact_sd


def test_fit_equals_pyro_svi_bit_for_bit_on_the_coin():
    reference = svi_run(coin_model, coin_guide, (COIN,), steps=200, lr=0.005, betas=(0.8, 0.95))
    got, result = fit_run(coin_model, COIN, coin_guide, steps=200, lr=0.005, betas=(0.8, 0.95))
    assert_same(got, reference)
    assert result.settings["betas"] == [0.8, 0.95]


def test_weight_decay_is_adams_as_in_pyro_optim():
    reference = svi_run(coin_model, coin_guide, (COIN,), steps=100, lr=0.005, weight_decay=0.1)
    got, result = fit_run(coin_model, COIN, coin_guide, steps=100, lr=0.005, weight_decay=0.1)
    assert_same(got, reference)
    assert result.settings["weight_decay"] == 0.1
    plain, _ = fit_run(coin_model, COIN, coin_guide, steps=100, lr=0.005)
    assert not torch.equal(plain["alpha_q"], got["alpha_q"])  # the penalty moved the parameters
    with pytest.raises(ValueError, match="weight_decay"):
        inference.fit(coin_model, COIN, coin_guide, steps=2, weight_decay=-1.0, progress=False)


# ----- eight schools ------------------------------------------------------------------------
SCHOOLS = dict(J=8, sigma=torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]),
               y=torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]))


def eight_schools(J, sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def test_eight_schools_auto_normal_by_name_equals_svi():
    reference = svi_run(eight_schools, AutoNormal(eight_schools), kwargs=SCHOOLS, steps=150, lr=0.02)
    got, result = fit_run(eight_schools, SCHOOLS, "auto_normal", steps=150, lr=0.02)
    assert_same(got, reference)
    assert result.settings["plates"] == []  # the full data every step


# ----- the GMM tutorial (enumeration, AutoDelta) ------------------------------------------
GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


@config_enumerate
def gmm(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_guide():
    init = {"weights": torch.ones(2) / 2, "scale": (GMM_DATA.var() / 2).sqrt(), "locs": GMM_DATA[[0, 2]]}
    return AutoDelta(poutine.block(gmm, expose=["weights", "locs", "scale"]), init_loc_fn=init_to_value(values=init))


def test_gmm_enum_auto_delta_equals_svi_and_needs_enum():
    reference = svi_run(gmm, gmm_guide(), (GMM_DATA,), steps=100, lr=0.1, betas=(0.8, 0.99),
                        loss=TraceEnum_ELBO(max_plate_nesting=1))
    got, _ = fit_run(gmm, GMM_DATA, gmm_guide(), steps=100, lr=0.1, betas=(0.8, 0.99), objective="enum")
    assert_same(got, reference)
    locs = sorted(got["AutoDelta.locs"].tolist())
    assert abs(locs[0] - 0.5) < 1.0 and abs(locs[1] - 11.0) < 1.0
    with pytest.raises(ValueError, match="enumerat.*objective='enum'"):
        inference.fit(gmm, GMM_DATA, gmm_guide(), steps=1, progress=False)


# ----- regression with covariates in a dict (PyroModule, AutoDiagonalNormal) --------------
class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(50, generator=g)
    return {"x": x, "y": y}


def test_regression_with_covariates_in_a_dict_equals_svi():
    data = regression_data()
    pyro.set_rng_seed(0)
    model = BayesianRegression(3, 1)
    reference = svi_run(model, AutoDiagonalNormal(model), kwargs=data, steps=150, lr=0.03)
    pyro.set_rng_seed(0)
    model = BayesianRegression(3, 1)
    got, _ = fit_run(model, data, AutoDiagonalNormal(model), steps=150, lr=0.03)
    assert_same(got, reference)


def test_plain_svi_still_works_after_importing_the_zoo():
    """The Bayesian-regression tutorial crashed ('Parameter' object has no attribute
    'unconstrained') once `import zoo` switched module_local_params on globally."""
    import zoo  # noqa: F401

    model = BayesianRegression(3, 1)
    svi_run(model, AutoDiagonalNormal(model), kwargs=regression_data(), steps=3)


# ----- Pyro's VAE example --------------------------------------------------------------------
class Decoder(torch.nn.Module):
    def __init__(self, z_dim, hidden, x_dim):
        super().__init__()
        self.fc1, self.fc21 = torch.nn.Linear(z_dim, hidden), torch.nn.Linear(hidden, x_dim)

    def forward(self, z):
        return torch.sigmoid(self.fc21(torch.nn.functional.softplus(self.fc1(z))))


class Encoder(torch.nn.Module):
    def __init__(self, z_dim, hidden, x_dim):
        super().__init__()
        self.fc1 = torch.nn.Linear(x_dim, hidden)
        self.fc21, self.fc22 = torch.nn.Linear(hidden, z_dim), torch.nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = torch.nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


class VAE(torch.nn.Module):
    def __init__(self, z_dim=2, hidden=8, x_dim=6):
        super().__init__()
        self.encoder, self.decoder = Encoder(z_dim, hidden, x_dim), Decoder(z_dim, hidden, x_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def test_vae_example_bound_methods_equal_svi():
    x = torch.bernoulli(torch.full((32, 6), 0.3), generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    vae = VAE()
    init = {k: v.clone() for k, v in vae.state_dict().items()}
    reference = svi_run(vae.model, vae.guide, (x,), steps=30, lr=0.01)
    vae.load_state_dict(init)
    got, _ = fit_run(vae.model, x, vae.guide, steps=30, lr=0.01)
    assert_same(got, reference)


# ----- rows keep their identity ------------------------------------------------------------
TARGETS = torch.arange(8.0)


def local_model(y):
    with pyro.plate("rows", len(y)):
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        pyro.sample("y", dist.Normal(z, 0.1), obs=y)


def test_full_batch_local_latent_matches_plain_svi():
    reference = svi_run(local_model, AutoNormal(local_model), (TARGETS,), steps=300, lr=0.05)
    got, _ = fit_run(local_model, TARGETS, "auto_normal", steps=300, lr=0.05)
    assert_same(got, reference)
    assert torch.allclose(got["AutoNormal.locs.z"], TARGETS, atol=0.3)


def subsampled_model(y):
    with pyro.plate("rows", len(y), subsample_size=4) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        pyro.sample("y", dist.Normal(z, 0.1), obs=y[idx])


def test_pyro_subsample_idiom_keeps_rows_aligned_and_is_deterministic():
    got, result = fit_run(subsampled_model, TARGETS, "auto_normal", steps=600, lr=0.05)
    assert result.settings["plates"] == ["rows"]
    assert torch.allclose(got["AutoNormal.locs.z"], TARGETS, atol=0.3)
    again, _ = fit_run(subsampled_model, TARGETS, "auto_normal", steps=600, lr=0.05)
    assert_same(got, again)


class LocalLatent(ZooModel):
    """One latent z_n per row: y_n ~ Normal(z_n, 0.1), z_n ~ Normal(0, 10)."""

    support = "real"

    def __init__(self):
        super().__init__()
        self.data_dim = 1

    def model(self, x=None, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(0.0, 10.0))
            pyro.sample("y", dist.Normal(z, 0.1), obs=x)

    def num_parameters(self):
        return 0


@pytest.mark.parametrize("batch_size", [8, 4])
def test_zoo_model_minibatches_carry_true_row_indices(batch_size):
    """A local latent fitted to targets 0..7 came out ~3.5 for every row when rows were
    reshuffled behind Pyro's back."""
    model = LocalLatent()
    guide = AutoNormal(model.model)
    inference.fit(model, TARGETS, guide, steps=800, lr=0.1, lr_schedule="constant", batch_size=batch_size,
                  progress=False)
    assert torch.allclose(guide.locs.z.detach(), TARGETS, atol=0.3)


# ----- data drawn afresh each epoch -------------------------------------------------------
class Redrawn:
    """A tiny data set whose rows are re-drawn each epoch from (seed, epoch)."""

    def __init__(self, n=8, seed=0):
        self.n, self.seed, self.epochs = n, seed, []
        self.x = self.for_epoch(0)
        self.epochs.clear()

    def __len__(self):
        return self.n

    def for_epoch(self, epoch):
        self.epochs.append(epoch)
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return torch.arange(float(self.n)) + 0.01 * torch.randn(self.n, generator=g)


def test_for_epoch_data_trains_epoch_e_on_its_draw_and_resumes_bitwise(tmp_path):
    data = Redrawn()
    model = LocalLatent()
    guide = AutoNormal(model.model)
    inference.fit(model, data, guide, steps=12, lr=0.05, batch_size=4, progress=False)
    assert sorted(set(data.epochs)) == list(range(6))  # 2 steps per epoch
    ref_locs = guide.locs.z.detach().clone()

    class Kill(inference.Callback):
        def on_step_end(self, trainer):
            if trainer.done == 7:
                raise RuntimeError("killed")

    pyro.clear_param_store()  # AutoNormal's parameters live in the global store (Pyro's default)
    model2 = LocalLatent()
    guide2 = AutoNormal(model2.model)
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(model2, Redrawn(), guide2, steps=12, lr=0.05, batch_size=4, progress=False,
                      run_dir=tmp_path, checkpoint_every=4, callbacks=[Kill()])
    pyro.clear_param_store()
    model3 = LocalLatent()
    guide3 = AutoNormal(model3.model)
    resumed = inference.fit(model3, Redrawn(), guide3, steps=12, lr=0.05, batch_size=4, progress=False,
                            run_dir=tmp_path, checkpoint_every=4)
    assert resumed.resumed_from == 4
    assert torch.equal(guide3.locs.z.detach(), ref_locs)


# ----- the global parameter store: trained, checkpointed, resumed ------------------------
def test_pyro_param_sites_resume_bitwise(tmp_path):
    settings = dict(steps=60, lr=0.01, progress=False, checkpoint_every=10)
    inference.fit(coin_model, COIN, coin_guide, **settings)
    reference = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    class Kill(inference.Callback):
        def on_step_end(self, trainer):
            if trainer.done == 35:
                raise RuntimeError("killed")

    pyro.clear_param_store()
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(coin_model, COIN, coin_guide, run_dir=tmp_path, callbacks=[Kill()], **settings)
    pyro.clear_param_store()
    resumed = inference.fit(coin_model, COIN, coin_guide, run_dir=tmp_path, **settings)
    assert resumed.resumed_from == 30
    assert_same({k: v.detach() for k, v in pyro.get_param_store().items()}, reference)


# ----- clear errors and warnings -----------------------------------------------------------
def test_latent_sites_without_a_guide_name_the_fix():
    with pytest.raises(ValueError, match=r"latent sites \['latent_fairness'\] and no guide.*auto_normal"):
        inference.fit(coin_model, COIN, steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown guide"):
        inference.fit(coin_model, COIN, "auto_nope", steps=1, progress=False)


def test_model_guide_mismatch_warns_even_with_validation_off():
    def guide(data):
        pass  # forgets latent_fairness

    with pyro.validation_enabled(False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            inference.fit(coin_model, COIN, guide, steps=3, progress=False)
        except ValueError:
            pass  # no trainable parameters: the warning came first
    assert any("Found vars in model but not guide" in str(w.message) for w in caught)


@pytest.mark.parametrize("plate_name", ["data", "N"])
def test_iwae_bound_does_not_depend_on_the_plate_name(plate_name):
    x = torch.tensor([0.5, -1.0, 2.0])

    def model(x):
        with pyro.plate(plate_name, len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate(plate_name, len(x)):
            pyro.sample("z", dist.Normal(0.3 * x, 0.8))

    pyro.set_rng_seed(0)
    bound = -inference.make_objective("iwae", num_particles=2000).differentiable_loss(model, guide, x).item()
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).sum().item()
    assert bound == pytest.approx(exact, abs=0.01)


def test_iwae_refuses_an_ambiguous_data_plate():
    def model(x):
        with pyro.plate("a", 3), pyro.plate("b", 3, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(3, 3))

    def guide(x):
        with pyro.plate("a", 3), pyro.plate("b", 3, dim=-2):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="cannot tell the data plate"):
        inference.make_objective("iwae", num_particles=2, max_plate_nesting=2).differentiable_loss(model, guide, None)


def test_adams_eps_is_pyro_optims_eps():
    """Burda et al. train the IWAE with Adam's eps = 1e-4: ``fit(eps=...)`` is pyro.optim.Adam's."""
    reference = svi_run(coin_model, coin_guide, (COIN,), steps=100, lr=0.05, eps=1e-4)
    got, result = fit_run(coin_model, COIN, coin_guide, steps=100, lr=0.05, eps=1e-4)
    assert_same(got, reference)
    assert not torch.equal(got["alpha_q"], fit_run(coin_model, COIN, coin_guide, steps=100, lr=0.05)[0]["alpha_q"])
    with pytest.raises(ValueError, match="eps must be a positive number"):
        inference.fit(coin_model, COIN, coin_guide, steps=2, eps=0.0, progress=False)


def test_adagrad_is_pyro_optims_adagrad():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(coin_model, coin_guide, pyro.optim.Adagrad({"lr": 0.05}), Trace_ELBO())
    for _ in range(100):
        svi.step(COIN)
    reference = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    got, result = fit_run(coin_model, COIN, coin_guide, steps=100, lr=0.05, optimizer="adagrad")
    assert_same(got, reference)
    assert result.settings["optimizer"] == "adagrad"
    with pytest.raises(ValueError, match="optimizer must be one of adam, adagrad"):
        inference.fit(coin_model, COIN, coin_guide, steps=2, optimizer="sgd", progress=False)
