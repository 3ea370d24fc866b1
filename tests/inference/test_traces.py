"""The structure of a Pyro program read from one trace, and runs over draws that fall back when broadcasting fails."""
import pyro
import pyro.distributions as dist
import torch

from inference.diagnostics import pointwise_log_likelihoods
from inference.traces import Program, structure


def test_data_plate_found_structurally():
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("features", x.shape[1], dim=-1):
            loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
            with pyro.plate("N", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(loc, 1.0))
                pyro.sample("obs", dist.Normal(z, scale), obs=x)

    st = structure(Program.of(model, torch.zeros(7, 3)))
    assert st.data_plate == "N" and st.data_size == 7 and st.nesting == 2  # the plate of the data's length
    assert st.local == ["z"] and not st.latent["loc"]["local"] and not st.enumerated
    assert list(st.observed) == ["obs"]


def test_subsampling_plate_is_the_data_plate():
    def model(x):
        with pyro.plate("rows", 100, subsample_size=5) as idx:
            with pyro.plate("cols", 5, dim=-2):
                pyro.sample("obs", dist.Normal(0.0, 1.0).expand([5, 5]), obs=x[idx].T)

    st = structure(Program.of(model, torch.zeros(100, 5)))
    assert st.data_plate == "rows" and st.data_size == 5


def test_a_model_that_broadcasts_wrongly_runs_one_draw_at_a_time():
    """``w.sum()`` also sums over the draws: no error vectorised, but wrong; the check catches it."""
    y = torch.tensor([0.0, 1.0, 2.0])

    def model(y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("rows", len(y)):
            pyro.sample("y", dist.Normal(w.sum(), 1.0), obs=y)

    draws = {"w": torch.randn(6, 2)}
    ll, vectorised = pointwise_log_likelihoods(model, y, draws)
    assert not vectorised
    expected = dist.Normal(draws["w"].sum(-1, keepdim=True), 1.0).log_prob(y)
    assert torch.allclose(ll["y"], expected, atol=1e-5)
