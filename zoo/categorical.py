"""Dirichlet-Categorical: one categorical variable with a conjugate Dirichlet prior.

Generative story (``num_categories = m``)::

    probs ~ Dirichlet(c)                  (site "probs", shape (m,))
    x_j | probs ~ Categorical(probs)      j = 1..N  (site "x", shape (N,))

Parameters of the distribution over x: **m - 1** (the probabilities sum to one).

Guide: q(probs) = Dirichlet(gamma), initialised at the prior. The exact posterior is
Dirichlet(c + counts) (:meth:`DirichletCategorical.exact_posterior`). ``log_prob`` and
``sample`` use the posterior mean E_q[probs], the exact posterior predictive of one new x.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from zoo.base import ZooModel, data_plate


class DirichletCategorical(ZooModel):
    """A categorical variable over ``num_categories`` outcomes with a Dirichlet prior.

    :param int num_categories: m, the number of outcomes.
    :param concentration: the Dirichlet concentration c, a positive scalar (symmetric
        prior) or a sequence of m positive values. Default 1 (uniform).
    """

    support = "categorical"
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.3, steps=3000, batch_size=4096, num_particles=4)

    def __init__(self, num_categories: int = 2, concentration=1.0):
        super().__init__()
        if int(num_categories) < 2:
            raise ValueError(f"num_categories must be at least 2, got {num_categories}")
        self.num_categories = int(num_categories)
        self.data_dim = 1
        c = torch.as_tensor(concentration, dtype=torch.get_default_dtype())
        c = c.expand(self.num_categories).clone() if c.dim() == 0 else c
        if c.shape != (self.num_categories,) or not bool((c > 0).all()):
            raise ValueError(
                f"concentration must be positive, a scalar or {self.num_categories} values"
            )
        self.register_buffer("concentration", c)
        # q(probs) = Dirichlet(c_q * m_q): mean m_q on the simplex and total concentration
        # c_q optimise far better than the concentrations directly (as in zoo.bernoulli)
        self.q_mean = PyroParam(c / c.sum(), constraint=constraints.simplex)
        self.q_concentration = PyroParam(c.sum(), constraint=constraints.positive)

    def model(self, x=None, num_data=None):
        """x: (batch,) int64 in 0..m-1, or None to simulate ``num_data`` draws."""
        probs = pyro.sample("probs", dist.Dirichlet(self.concentration))
        with data_plate(x, num_data):
            return pyro.sample("x", dist.Categorical(probs), obs=x)

    @property
    def gamma(self) -> torch.Tensor:
        """The guide's Dirichlet concentrations, shape (m,)."""
        return self.q_concentration * self.q_mean

    def guide(self, x=None, num_data=None):
        pyro.sample("probs", dist.Dirichlet(self.gamma))

    def exact_posterior(self, x: torch.Tensor) -> dict[str, dist.Distribution]:
        """The conjugate posterior p(probs | x) given all data x of shape (N,)."""
        self.check_data(x)
        counts = torch.bincount(x, minlength=self.num_categories).to(self.concentration)
        return {"probs": dist.Dirichlet(self.concentration + counts)}

    def point_estimate(self):
        return {"probs": self.q_mean}

    def num_parameters(self) -> int:
        return self.num_categories - 1
