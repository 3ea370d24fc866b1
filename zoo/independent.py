"""Independent pixels: the ladder's bottom rung.

    p(x) = prod_{i=1}^{n} Bernoulli(x_i | sigmoid(a_i))

Every pixel has its own probability and ignores all the others: the factorisation that
cuts the 2^n - 1 parameters of the full joint down to n, and loses all structure.

Parameters: **n** (one logit a_i per pixel), a point estimate fitted by maximum
likelihood (the Bayesian version with Beta priors is ``bernoulli``). The guide is empty.

Reference: any textbook treatment of the naive/fully factorised model, e.g. Murphy,
*Probabilistic Machine Learning: an introduction* (2022), section 3.4.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from zoo.autoregressive import check_dim
from zoo.base import ZooModel, data_plate

__all__ = ["Independent"]


class Independent(ZooModel):
    """n independent Bernoulli pixels with maximum-likelihood probabilities.

    :param int data_dim: n, the number of binary pixels.
    """

    support = "binary"
    # the log-likelihood is concave in the logits: a large step and a short run suffice
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.1, steps=400, batch_size=256)

    def __init__(self, data_dim: int = 64):
        super().__init__()
        self.data_dim = check_dim(data_dim)
        self.logits = torch.nn.Parameter(torch.zeros(self.data_dim))

    def model(self, x=None, num_data=None):
        """x: (batch, n) float 0/1, or None to simulate ``num_data`` rows."""
        with data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def num_parameters(self) -> int:
        return self.data_dim
