"""The full joint: one categorical distribution over all 2^n states of n binary pixels.

    p(x) = Categorical(index(x) | softmax(l)),   index(x) = sum_i x_i 2^(n-1-i)

No assumption at all: the chain rule with every conditional a free table. It can express
any distribution over n binary pixels, and needs one probability per state but the last:

Parameters: **2^n - 1** (the softmax has 2^n logits, one redundant). For a 28 x 28 binary
image that is 2^784 - 1 ~ 10^236, so the model exists only for small n: the constructor
refuses n > ``FullJoint.MAX_DATA_DIM`` (24, i.e. 16.8 M logits, 64 MiB).
Fitted by maximum likelihood (empty guide); states never seen get probability -> 0.

Reference: Koller & Friedman, *Probabilistic Graphical Models* (2009), section 2.1.
"""
from __future__ import annotations

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from zoo.autoregressive import check_dim
from zoo.base import ZooModel, data_plate

__all__ = ["FullJoint", "JointBernoulli"]


class JointBernoulli(TorchDistribution):
    """A distribution over binary vectors of length ``n`` given by 2^n joint logits.

    State ``x`` has index ``sum_i x_i 2^(n-1-i)`` (pixel 0 is the most significant bit).
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, n: int, validate_args=None):
        if logits.shape[-1] != 2**n:  # (under torch.jit.trace shapes are tensors; n is not)
            raise ValueError(f"JointBernoulli over {n} pixels needs 2^{n} logits, got {logits.shape[-1]}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.n = n
        super().__init__(logits.shape[:-1], torch.Size([n]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return JointBernoulli(self.logits.expand(torch.Size(batch_shape) + self.logits.shape[-1:]), self.n)

    def _weights(self, device):
        return 2 ** torch.arange(self.n - 1, -1, -1, device=device)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            bits = (index.unsqueeze(-1) // self._weights(index.device)) % 2
        return bits.to(self.logits.dtype).reshape(shape + self.event_shape)

    def log_prob(self, value):
        index = (value.long() * self._weights(value.device)).sum(-1)
        logits = self.logits.expand(index.shape + self.logits.shape[-1:])
        return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)


class FullJoint(ZooModel):
    """A free categorical distribution over the 2^n states of n binary pixels.

    :param int data_dim: n, at most :attr:`MAX_DATA_DIM`.
    """

    MAX_DATA_DIM = 24
    support = "binary"
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.1, steps=1000, batch_size=1024)

    def __init__(self, data_dim: int = 10):
        super().__init__()
        n = check_dim(data_dim)
        if n > self.MAX_DATA_DIM:
            raise ValueError(
                f"the full joint over {n} binary pixels needs 2^{n} - 1 parameters "
                f"(about 10^{n * 0.30103:.0f}); this implementation stores them and allows "
                f"data_dim <= {self.MAX_DATA_DIM}"
            )
        self.data_dim = n
        self.logits = torch.nn.Parameter(torch.zeros(2**n))

    def model(self, x=None, num_data=None):
        """x: (batch, n) float 0/1, or None to simulate ``num_data`` rows."""
        with data_plate(x, num_data):
            return pyro.sample("x", JointBernoulli(self.logits, self.data_dim), obs=x)

    def num_parameters(self) -> int:
        return 2**self.data_dim - 1
