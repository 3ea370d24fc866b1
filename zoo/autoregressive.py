"""What the autoregressive binary models of the zoo share (Markov chains, FVSBN, NADE, MADE).

Each such model factorises p(x) by the chain rule in an ordering o of the n pixels,

    p(x) = prod_t p(x_{o_t} | x_{o_1}, ..., x_{o_{t-1}}),

with every conditional a Bernoulli whose logit a subclass computes, for all t at once, in
:meth:`AutoregressiveBernoulli.conditional_logits`. Because the logit of pixel o_t depends
only on pixels earlier in the ordering, ``Bernoulli(logits=conditional_logits(x))`` is a
normalised distribution when evaluated *at the same* x: that is the observed site ``x`` of
:meth:`AutoregressiveBernoulli.model`, and the network runs in the model body (so the
engine, and Pyro's own SVI, see its parameters). To simulate (``x=None``) the model draws
ancestrally, one pixel at a time in the ordering (:class:`Ancestral`).

Not a model itself; one model per file lives beside it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from zoo.base import ZooModel, data_plate

__all__ = ["Ancestral", "AutoregressiveBernoulli", "check_dim", "check_sizes", "make_ordering"]


def make_ordering(ordering, n: int, seed: int = 0) -> torch.Tensor:
    """The ordering as a permutation tensor: ``ordering[t]`` is the pixel visited t-th.

    :param ordering: ``None``/``"natural"`` (0, 1, ..., n-1), ``"reverse"``, ``"random"``
        (a permutation drawn with ``seed``) or a sequence holding each of 0..n-1 once.
    :raises ValueError: anything else.
    """
    if ordering is None or (isinstance(ordering, str) and ordering == "natural"):
        return torch.arange(n)
    if isinstance(ordering, str):
        if ordering == "reverse":
            return torch.arange(n - 1, -1, -1)
        if ordering == "random":
            return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        raise ValueError(
            f"ordering must be 'natural', 'reverse', 'random' or a permutation of 0..{n - 1}, "
            f"got {ordering!r}"
        )
    perm = torch.as_tensor(ordering)
    if (
        perm.dim() != 1
        or perm.is_floating_point()
        or perm.numel() != n
        or not torch.equal(perm.sort().values, torch.arange(n))
    ):
        raise ValueError(f"ordering must be a permutation of 0..{n - 1}, got {list(ordering)}")
    return perm.long().clone()


class Ancestral(TorchDistribution):
    """A distribution over binary vectors defined by an ancestral sampler and a log-density.

    ``sample_fn(num) -> (num, n)`` draws ancestrally; ``log_prob_fn(x) -> (batch,)``.
    Used for the model's ``x`` site when it simulates (``x=None``).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(
        self,
        sample_fn: Callable[[int], torch.Tensor],
        log_prob_fn: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        batch_shape=torch.Size(),
        validate_args=None,
    ):
        self.sample_fn = sample_fn
        self.log_prob_fn = log_prob_fn
        super().__init__(torch.Size(batch_shape), torch.Size([n]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return Ancestral(self.sample_fn, self.log_prob_fn, self.event_shape[0], batch_shape)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        draws = self.sample_fn(max(shape.numel(), 0))
        return draws.reshape(shape + self.event_shape)

    def log_prob(self, value):
        flat = value.reshape(-1, self.event_shape[0])
        return self.log_prob_fn(flat).reshape(value.shape[:-1])


class AutoregressiveBernoulli(ZooModel):
    """Base class: binary data, chain-rule factorisation in ``self.ordering``.

    A subclass sets ``self.data_dim``, calls ``self._set_ordering(ordering)`` (see
    :func:`make_ordering`) and implements :meth:`conditional_logits`.
    """

    support = "binary"
    ordering: torch.Tensor

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of p(x_i = 1 | pixels before i in the ordering), shape ``(batch, n)``.

        ``x``: ``(batch, n)``, indexed by pixel (not by position in the ordering).
        Column i may depend only on the columns that precede i in the ordering.
        """
        raise NotImplementedError

    def model(self, x=None, num_data=None):
        """x: (batch, n) float 0/1, or None to simulate ``num_data`` rows ancestrally."""
        with data_plate(x, num_data):
            if x is None:
                fn = Ancestral(self._ancestral_sample, self._log_prob_values, self.data_dim, (num_data,))
            else:
                fn = dist.Bernoulli(logits=self.conditional_logits(x)).to_event(1)
            return pyro.sample("x", fn, obs=x)

    def _log_prob_values(self, x: torch.Tensor) -> torch.Tensor:
        return dist.Bernoulli(logits=self.conditional_logits(x)).log_prob(x).sum(-1)

    @torch.no_grad()
    def _ancestral_sample(self, num: int) -> torch.Tensor:
        """``num`` draws, one pixel at a time in the ordering (n network passes)."""
        device = self.ordering.device
        x = torch.zeros(num, self.data_dim, device=device)
        for i in self.ordering.tolist():
            p = torch.sigmoid(self.conditional_logits(x)[:, i])
            x[:, i] = torch.bernoulli(p)
        return x

    def _to_ordering(self, x: torch.Tensor) -> torch.Tensor:
        """Columns of ``x`` rearranged so that column t is pixel ``ordering[t]``."""
        return x[:, self.ordering]

    def _from_ordering(self, values: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_to_ordering` (column t back to pixel ``ordering[t]``)."""
        return values[:, self.inverse_ordering]

    def _set_ordering(self, ordering, seed: int = 0) -> None:
        perm = make_ordering(ordering, self.data_dim, seed)
        self.register_buffer("ordering", perm)
        self.register_buffer("inverse_ordering", torch.argsort(perm))


def check_dim(data_dim, name: str = "data_dim") -> int:
    """``data_dim`` as a positive int, or a ValueError."""
    if isinstance(data_dim, bool) or int(data_dim) != data_dim or int(data_dim) < 1:
        raise ValueError(f"{name} must be a positive integer, got {data_dim!r}")
    return int(data_dim)


def check_sizes(sizes: Sequence[int], name: str) -> tuple[int, ...]:
    """A tuple of positive integers, or a ValueError naming ``name``."""
    if isinstance(sizes, int):
        sizes = (sizes,)
    out = tuple(int(s) for s in sizes)
    if any(s < 1 for s in out) or any(int(s) != s for s in sizes):
        raise ValueError(f"{name} must be positive integers, got {sizes!r}")
    return out
