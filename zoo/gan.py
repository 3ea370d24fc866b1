"""Generative adversarial network: the zoo's baseline that learns to sample without a density.

Generative story (``data_dim = D``, ``latent_dim = L``), for each data point n::

    z_n ~ N(0, I_L)                         (site "z", shape (N, L), in plate "data")
    x_n = G(z_n) = step(g(z_n))             (site "x", a Delta at G(z_n), in plate "data")

where the generator g is an MLP ``L -> hidden -> D`` giving logits and ``step(u) = 1[u > 0]``
turns them into binary pixels. x is a *deterministic* function of z, so the distribution
of x is implicit: P(x) = P(z in G^{-1}(x)), the Gaussian mass of a region of R^L that
has no closed form. ``log_prob`` therefore raises :class:`zoo.NoDensityError`; the model
is scored on its samples by :mod:`inference.metrics` (Frechet distance, kernel MMD,
Parzen window, mode coverage) like every other model of the zoo.

``model(x)`` is the generative story above as a valid Pyro program: z from the prior and
x observed under ``Delta(G(z))``. Its log-density is 0 where x = G(z) and -inf elsewhere,
which is exactly why the GAN cannot be trained by a likelihood or an ELBO: it is trained
by the adversarial game of :func:`inference.fit_adversarial` instead (it has the
``generate``/``discriminate`` methods of the :class:`inference.Adversarial` protocol), with a discriminator D(x) = sigmoid(d(x)), an MLP ``D -> hidden -> 1``:

    min_G max_D  V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ N(0, I)}[log(1 - D(G(z)))].

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)) and
V(D*, G) = -log 4 + 2 JSD(p_data || p_g) (Goodfellow et al. 2014, Prop. 1 and Thm. 1).

Binary output: the discriminator is shown exactly what ``sample`` returns, the binary
``G(z)``; gradients reach the generator by the straight-through estimator (forward
``step(u)``, backward through ``sigmoid(u)``, Bengio et al. 2013). ``relax="sigmoid"``
shows the discriminator the soft ``sigmoid(g(z))`` instead (samples are still
thresholded), the usual choice for GANs on binarised images.

Parameters of the distribution over x: only the generator's weights and biases (the
discriminator, like a VAE's encoder, is a training device, not a parameter of p_g).
With generator widths ``(L, h_1, ..., h_k, D)`` that is
**sum over consecutive widths (a, b) of (a + 1) * b**.

References:
    1. I. Goodfellow, J. Pouget-Abadie, M. Mirza, B. Xu, D. Warde-Farley, S. Ozair,
       A. Courville, Y. Bengio. Generative Adversarial Nets. NeurIPS 2014.
    2. Y. Bengio, N. Leonard, A. Courville. Estimating or Propagating Gradients Through
       Stochastic Neurons for Conditional Computation. arXiv:1308.3432, 2013.
    3. L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative
       models. ICLR 2016.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from zoo.base import NoDensityError, ZooModel, data_plate

__all__ = ["GAN"]

RELAXATIONS = ("straight_through", "sigmoid")


def _mlp(sizes, *, leaky: bool, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths, ReLU (or LeakyReLU(0.2)) between them, then dropout."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.LeakyReLU(0.2) if leaky else nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class _StraightThrough(torch.autograd.Function):
    """Forward: 1[p > 1/2], exactly 0/1. Backward: the identity (gradient of p)."""

    @staticmethod
    def forward(ctx, probs):
        return (probs > 0.5).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def default_sizes(data_dim: int) -> tuple[int, tuple[int, ...]]:
    """(latent_dim, hidden) sized for the data: L = clamp(D // 4, 2, 64), two layers of
    width clamp(2 D, 64, 512). digits (D=64): L=16, (128, 128); MNIST (D=784): L=64, (512, 512)."""
    width = min(max(2 * data_dim, 64), 512)
    return min(max(data_dim // 4, 2), 64), (width, width)


class GAN(ZooModel):
    """Generative adversarial network on binary data (see the module docstring).

    :param int data_dim: D, the number of binary pixels.
    :param int latent_dim: L, the dimension of z (default: :func:`default_sizes`).
    :param hidden: widths of the generator's hidden layers (default: :func:`default_sizes`).
    :param d_hidden: widths of the discriminator's hidden layers (default: ``hidden``).
    :param str relax: what the discriminator sees of a generated point during training:
        ``"straight_through"`` (default; the binary sample, gradient through the sigmoid)
        or ``"sigmoid"`` (the pixel probabilities).
    :param float d_dropout: dropout probability after each hidden layer of the
        discriminator (as in Goodfellow et al. 2014), default 0.3.
    """

    support = "binary"
    # digits (1197 x 64), measured over seeds 0-2 (FD in the classifier's features, see
    # inference.metrics): the discriminator learns 4x faster than the generator (two
    # time-scale rule, Heusel et al. 2017) and has dropout 0.3 (Goodfellow et al. 2014);
    # equal rates or no dropout collapsed modes (8-9 of 10 classes, FD 14-38), these
    # settings at 8000 steps cover all 10 classes with FD 5-8 (~30 s on one CPU thread)
    fit_defaults = dict(
        objective="non_saturating", steps=8000, batch_size=64, lr=5e-4, lr_d=2e-3,
        betas=(0.5, 0.999), d_steps=1, lr_schedule="cosine", final_lr_fraction=0.1,
    )

    def __init__(self, data_dim: int = 64, latent_dim: int | None = None, hidden=None,
                 d_hidden=None, relax: str = "straight_through", d_dropout: float = 0.3):
        super().__init__()
        data_dim = _positive_int("data_dim", data_dim)
        auto_latent, auto_hidden = default_sizes(data_dim)
        latent_dim = _positive_int("latent_dim", auto_latent if latent_dim is None else latent_dim)
        hidden = auto_hidden if hidden is None else hidden
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        d_hidden = hidden if d_hidden is None else d_hidden
        d_hidden = (d_hidden,) if isinstance(d_hidden, int) else tuple(d_hidden)
        for h in hidden + d_hidden:
            _positive_int("hidden widths", h)
        if relax not in RELAXATIONS:
            raise ValueError(f"unknown relax {relax!r}; choose from {', '.join(RELAXATIONS)}")
        self.data_dim, self.latent_dim, self.hidden, self.d_hidden = data_dim, latent_dim, hidden, d_hidden
        self.relax = relax
        self.generator = _mlp((latent_dim, *hidden, data_dim), leaky=False)
        if not 0.0 <= d_dropout < 1.0:
            raise ValueError(f"d_dropout must be in [0, 1), got {d_dropout!r}")
        self.discriminator = _mlp((data_dim, *d_hidden, 1), leaky=True, dropout=d_dropout)
        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        self.register_buffer("prior_scale", torch.ones(latent_dim))

    # ----- networks -------------------------------------------------------------
    def prior(self) -> dist.Distribution:
        """N(0, I_L), the distribution of z (event dim 1)."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def generate(self, z: torch.Tensor, *, hard: bool = True) -> torch.Tensor:
        """G(z) for z ``(..., L)``: ``(..., D)``.

        ``hard=True``: binary pixels step(g(z)) in the forward pass; with
        ``relax="straight_through"`` gradients flow through sigmoid(g(z)).
        ``hard=False``: what the discriminator is trained on (binary with
        straight-through gradients, or sigmoid(g(z)) for ``relax="sigmoid"``).
        """
        probs = torch.sigmoid(self.generator(z))
        if not hard and self.relax == "sigmoid":
            return probs
        return _StraightThrough.apply(probs)

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """Logits d(x) of D(x) = sigmoid(d(x)), the probability that x is real: ``(...,)``."""
        return self.discriminator(x).squeeze(-1)

    # ----- the probabilistic program ----------------------------------------------
    def model(self, x=None, num_data=None):
        """z ~ N(0, I); x = G(z) observed under a Delta (log-density 0 or -inf).

        A valid Pyro program for tracing, simulation and shape checks; not trainable by
        an ELBO (see the module docstring).
        """
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", dist.Delta(self.generate(z).detach(), event_dim=1), obs=x)

    # guide: the base class's empty guide (z is drawn from the prior in model)

    # ----- density and simulation -------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.check_data(x)
        raise NoDensityError(
            "a GAN defines no tractable density: its samples are x = G(z), a deterministic "
            "function of z ~ N(0, I), so p(x) is the Gaussian mass of the preimage "
            "G^{-1}(x), which has no closed form and which adversarial training never "
            "estimates; score it on samples with inference.sample_quality "
            "(Frechet distance, kernel MMD, Parzen window, mode coverage)"
        )

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` binary samples G(z), z ~ N(0, I): ``(n, D)``."""
        z = self.prior().sample((n,))
        return self.generate(z, hard=True).detach()

    def num_parameters(self) -> int:
        """Generator weights and biases: sum over consecutive widths (a, b) of (a + 1) b."""
        sizes = (self.latent_dim, *self.hidden, self.data_dim)
        return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
