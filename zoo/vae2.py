"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016, the IWAE paper).

Generative story (``data_dim = D``, stochastic layers of sizes ``latent_dims = (L1, L2)``),
for each data point n::

    z2_n ~ N(0, I_L2)                                         (site "z2")
    z1_n | z2_n ~ N(mu_1(z2_n), diag sigma_1(z2_n)^2)         (site "z1")
    x_n | z1_n ~ prod_d Bernoulli(sigmoid(f(z1_n))_d)         (site "x")

with deterministic MLPs (tanh in the paper) between the stochastic layers: ``L2 -> h2 -> h2 -> 2 L1``
(mu_1, sigma_1) and ``L1 -> h1 -> h1 -> D`` (the logits f), ``hidden = (h1, h2)``. The
guide factorises the other way, q(z1, z2 | x) = q(z1 | x) q(z2 | z1), with MLPs
``D -> h1 -> h1 -> 2 L1`` and ``L1 -> h2 -> h2 -> 2 L2``. Gaussian scales are
softplus(. + log(e - 1)) + 1e-4 (1 at a zero pre-activation); the last layers of the
guide's networks and of mu_1, sigma_1 start at zero, so q and p(z1 | z2) start at N(0, I). The IWAE paper's MNIST architecture
(its appendix; ``VAE2.paper["options"]``) is 784 - (200, 200) - 100 - (100, 100) - 50, tanh;
the defaults are smaller (8 and 4 latent units, ReLU), for small images such as the 8x8 digits.

    p(x) = int int p(x | z1) p(z1 | z2) p(z2) dz1 dz2

is estimated by importance sampling with the guide as proposal (:meth:`log_prob`, K = 1000
by default, K = 5000 in the paper), in chunks of bounded memory, exactly as
:class:`zoo.vae.VAE` does (the same :class:`~zoo.vae.ImportanceSampled` code, summing
every latent site).

Parameters of the distribution over x (the generative networks only; the guide's are
variational parameters): with ``d(a, b, c, e) = (a + 1) b + (b + 1) c + (c + 1) e``,

    **d(L2, h2, h2, 2 L1) + d(L1, h1, h1, D)**

(the paper's sizes at D = 784: 35,400 + 217,984 = 253,384).

Training: ``elbo`` (k = 1, the VAE rows of the paper) or ``iwae`` with ``num_particles=50``
(the IWAE rows). The paper's schedule: Adam (beta1 0.9, beta2 0.999, eps 1e-4; its code's
beta1 0.99 goes with second moments started at one, and with Adam's zero start it
collapses this model to the independent-pixel marginal), batch 20, 3^i passes at learning rate 1e-3 10^(-i/7) for
i = 0..7 (3280 passes): ``fit(lr_schedule="staged")``, as the leaderboard's rows train it
(``experiments.leaderboard.IWAE_FIT``).

Reference: Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders.
ICLR 2016 (Table 1: 85.33 nats for the VAE, 82.90 for IWAE k = 50, dynamic binarization,
K = 5000).
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from zoo.base import ZooModel, data_plate
from zoo.vae import INITS, ImportanceSampled, check_sizes, glorot_, mlp, output_bias_from_data_

__all__ = ["VAE2"]

_SOFTPLUS_INV_1 = math.log(math.e - 1)


def _gaussian(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loc, raw = net(inputs).chunk(2, dim=-1)
    return loc, F.softplus(raw + _SOFTPLUS_INV_1) + 1e-4


class VAE2(ImportanceSampled, ZooModel):
    """Two stochastic layers, Bernoulli pixels, Gaussian latents (IWAE's architecture).

    :param int data_dim: D.
    :param latent_dims: (L1, L2), default (8, 4); the paper's MNIST sizes are (100, 50).
    :param hidden: (h1, h2), the widths of the two deterministic layers between x and z1
        and between z1 and z2, default (64, 32); the paper's are (200, 100).
    :param str activation: ``"relu"`` (default), ``"tanh"`` (the paper's) or ``"softplus"``.
    :param str init: ``"default"``: PyTorch's initialisation with the last layers of the
        guide's networks and of p(z1 | z2) at zero; ``"glorot"``: every weight of the four
        networks Glorot-uniform and every bias zero, then :meth:`init_from_data` (called by the
        experiments on a fresh run) puts the decoder's output bias at the logit of the training
        mean, as yburda/iwae's code starts this model (as :class:`zoo.vae.VAE` with the same option).
    """

    support = "binary"
    # digits (1197 x 64): test NLL 18.1 nats (K = 1000) after 500 epochs, ~3 min on one thread
    # (tanh: 20.2; tanh at lr 1e-3 for 300 epochs: 24.0)
    fit_defaults = dict(objective="elbo", lr=3e-3, epochs=500, batch_size=100, num_particles=1)
    #: traceable (static structure): the engine's fast path may replay its objective
    static_structure = True
    paper = dict(
        options=dict(latent_dims=(100, 50), hidden=(200, 100), activation="tanh"),
        recipe=dict(objective="elbo", lr=1e-3, batch_size=20, epochs=3280),
        published=dict(dynamic=85.33),
        eval_options=dict(num_samples=5000),
        citation="Burda et al. 2016, Table 1 (VAE, 2 stochastic layers, k=1)",
        note="paper: Adam eps 1e-4, lr 1e-3 10^(-i/7) for 3^i passes (i <= 7); ours: the cosine schedule "
        "over 3280 passes; IWAE k=50: objective='iwae', num_particles=50 (82.90 published)",
    )

    def __init__(
        self, data_dim: int = 64, latent_dims=(8, 4), hidden=(64, 32), activation: str = "relu", init: str = "default"
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        latent_dims, hidden = tuple(latent_dims), tuple(hidden)
        if len(latent_dims) != 2 or len(hidden) != 2:
            raise ValueError(f"latent_dims and hidden must each have 2 entries, got {latent_dims!r}, {hidden!r}")
        data_dim, _, sizes = check_sizes(data_dim, 1, latent_dims + hidden)
        L1, L2, h1, h2 = sizes
        self.data_dim, self.latent_dims, self.hidden = data_dim, (L1, L2), (h1, h2)
        # generative networks
        self.prior_z1 = mlp((L2, h2, h2, 2 * L1), activation)
        self.decoder = mlp((L1, h1, h1, data_dim), activation)
        # guide networks
        self.encoder_z1 = mlp((data_dim, h1, h1, 2 * L1), activation)
        self.encoder_z2 = mlp((L1, h2, h2, 2 * L2), activation)
        # q starts at N(0, I) in both layers, and p(z1 | z2) at N(0, I): the first importance
        # weights are p(x | z1), as in the one-layer VAE (bounded, low variance)
        for net in (self.encoder_z1, self.encoder_z2, self.prior_z1):
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        if init == "glorot":
            glorot_(self.prior_z1, self.decoder, self.encoder_z1, self.encoder_z2)
        self.register_buffer("prior_loc", torch.zeros(L2))
        self.register_buffer("prior_scale", torch.ones(L2))

    def init_from_data(self, x: torch.Tensor) -> None:
        """With ``init="glorot"``, the decoder's output bias at the logit of the pixel means of
        ``x`` ``(N, D)`` (clipped to [0.001, 0.999]); with the default init, nothing."""
        if self.options.get("init") == "glorot":
            output_bias_from_data_(self.decoder[-1], x)

    def model(self, x=None, num_data=None):
        """x: (batch, D) float 0/1, or None to simulate ``num_data`` rows."""
        with data_plate(x, num_data):
            z2 = pyro.sample("z2", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            loc, scale = _gaussian(self.prior_z1, z2)
            z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=self.decoder(z1)).to_event(1), obs=x)

    def guide(self, x=None, num_data=None):
        """q(z1 | x) q(z2 | z1), one pair per row of x."""
        if x is None:
            raise ValueError("the guide q(z1, z2 | x) needs data x")
        with data_plate(x, num_data):
            loc, scale = _gaussian(self.encoder_z1, x)
            z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            loc, scale = _gaussian(self.encoder_z2, z1)
            pyro.sample("z2", dist.Normal(loc, scale).to_event(1))

    def _widest(self) -> int:
        return max(self.data_dim, 2 * max(self.latent_dims), *self.hidden)

    def num_parameters(self) -> int:
        """The generative networks' weights and biases (formula in the module docstring)."""
        return sum(p.numel() for net in (self.prior_z1, self.decoder) for p in net.parameters())
