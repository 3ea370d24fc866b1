"""The contract every registered model keeps (Pyro's test_valid_models, for the zoo).

For each model of ``zoo.available()`` at a tiny size: model and guide run as Pyro
programs, ``sample`` and ``log_prob`` have the promised shapes, ``exp(log_prob)`` sums to
one over every state of the data space (at initialisation and after a few training
steps), and sample frequencies agree with ``exp(log_prob)``.
"""
import itertools

import pyro
import pyro.poutine as poutine
import pytest
import torch

import inference
import zoo

DATA_DIM = 4
NUM_CATEGORIES = 3


def make(name):
    cls = zoo.get(name)
    if cls.support == "categorical":
        return zoo.create(name, num_categories=NUM_CATEGORIES)
    return zoo.create(name, data_dim=DATA_DIM)


def all_states(model):
    """Every point of the data space: (2^n, n) binary, or (m,) categories."""
    if model.support == "categorical":
        return torch.arange(model.num_categories)
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.data_dim)))


def toy_data(model, n=64):
    g = torch.Generator().manual_seed(1)
    if model.support == "categorical":
        return torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    probs = torch.tensor([0.8, 0.6, 0.3, 0.1])[: model.data_dim]
    first = torch.bernoulli(probs.expand(n, -1), generator=g)
    first[:, 1] = first[:, 0]  # some dependence between pixels
    return first


def has_density(model):
    try:
        model.log_prob(all_states(model)[:1])
    except zoo.NoDensityError:
        return False
    return True


@pytest.fixture(params=zoo.available())
def model(request):
    return make(request.param)


def test_is_a_pyro_module_with_parameter_count(model):
    assert isinstance(model, pyro.nn.PyroModule)
    assert isinstance(model.num_parameters(), int) and model.num_parameters() > 0


def test_model_and_guide_trace(model):
    x = toy_data(model, 8)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    site = model_trace.nodes["x"]
    assert site["is_observed"]
    assert torch.equal(site["value"], x)
    assert any(f.name == "data" for f in site["cond_indep_stack"]), "x must be in plate 'data'"
    model_trace.compute_log_prob()  # shapes agree with plates (validation is on)
    guide_trace.compute_log_prob()


def test_sample_and_log_prob_shapes(model):
    samples = model.sample(5)
    if model.support == "categorical":
        assert samples.shape == (5,) and samples.dtype == torch.int64
    else:
        assert samples.shape == (5, model.data_dim)
        assert set(samples.unique().tolist()) <= {0.0, 1.0}
    if has_density(model):
        lp = model.log_prob(toy_data(model, 7))
        assert lp.shape == (7,)
        assert torch.isfinite(lp).all()


def test_normalised_at_init_and_after_training(model):
    if not has_density(model):
        pytest.skip(f"{type(model).__name__} defines no density")
    states = all_states(model)
    # an importance-sampled log_prob is an estimate: exp of it is unbiased for p(x)
    # (with the default K=1000 the sum over 16 states scattered by ~0.005 over training paths,
    # 2 sigma of 0.01; 50k particles make 0.01 more than 10 sigma)
    tolerance = 1e-4 if model.exact_density else 0.01
    kwargs = {} if model.exact_density else {"num_samples": 50_000}
    total = model.log_prob(states, **kwargs).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=tolerance)
    inference.fit(model, toy_data(model), steps=5, progress=False)
    total = model.log_prob(states, **kwargs).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=tolerance)


def test_sample_frequencies_match_log_prob(model):
    if not has_density(model):
        pytest.skip(f"{type(model).__name__} defines no density")
    inference.fit(model, toy_data(model), steps=5, progress=False)
    states = all_states(model)
    n = 20_000
    pyro.set_rng_seed(3)
    samples = model.sample(n)
    if model.support == "categorical":
        index = samples
    else:
        weights = 2 ** torch.arange(model.data_dim - 1, -1, -1)
        index = (samples.long() * weights).sum(-1)
    freq = torch.bincount(index, minlength=len(states)).double() / n
    probs = model.log_prob(states).double().exp()
    tv = 0.5 * (freq - probs).abs().sum().item()
    # E[TV] <= 0.5 * sqrt(#states / n) ~ 0.014 here; 0.04 leaves room for chance
    assert tv < 0.04
