"""One RGB pixel: the joint p(R, G, B) over 256^3 colours beside independent channels.

A pixel has C = 3 channels of L = 256 levels each. The outcome is encoded as one
category, index = (R L + G) L + B (:meth:`RGBPixel.encode` / :meth:`RGBPixel.decode`).

* ``factorization="joint"``: one categorical over all L^C colours,
      p(r, g, b) = softmax(l)[index(r, g, b)]          **L^C - 1** = 16,777,215 parameters;
* ``factorization="independent"``: p(r, g, b) = p(r) p(g) p(b), each a categorical over L
  levels                                               **C (L - 1)** = 765 parameters.

Both are trained as Pyro models with an empty guide (maximum likelihood), or in closed
form by :meth:`RGBPixel.fit_counts` (the posterior predictive under a symmetric
Dirichlet(alpha) prior: smoothed counts). :func:`sample_photo_pixels` gives the real
pixels of scikit-learn's two bundled photographs, split into train and held-out sets.

For the zoo's generic categorical interface, ``num_categories=m`` (when m is not L^C)
builds a one-channel "pixel" with m levels, where both factorisations coincide.

Reference: the lecture's counting example (Stanford CS236, Ermon & Grover, "Introduction
and background"): "a single pixel's colour has 256 x 256 x 256 - 1 parameters".
"""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from zoo.autoregressive import check_sizes
from zoo.base import ZooModel, data_plate

__all__ = ["ChannelProduct", "RGBPixel", "sample_photo_pixels"]

FACTORIZATIONS = ("joint", "independent")


class ChannelProduct(TorchDistribution):
    """Independent categorical channels, as a distribution over the joint index.

    ``logits``: (C, L); the index of (v_1..v_C) is sum_c v_c L^(C-1-c).
    """

    arg_constraints = {"logits": constraints.real}

    def __init__(self, logits: torch.Tensor, batch_shape=torch.Size(), validate_args=None):
        self.logits = logits.log_softmax(-1)
        self.channels, self.levels = logits.shape
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.levels**self.channels - 1)

    def expand(self, batch_shape, _instance=None):
        return ChannelProduct(self.logits, batch_shape)

    def _digits(self, index):
        powers = self.levels ** torch.arange(self.channels - 1, -1, -1, device=index.device)
        return (index.unsqueeze(-1) // powers) % self.levels

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            values = torch.distributions.Categorical(logits=self.logits).sample(shape)  # (*shape, C)
            powers = self.levels ** torch.arange(self.channels - 1, -1, -1, device=values.device)
            return (values * powers).sum(-1)

    def log_prob(self, value):
        digits = self._digits(value.long())  # (*batch, C)
        channel = torch.arange(self.channels, device=value.device)
        return self.logits[channel, digits].sum(-1)


class RGBPixel(ZooModel):
    """A categorical colour: the full joint over L^C colours or independent channels.

    :param int levels: L, levels per channel (256).
    :param int channels: C (3).
    :param str factorization: ``"joint"`` or ``"independent"``.
    :param int num_categories: optional; L^C, or else a one-channel pixel with this
        many levels (the form the zoo's generic categorical interface uses).
    """

    support = "categorical"
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.1, steps=2000, batch_size=4096)

    def __init__(self, levels: int = 256, channels: int = 3, factorization: str = "joint", num_categories: int | None = None):
        super().__init__()
        levels, channels = check_sizes((levels, channels), "levels and channels")
        if num_categories is not None and num_categories != levels**channels:
            (levels,) = check_sizes(num_categories, "num_categories")
            channels = 1
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
        self.levels, self.channels, self.factorization = levels, channels, factorization
        self.num_categories = levels**channels
        self.data_dim = 1
        if factorization == "joint":
            if self.num_categories > 2**26:
                raise ValueError(f"the joint over {levels}^{channels} colours is too large to store")
            self.logits = torch.nn.Parameter(torch.zeros(self.num_categories))
        else:
            self.logits = torch.nn.Parameter(torch.zeros(channels, levels))

    def _distribution(self):
        if self.factorization == "joint":
            return dist.Categorical(logits=self.logits)
        return ChannelProduct(self.logits)

    def model(self, x=None, num_data=None):
        """x: (batch,) int64 colour indices, or None to simulate ``num_data`` pixels."""
        with data_plate(x, num_data):
            return pyro.sample("x", self._distribution(), obs=x)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Channel values (batch, C) in 0..L-1 -> colour indices (batch,)."""
        values = torch.as_tensor(values).long()
        if values.dim() != 2 or values.shape[1] != self.channels:
            raise ValueError(f"expected channel values of shape (batch, {self.channels}), got {tuple(values.shape)}")
        if values.numel() and (values.min() < 0 or values.max() >= self.levels):
            raise ValueError(f"channel values must lie in 0..{self.levels - 1}")
        powers = self.levels ** torch.arange(self.channels - 1, -1, -1)
        return (values * powers).sum(-1)

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Colour indices (batch,) -> channel values (batch, C)."""
        powers = self.levels ** torch.arange(self.channels - 1, -1, -1, device=index.device)
        return (index.long().unsqueeze(-1) // powers) % self.levels

    @torch.no_grad()
    def fit_counts(self, x: torch.Tensor, pseudo_count: float = 1.0) -> "RGBPixel":
        """Set the parameters in closed form: the posterior predictive under Dirichlet(alpha).

        Joint: p(colour) = (n_colour + alpha) / (N + alpha L^C). Independent channels:
        each channel's levels likewise, with L in place of L^C. Returns ``self``.
        """
        self.check_data(x)
        if not pseudo_count > 0:
            raise ValueError(f"pseudo_count must be positive, got {pseudo_count}")
        if self.factorization == "joint":
            counts = torch.bincount(x, minlength=self.num_categories).double()
        else:
            digits = self.decode(x)
            counts = torch.stack([torch.bincount(digits[:, c], minlength=self.levels) for c in range(self.channels)]).double()
        self.logits.copy_((counts + pseudo_count).log().to(self.logits.dtype))
        return self

    def log_prob(self, x):
        self.check_data(x)
        return self._distribution().log_prob(x)

    def num_parameters(self) -> int:
        if self.factorization == "joint":
            return self.num_categories - 1
        return self.channels * (self.levels - 1)


def sample_photo_pixels(test_fraction: float = 0.2, seed: int = 0, max_pixels: int | None = None):
    """The RGB pixels of scikit-learn's two bundled photographs, shuffled and split.

    Returns ``(train, test)``, int64 tensors of shape (N, 3) with values 0..255
    (china.jpg and flower.jpg, 427 x 640 each: 546,560 pixels). ``max_pixels`` keeps a
    random subset first (for quick runs).
    """
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    pixels = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64))
    g = torch.Generator().manual_seed(int(seed))
    pixels = pixels[torch.randperm(len(pixels), generator=g)]
    if max_pixels is not None:
        pixels = pixels[: int(max_pixels)]
    num_test = int(round(test_fraction * len(pixels)))
    return pixels[num_test:], pixels[:num_test]
