"""Markov chains over the pixels: each pixel depends only on the k pixels before it.

For order k (default 1) and pixels in their natural (raster) order,

    p(x) = prod_{i<k} p(x_i | x_1..x_{i-1}) * prod_{i>=k} p(x_i | x_{i-k}..x_{i-1}),

each conditional a free table: one Bernoulli probability per configuration of the
parents. Conditional independence given the last k pixels is the assumption between the
independent pixels (k = 0) and the full chain rule (k = n - 1, the full joint).

Parameters: **(2^k - 1) + (n - k) 2^k**; for k = 1 that is **2n - 1**, for k = 0 it is n,
and for k = n - 1 it is 2^n - 1. The first k pixels have 2^0, 2^1, ..., 2^(k-1) table
entries (fewer parents), the other n - k pixels 2^k each; the model stores exactly these.
Fitted by maximum likelihood (empty guide).

Reference: Koller & Friedman, *Probabilistic Graphical Models* (2009), section 6.2;
Bishop, *Pattern Recognition and Machine Learning* (2006), section 13.1.
"""
from __future__ import annotations

import torch

from zoo.autoregressive import AutoregressiveBernoulli, check_dim

__all__ = ["Markov"]


class Markov(AutoregressiveBernoulli):
    """A k-th order Markov chain over n binary pixels in raster order.

    :param int data_dim: n.
    :param int order: k, the number of preceding pixels each pixel depends on,
        0 <= k < n and k <= :attr:`MAX_ORDER`.
    """

    MAX_ORDER = 20
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.1, steps=800, batch_size=256)

    def __init__(self, data_dim: int = 64, order: int = 1):
        super().__init__()
        n = check_dim(data_dim)
        if isinstance(order, bool) or int(order) != order or order < 0:
            raise ValueError(f"order must be a non-negative integer, got {order!r}")
        k = int(order)
        if k >= n:
            raise ValueError(
                f"a Markov chain over {n} pixels has order at most {n - 1} "
                f"(order {n - 1} is already the full joint), got order={k}"
            )
        if k > self.MAX_ORDER:
            raise ValueError(f"order {k} needs 2^{k} entries per pixel; at most {self.MAX_ORDER} allowed")
        self.data_dim, self.order = n, k
        self._set_ordering(None)
        # head[i]: the 2^i logits of pixel i < k; tail: (n - k, 2^k) logits of the others
        self.head = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2**i)) for i in range(k)])
        self.tail = torch.nn.Parameter(torch.zeros(n - k, 2**k))
        self.register_buffer("powers", 2 ** torch.arange(k - 1, -1, -1))

    def conditional_logits(self, x):
        n, k = self.data_dim, self.order
        xl = x.long()
        out = []
        for i, table in enumerate(self.head):  # pixel i's parents are pixels 0..i-1
            index = (xl[:, :i] * self.powers[k - i :]).sum(-1)
            out.append(table[index])
        if k == 0:
            tail = self.tail[:, 0].expand(x.shape[0], n)
        else:
            windows = xl[:, : n - 1].unfold(1, k, 1)  # (batch, n - k, k): pixels i-k..i-1
            index = (windows * self.powers).sum(-1)  # (batch, n - k)
            tail = self.tail.gather(1, index.t()).t()
        return torch.cat([torch.stack(out, -1), tail], -1) if out else tail

    def num_parameters(self) -> int:
        n, k = self.data_dim, self.order
        return (2**k - 1) + (n - k) * 2**k
