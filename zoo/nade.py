"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray 2011).

In an ordering o of the n pixels (default raster order), with x_t := x_{o_t} and H hidden
units,

    h_t = sigmoid(c + W[:, <t] x_<t)                       (H,)
    p(x_t = 1 | x_<t) = sigmoid(b_t + V_t . h_t)

Every conditional has its own hidden layer, but all of them share the weights W and the
bias c, so that h_{t+1} = h_t's pre-activation + W[:, t] x_t: evaluating all n
conditionals costs O(nH), not O(n^2 H). The chain rule is exact, hence log p(x) is
normalised.

Parameters: **2nH + n**: W is H x (n - 1) (the last pixel conditions nothing), c has H,
V is n x H and b has n entries: H(n-1) + H + nH + n. (Larochelle & Murray store W as
H x n, i.e. 2nH + n + H, with one column that never receives a gradient.)
Fitted by maximum likelihood (empty guide).

Computation: :class:`NADELogits`, a custom autograd function that runs this recurrence in
blocks of pixels forward and its reverse backward (O(nH) time an image, never all the
n x B x H activations in memory), and for binary x evaluates the hidden layer only where
it changes (after a pixel that is on). ``python -m benchmarks.autoregressive`` times it against the
former cumulative-sum formulation (:func:`nade_logits_cumsum`) and the FLOP floor.

References: Larochelle & Murray, "The Neural Autoregressive Distribution Estimator",
AISTATS 2011; Uria et al., "Neural Autoregressive Distribution Estimation", JMLR 2016.
"""
from __future__ import annotations

import math

import torch

from zoo.autoregressive import AutoregressiveBernoulli, check_dim, check_sizes

__all__ = ["NADE"]


class NADE(AutoregressiveBernoulli):
    """NADE with sigmoid hidden units and tied input weights.

    :param int data_dim: n.
    :param int hidden_size: H.
    :param ordering: ``"natural"`` (default), ``"reverse"``, ``"random"`` (with ``seed``)
        or a permutation of 0..n-1.
    :param int seed: seed of a random ordering.
    """

    # digits (1197 x 64): validation NLL 16.5 nats after 100 epochs (H = 128); longer overfits
    static_structure = True  # traceable: the fast path replays its objective (tests/inference/test_fast_path.py)
    fit_defaults = dict(lr=0.01, epochs=100, batch_size=64)
    #: the paper's setting (read by the leaderboard): H = 500 on binarized MNIST; L&M trained
    #: by SGD with early stopping on the validation split, here Adam
    paper = dict(
        options=dict(hidden_size=500),
        recipe=dict(lr=1e-3, batch_size=100, epochs=100, early_stopping=10),
        published=dict(fixed=88.86, dynamic=85.65),
        citation="Larochelle & Murray 2011 (fixed); pytorch-generative README (dynamic)",
        note="paper: SGD, H=500, early stopping on validation; ours: Adam. pytorch-generative's reproduce() "
        "(dynamic, 85.65): H=500, Adam 1e-3, batch 512, 50 epochs",
    )

    def __init__(self, data_dim: int = 64, hidden_size: int = 128, ordering="natural", seed: int = 0):
        super().__init__()
        self.data_dim = n = check_dim(data_dim)
        (self.hidden_size,) = check_sizes(hidden_size, "hidden_size")
        H = self.hidden_size
        self._set_ordering(ordering, seed)
        g = torch.Generator().manual_seed(int(seed))
        self.W = torch.nn.Parameter((torch.rand(H, n - 1, generator=g) * 2 - 1) / math.sqrt(n))
        self.c = torch.nn.Parameter(torch.zeros(H))
        self.V = torch.nn.Parameter((torch.rand(n, H, generator=g) * 2 - 1) / math.sqrt(H))
        self.b = torch.nn.Parameter(torch.zeros(n))

    def conditional_logits(self, x):
        xo = self._to_ordering(x)
        return self._from_ordering(nade_logits(xo, self.W, self.c, self.V, self.b))

    @torch.no_grad()
    def _ancestral_sample(self, num):
        """O(nH) per draw: the hidden pre-activation grows by one column of W per pixel."""
        n = self.data_dim
        xo = self.W.new_zeros(num, n)
        a = self.c.expand(num, -1).clone()
        for t in range(n):
            h = torch.sigmoid(a)
            xo[:, t] = torch.bernoulli(torch.sigmoid(h @ self.V[t] + self.b[t]))
            if t < n - 1:
                a += xo[:, t : t + 1] * self.W[:, t]
        return self._from_ordering(xo)

    def num_parameters(self) -> int:
        n, H = self.data_dim, self.hidden_size
        return 2 * n * H + n


def nade_logits_cumsum(xo: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All n conditional logits of NADE by one cumulative sum (the former formulation).

    ``xo`` (B, n); ``W`` (H, n-1); ``c`` (H,); ``V`` (n, H); ``b`` (n,) -> (B, n).
    The pre-activation of conditional t is c + sum_{s<t} W[:, s] x_s, a cumulative sum
    over an (n, B, H) tensor (200 MB at 784-500, batch 128), differentiated by autograd:
    simple, but memory-bound (~2.2 s a step at 784-500 on one thread). Kept as the
    reference that :func:`nade_logits` is tested and benchmarked against.
    """
    shifted = torch.nn.functional.pad(xo[:, :-1], (1, 0)).t()  # (n, B): x_{t-1} at t, 0 at t=0
    W0 = torch.nn.functional.pad(W, (1, 0)).t().unsqueeze(1)  # (n, 1, H): row t multiplies x_{t-1}
    a = torch.cumsum(shifted.unsqueeze(-1) * W0, dim=0).add_(c)  # (n, B, H) pre-activations
    logits = torch.baddbmm(b.view(-1, 1, 1), torch.sigmoid(a), V.unsqueeze(-1))  # (n, B, 1)
    return logits.squeeze(-1).t()


#: pixels per block of :class:`NADELogits`: smaller blocks waste less arithmetic (a block of T
#: pixels computes P ~ B (1 + 0.13 T) states against T positions each), larger ones fewer
#: operations. At 784-500, batch 128, one thread on an AMD EPYC: 12 -> 71, 16 -> 73, 24 -> 77,
#: 32 -> 78 ms a step (medians of 9 rounds in one run, a leaderboard row on the other core)
BLOCK = 16


def nade_logits(xo: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor,
                block: int | None = None) -> torch.Tensor:
    """All n conditional logits of NADE for inputs already in the ordering, in O(nH) memory.

    ``xo`` (B, n); ``W`` (H, n-1); ``c`` (H,); ``V`` (n, H); ``b`` (n,) -> (B, n).
    The same values and gradients as :func:`nade_logits_cumsum` (to rounding), computed
    block by block of ``block`` pixels by :class:`NADELogits`.
    """
    return NADELogits.apply(xo, W, c, V, b, int(block or BLOCK))


def _block_states(xblocks: torch.Tensor, dense: bool):
    """The distinct hidden states of every block of T pixels, per image.

    ``xblocks`` (nb, B, T): block k of image b. With binary x, a_{t+1} = a_t + W_t x_t
    changes only after a pixel that is on: position j of image b in block k is in state
    ``state[k, b, j]`` = the number of pixels on before j in the block, so the pair has
    1 + state[k, b, T-1] distinct states (about 1 + 0.13 T on MNIST, instead of T). With
    ``dense`` (x not binary, or its gradient wanted) state j is position j. The states are
    stacked as P rows, block-major then image-major: row p is state ``s[p]`` of image
    ``img[p]`` in its block, and its pre-activation is a_block[img[p]] + Xs[p] @ W_block^T
    with Xs[p, i] = x[img[p], i] [state(img[p], i) < s[p]].
    Returns one (index, img, Xs, Ss) per block, slices of tensors computed once for all
    blocks: ``index[b, j]`` is the block's row of position j of image b and
    ``Ss[p, j] = [index[img[p], j] == p]`` (which positions row p serves).
    """
    nb, B, T = xblocks.shape
    flat = xblocks.reshape(nb * B, T)
    if dense:
        state = torch.arange(T, device=flat.device).expand(nb * B, T)
    else:
        state = (torch.cumsum(flat, 1) - flat).long()
    counts = state[:, -1] + 1  # (nb B,) states of each (block, image)
    ends = torch.cumsum(counts, 0)
    first = ends - counts
    pair = torch.repeat_interleave(torch.arange(nb * B, device=flat.device), counts)  # (P,)
    s = (torch.arange(len(pair), device=flat.device) - first[pair]).unsqueeze(1)
    rows = state[pair]
    Xs = torch.where(rows < s, flat[pair], 0)
    Ss = (rows == s).to(flat.dtype)
    bounds = [0] + ends.view(nb, B)[:, -1].tolist()  # the rows of block k: bounds[k]:bounds[k+1]
    index = (first.unsqueeze(1) + state).view(nb, B, T)
    img = pair % B  # pair = k B + b
    out = []
    for k in range(nb):
        r = slice(bounds[k], bounds[k + 1])
        out.append((index[k] - bounds[k], img[r], Xs[r], Ss[r]))
    return out


class NADELogits(torch.autograd.Function):
    """NADE's logits with Larochelle & Murray's O(nH) recurrence, forward and backward.

    Pixels (in the ordering) are taken in blocks of T; the pre-activation at the start of
    every block, a_block = c + W[:, <block] x_<block, grows by one (B, T) x (T, H) matmul a
    block. Within a block the distinct hidden pre-activations (:func:`_block_states`) are
    a_block plus one (P, T) x (T, H) matmul of a 0/1 selection matrix; h = sigmoid(a);
    logit_t = b_t + V_t . h_t (one (P, H) x (H, T) matmul and a gather). Saved for
    backward: the blocks' a_block (n/T x B x H values) and, for binary x, the h of the
    distinct states (about (1 + 0.13 T) / T of the n x B x H activations on MNIST: a fifth
    at T = 16); never all n x B x H of them, so the work of a block stays in cache.

    Backward, the reverse recurrence from the last block: the block's h (recomputed when x
    is real-valued or its gradient is wanted: then every position is a state);
    da_p = (sum over positions in state p of dL/dlogit_t V_t) * h_p (1 - h_p); with R the
    sum of da over all later blocks (per image), dL/dW[:, i] = sum_images x_i (R + the
    sum of da over the states after pixel i) (the selection matrix transposed),
    dL/dV_t = sum_images dL/dlogit_t h_t, dL/dc = the sum of all da, and dL/dx likewise.
    """

    @staticmethod
    def forward(ctx, xo, W, c, V, b, block):
        B, n = xo.shape
        H = c.shape[0]
        T = max(1, min(block, n))
        nb = -(-n // T)
        pad = nb * T - n
        # zero padding to whole blocks (and for W's missing last column): contributes nothing
        xp = torch.nn.functional.pad(xo, (0, pad))
        WT = torch.nn.functional.pad(W, (0, pad + 1)).t().contiguous()  # (nb T, H)
        Vp = torch.nn.functional.pad(V, (0, 0, 0, pad))
        dense = bool(ctx.needs_input_grad[0]) or not bool(((xo == 0) | (xo == 1)).all())
        # a_block, block by block: c, then plus each block's x_block W_block^T
        xblocks = xp.view(B, nb, T).transpose(0, 1)  # (nb, B, T)
        bases = [c.expand(B, H)]
        logits = xo.new_empty(B, nb * T)
        positions = torch.arange(T, device=xo.device)
        states = _block_states(xblocks, dense)
        hs = []  # binary x: h of every state, kept for backward (about (1 + 0.13 T) / T of n B H values)
        for k, (index, img, Xs, Ss) in enumerate(states):
            s = slice(k * T, (k + 1) * T)
            if k + 1 < nb:
                bases.append(torch.addmm(bases[k], xblocks[k], WT[s]))
            h = bases[k].index_select(0, img).addmm_(Xs, WT[s]).sigmoid_()  # (P, H)
            if not dense:
                hs.append(h)
            logits[:, s] = torch.mm(h, Vp[s].t())[index, positions]  # (P, T) pairs, gathered
        ctx.save_for_backward(xp, WT, Vp, *bases)
        ctx.states = states
        ctx.hs = hs
        ctx.sizes = (B, n, H, T, nb, dense)
        return logits[:, :n] + b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        xp, WT, Vp, *bases = ctx.saved_tensors
        B, n, H, T, nb, dense = ctx.sizes
        need_x = ctx.needs_input_grad[0]
        g = torch.nn.functional.pad(grad, (0, nb * T - n))  # (B, nb T)
        dWT = torch.empty_like(WT)
        dV = torch.empty_like(Vp)
        dx = torch.empty_like(xp) if need_x else None
        R = grad.new_zeros(B, H)  # per image: the sum of da over the positions after the block
        for k in reversed(range(nb)):
            s = slice(k * T, (k + 1) * T)
            xb = xp[:, s]
            index, img, Xs, Ss = ctx.states[k]
            h = ctx.hs[k] if ctx.hs else bases[k].index_select(0, img).addmm_(Xs, WT[s]).sigmoid_()
            Gs = g[:, s].index_select(0, img).mul_(Ss)  # (P, T): dL/dlogit_t of the row's positions
            torch.mm(Gs.t(), h, out=dV[s])
            dA = torch.mm(Gs, Vp[s]).mul_(torch.addcmul(h, h, h, value=-1))  # (P, H): dh * h (1 - h)
            torch.mm(xb.t(), R, out=dWT[s]).addmm_(Xs.t(), dA)
            if need_x:  # dense: row p = b T + j is position j of image b
                later = torch.ones(T, T, dtype=dA.dtype, device=dA.device).tril_(-1).repeat(B, 1)  # [j, i] = j > i
                dx[:, s] = ((dA @ WT[s].t()) * later).view(B, T, T).sum(1).addmm_(R, WT[s].t())
            R.index_add_(0, img, dA)
        return (dx[:, :n] if need_x else None, dWT[: n - 1].t() if ctx.needs_input_grad[1] else None,
                R.sum(0), dV[:n], grad.sum(0), None)
