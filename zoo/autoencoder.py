"""Deterministic autoencoder: the contrast to the VAE; it is *not* a generative model.

An encoder MLP e (``D -> hidden -> L``) maps x to a code z = e(x); a decoder MLP d
(``L -> hidden[::-1] -> D``) maps the code to pixel probabilities sigmoid(d(z)). Training
minimises the reconstruction cross-entropy

    - sum_n log Bernoulli(x_n | sigmoid(d(e(x_n)))).

Written for the shared SVI engine as a point estimate of per-example codes:

    model:  z_n ~ ImproperUniform(R^L)          (site "z": log-density 0, "no prior term")
            x_n | z_n ~ prod_d Bernoulli(sigmoid(d(z_n))_d)        (site "x")
    guide:  z_n ~ Delta(e(x_n))                 (amortised MAP: log q = 0)

so every objective of :func:`inference.fit` (``elbo``, ``meanfield``, ``iwae``, ...)
reduces exactly to the reconstruction loss above (the Delta guide contributes 0, the flat
"prior" 0). We chose this over a fully observed model whose likelihood calls the encoder
because the Delta-guide form keeps the model/guide split identical to the VAE's: the two
differ *only* in the prior on z (none vs N(0, I)) and in the guide (a point vs a Gaussian),
which is exactly the difference the ``ae_vs_vae`` experiment is about.

Why there is no density: the flat "prior" on z is improper, so p(x) = int p(x | z) dz is
not a distribution over x (it is not normalisable, and nothing constrains where codes
lie). :meth:`Autoencoder.log_prob` therefore raises :class:`zoo.NoDensityError`.
:meth:`Autoencoder.sample` decodes draws from a *stand-in* N(0, I) on the codes, which
the training never asked codes to follow: it shows what the decoder does off the data's
codes, and is not sampling from a model of the data.

Parameters: the reconstruction map x -> x_hat has all encoder and decoder weights and
biases: with widths ``(D, h_1, ..., h_k, L)`` for the encoder and the reverse for the
decoder, **sum over consecutive widths (a, b) of both of (a + 1) * b**. (It defines no
distribution, so this counts the parameters of the map, not of a density.)

References:
    1. G. E. Hinton, R. R. Salakhutdinov. Reducing the Dimensionality of Data with
       Neural Networks. Science 2006.
    2. I. Goodfellow, Y. Bengio, A. Courville. Deep Learning, ch. 14 (autoencoders).
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.base import NoDensityError, ZooModel, data_plate
from zoo.vae import check_sizes, mlp

__all__ = ["Autoencoder"]


class Autoencoder(ZooModel):
    """Deterministic autoencoder with a Bernoulli reconstruction loss (no density over x).

    :param int data_dim: D, the number of binary pixels.
    :param int latent_dim: L, the size of the code (default 8).
    :param hidden: widths of the encoder's hidden layers (the decoder mirrors them),
        default ``(256,)``.
    :param str activation: ``"relu"`` (default), ``"tanh"`` or ``"softplus"``.
    """

    support = "binary"
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(objective="elbo", lr=3e-3, epochs=500, batch_size=100, num_particles=1)

    def __init__(self, data_dim: int = 64, latent_dim: int = 8, hidden=(256,), activation: str = "relu"):
        super().__init__()
        data_dim, latent_dim, hidden = check_sizes(data_dim, latent_dim, hidden)
        self.data_dim, self.latent_dim, self.hidden = data_dim, latent_dim, hidden
        self.encoder = mlp((data_dim, *hidden, latent_dim), activation)
        self.decoder = mlp((latent_dim, *hidden[::-1], data_dim), activation)

    # ----- the deterministic maps -------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code z = e(x), shape ``(..., L)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities sigmoid(d(z)), shape ``(..., D)``."""
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of the reconstruction d(e(x)), shape ``(batch, D)``."""
        self.check_data(x)
        return self.decode(self.encode(x))

    # ----- the program the engine trains -------------------------------------------
    def model(self, x=None, num_data=None):
        """Flat (improper) code z, then x | z ~ Bernoulli(sigmoid(d(z))). Needs data x."""
        if x is None:
            raise NoDensityError(
                "the autoencoder cannot simulate data: its code z has no distribution "
                "(flat improper 'prior'); use sample(n), which decodes stand-in N(0, I) codes"
            )
        with data_plate(x, num_data):
            z = pyro.sample(
                "z",
                dist.ImproperUniform(constraints.real, (), (self.latent_dim,)),
            )
            return pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x=None, num_data=None):
        """z = e(x) exactly (a Delta distribution): the code is a point estimate."""
        if x is None:
            raise ValueError("the autoencoder's guide needs data x")
        with data_plate(x, num_data):
            return pyro.sample("z", dist.Delta(self.encode(x), event_dim=1))

    # ----- no density; stand-in sampling ---------------------------------------------
    def log_prob(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Always raises :class:`zoo.NoDensityError`: an autoencoder has no p(x)."""
        raise NoDensityError(
            "the autoencoder defines no density over x: its codes have no distribution "
            "(a flat, improper 'prior'), so p(x) = int p(x | z) dz is not normalisable and "
            "there is no log-likelihood to report; it only reconstructs (see reconstruct())"
        )

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Decode ``n`` stand-in codes z ~ N(0, I) and draw Bernoulli pixels from them.

        NOT a sample from a model of the data: training never made codes follow N(0, I)
        (or any distribution), so these images show the decoder off the data's codes.
        """
        z = torch.randn(int(n), self.latent_dim, device=self._device())
        return torch.bernoulli(self.decode(z))

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        """Encoder and decoder weights and biases (the reconstruction map)."""
        return sum(p.numel() for p in self.encoder.parameters()) + sum(
            p.numel() for p in self.decoder.parameters()
        )
