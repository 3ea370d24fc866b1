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
