"""The deterministic autoencoder: no density, a reconstruction loss through the engine."""
import math

import pyro
import pytest
import torch

import inference
import zoo
from inference.objectives import make_objective


def toy_data(n, seed, d=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.bernoulli(torch.full((n, 1), 0.4), generator=g)
    probs = torch.where(s.bool(), torch.full((d,), 0.9), torch.full((d,), 0.1))
    return torch.bernoulli(probs, generator=g)


def test_log_prob_raises_no_density_error_saying_why():
    model = zoo.create("autoencoder", data_dim=4)
    with pytest.raises(zoo.NoDensityError, match="no density over x"):
        model.log_prob(torch.zeros(2, 4))
    assert issubclass(zoo.NoDensityError, NotImplementedError)
    out = inference.evaluate(model, torch.zeros(3, 4))
    assert out["nll"] is None and out["bits_per_dim"] is None
    assert "no density" in out["nll_note"]


def test_model_cannot_simulate_but_sample_decodes_stand_in_codes():
    model = zoo.create("autoencoder", data_dim=4, latent_dim=2, hidden=(8,))
    with pytest.raises(zoo.NoDensityError, match="cannot simulate"):
        model.model(None, num_data=3)
    pyro.set_rng_seed(0)
    samples = model.sample(5)
    assert samples.shape == (5, 4) and set(samples.unique().tolist()) <= {0.0, 1.0}
    # the stand-in: z ~ N(0, I), decoded, then Bernoulli pixels
    torch.manual_seed(1)
    z = torch.randn(20_000, 2)
    expected = model.decode(z).mean(0)
    torch.manual_seed(1)
    assert torch.allclose(model.sample(20_000).mean(0), expected.detach(), atol=0.02)


def test_parameter_count_and_shapes():
    model = zoo.create("autoencoder", data_dim=6, latent_dim=2, hidden=(5,))
    # encoder 6 -> 5 -> 2 and decoder 2 -> 5 -> 6
    assert model.num_parameters() == (7 * 5 + 6 * 2) + (3 * 5 + 6 * 6)
    x = toy_data(4, 0)
    assert model.encode(x).shape == (4, 2)
    assert model.decode(torch.zeros(3, 2)).shape == (3, 6)
    assert model.reconstruct(x).shape == (4, 6)
    with pytest.raises(zoo.DataError):
        model.reconstruct(torch.full((2, 6), 0.5))


@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae"])
def test_every_objective_is_the_reconstruction_loss(name):
    """Delta guide (log q = 0) + flat code prior (log p = 0): only -log p(x | d(e(x))) is left,
    scaled by num_data / batch."""
    pyro.set_rng_seed(0)
    model = zoo.create("autoencoder", data_dim=6, latent_dim=2, hidden=(7,))
    x, num_data = toy_data(5, 1), 30
    objective = make_objective(name, num_particles=3 if name == "iwae" else 1)
    loss = objective.differentiable_loss(model.model, model.guide, x, num_data=num_data)
    probs = model.reconstruct(x)
    hand = -(num_data / 5) * torch.distributions.Bernoulli(probs=probs).log_prob(x).sum()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


def test_training_moves_parameters():
    pyro.set_rng_seed(0)
    model = zoo.create("autoencoder", data_dim=6, latent_dim=2, hidden=(8,))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inference.fit(model, toy_data(64, 0), steps=3, batch_size=32, progress=False)
    for key in ("encoder.0.weight", "encoder.2.weight", "decoder.0.weight", "decoder.2.bias"):
        assert not torch.equal(before[key], model.state_dict()[key]), key


def test_digits_reconstructions_beat_a_constant_baseline():
    """Held-out reconstruction cross-entropy is far below that of the best constant image
    (the training pixel means), and so is the pixel error rate."""
    train, test = zoo.load("digits", "train"), zoo.load("digits", "test")
    pyro.set_rng_seed(0)
    model = zoo.create("autoencoder", data_dim=64)
    result = inference.fit(model, train, epochs=30, progress=False)
    assert result.losses[-1] < result.losses[0]
    mean = train.x.mean(0).clamp(1e-3, 1 - 1e-3)

    def bce(probs):
        return -torch.distributions.Bernoulli(probs=probs.clamp(1e-6, 1 - 1e-6)).log_prob(test.x).sum(-1).mean().item()

    recon = model.reconstruct(test.x)
    assert bce(recon) < 0.5 * bce(mean.expand_as(test.x))
    errors = ((recon > 0.5).float() != test.x).float().mean().item()
    baseline_errors = ((mean > 0.5).float() != test.x).float().mean().item()
    assert errors < 0.5 * baseline_errors
    assert math.isfinite(bce(recon))
