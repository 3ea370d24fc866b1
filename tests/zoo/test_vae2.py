"""The two-stochastic-layer VAE: its importance weights, parameter count and training."""
import math

import pyro
import pytest
import torch

import inference
import zoo


def test_importance_weights_are_log_p_x_z1_z2_minus_log_q():
    model = zoo.create("vae2", data_dim=6, latent_dims=(3, 2), hidden=(5, 4))
    with torch.no_grad():  # move off the symmetric initialisation
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(1)
    log_w = model.log_weights(x, 7)
    # the same draws by hand: z1 ~ q(z1 | x), z2 ~ q(z2 | z1), in the guide's order
    pyro.set_rng_seed(1)
    from zoo.vae2 import _gaussian

    normal = torch.distributions.Normal
    loc1, scale1 = _gaussian(model.encoder_z1, x)
    z1 = normal(loc1, scale1).sample((7,))
    loc2, scale2 = _gaussian(model.encoder_z2, z1)
    z2 = normal(loc2, scale2).sample()
    ploc, pscale = _gaussian(model.prior_z1, z2)
    log_p = (normal(0.0, 1.0).log_prob(z2).sum(-1) + normal(ploc, pscale).log_prob(z1).sum(-1)
             + torch.distributions.Bernoulli(logits=model.decoder(z1)).log_prob(x).sum(-1))
    log_q = normal(loc1, scale1).log_prob(z1).sum(-1) + normal(loc2, scale2).log_prob(z2).sum(-1)
    assert log_w.shape == (7, 4)
    assert torch.allclose(log_w, (log_p - log_q).detach(), atol=1e-5)
    # log_prob is log-mean-exp of the weights, chunked to bound memory
    model.max_rows = 3
    pyro.set_rng_seed(2)
    lp = model.log_prob(x, num_samples=9)
    assert lp.shape == (4,) and torch.isfinite(lp).all()


def test_parameter_count_at_the_papers_sizes():
    model = zoo.create("vae2", data_dim=784, **zoo.get("vae2").paper["options"])
    d = lambda a, b, c, e: (a + 1) * b + (b + 1) * c + (c + 1) * e  # noqa: E731
    assert model.num_parameters() == d(50, 100, 100, 200) + d(100, 200, 200, 784) == 253_384
    with pytest.raises(ValueError, match="2 entries"):
        zoo.create("vae2", data_dim=4, latent_dims=(3,))


def test_trains_by_elbo_and_iwae_and_the_bound_is_below_the_estimate():
    x = zoo.load("digits", "train").x[:300]
    model = zoo.create("vae2", data_dim=64)
    before = -model.log_prob(x, num_samples=50).mean().item()
    inference.fit(model, x, epochs=30, progress=False)
    after = -model.log_prob(x, num_samples=50).mean().item()
    assert after < before - 5  # nats: the model learns
    elbo = model.elbo(x, num_samples=10).mean().item()
    assert elbo < -after + 0.5  # E[ELBO] <= E[IWAE bound] (K=50), up to Monte Carlo noise
    inference.fit(model, x, steps=3, objective="iwae", num_particles=5, progress=False)
    assert math.isfinite(model.log_prob(x[:10], num_samples=20).sum().item())


def test_glorot_init_and_the_output_bias_from_data():
    model = zoo.create("vae2", data_dim=30, latent_dims=(6, 3), hidden=(40, 20), activation="tanh", init="glorot")
    for net in (model.prior_z1, model.decoder, model.encoder_z1, model.encoder_z2):
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                bound = math.sqrt(6 / (layer.in_features + layer.out_features))
                assert 0 < layer.weight.abs().max() <= bound  # every last layer too: none left at zero
                assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    x = torch.bernoulli(torch.rand(1, 30).expand(400, 30), generator=torch.Generator().manual_seed(2))
    model.init_from_data(x)
    assert torch.allclose(torch.sigmoid(model.decoder[-1].bias), x.mean(0).clamp(0.001, 0.999), atol=1e-5)
    default = zoo.create("vae2", data_dim=30)
    before = default.decoder[-1].bias.detach().clone()
    default.init_from_data(x)
    assert torch.equal(default.decoder[-1].bias.detach(), before)
    with pytest.raises(ValueError, match="unknown init"):
        zoo.create("vae2", data_dim=30, init="xavier")
