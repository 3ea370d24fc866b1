"""Beta-Bernoulli: independent binary variables with conjugate Beta priors.

Generative story (``data_dim = n``; ``n = 1`` is the lecture's "dog / not dog")::

    p_i ~ Beta(a, b)                      i = 1..n      (site "p", shape (n,))
    x_ji | p ~ Bernoulli(p_i)             j = 1..N      (site "x", shape (N, n))

so p(x | p) = prod_i p_i^{x_i} (1 - p_i)^{1 - x_i}.

Parameters of the distribution over x: **n** (one probability per variable).

Guide: q(p) = prod_i Beta(alpha_i, beta_i), initialised at the prior. The exact posterior
is Beta(a + sum_j x_ji, b + N - sum_j x_ji) (:meth:`BetaBernoulli.exact_posterior`).
``log_prob`` and ``sample`` use the posterior mean E_q[p], which makes them the exact
posterior predictive distribution of one new x under q.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions.utils import probs_to_logits
from torch.distributions import constraints

from zoo.base import ZooModel, data_plate


class BetaBernoulli(ZooModel):
    """Independent Bernoulli variables with Beta(a, b) priors.

    :param int data_dim: n, the number of binary variables.
    :param prior: (a, b), the Beta prior's concentrations (default uniform (1, 1)).
    """

    support = "binary"
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.3, steps=3000, batch_size=4096, num_particles=4)

    def __init__(self, data_dim: int = 1, prior: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if int(data_dim) < 1:
            raise ValueError(f"data_dim must be a positive integer, got {data_dim}")
        a, b = (float(v) for v in prior)
        if not (a > 0 and b > 0):
            raise ValueError(f"prior (a, b) must be positive, got {prior}")
        self.data_dim = int(data_dim)
        self.register_buffer("prior_a", torch.full((self.data_dim,), a))
        self.register_buffer("prior_b", torch.full((self.data_dim,), b))
        # q(p_i) = Beta(m_i c_i, (1 - m_i) c_i): mean m and total concentration c optimise
        # far better than (alpha, beta) directly (they decouple location and spread)
        self.q_mean = PyroParam(
            torch.full((self.data_dim,), a / (a + b)), constraint=constraints.unit_interval
        )
        self.q_concentration = PyroParam(
            torch.full((self.data_dim,), a + b), constraint=constraints.positive
        )

    def model(self, x=None, num_data=None):
        """x: (batch, n) float 0/1, or None to simulate ``num_data`` rows."""
        p = pyro.sample("p", dist.Beta(self.prior_a, self.prior_b).to_event(1))
        # Bernoulli(p) by its logits, taken here once per draw of p: the plate expands the
        # distribution to every row, and Bernoulli(probs=p) would take the logits of the
        # expanded (rows, n) probabilities, once per row
        logits = probs_to_logits(p, is_binary=True)
        with data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    @property
    def alpha(self):
        return self.q_mean * self.q_concentration

    @property
    def beta(self):
        return (1 - self.q_mean) * self.q_concentration

    def guide(self, x=None, num_data=None):
        pyro.sample("p", dist.Beta(self.alpha, self.beta).to_event(1))

    def exact_posterior(self, x: torch.Tensor) -> dict[str, dist.Distribution]:
        """The conjugate posterior p(p | x) given all data x of shape (N, n)."""
        self.check_data(x)
        ones = x.sum(0)
        return {
            "p": dist.Beta(self.prior_a + ones, self.prior_b + x.shape[0] - ones).to_event(1)
        }

    def point_estimate(self):
        return {"p": self.alpha / (self.alpha + self.beta)}

    def num_parameters(self) -> int:
        return self.data_dim
