"""NADE and MADE: one ``inference.fit`` step against a hand-written PyTorch step.

Both sides hold the same weights (copied), take the same minibatch and the same Adam
update on the same objective, the exact negative log-likelihood of the minibatch scaled to
the data set, -(N/B) sum_n log p(x_n) (the ELBO of a fully observed model with the empty
guide):

* NADE 784-500 (tied weights, sigmoid hidden units): all 784 conditionals from one
  cumulative sum of hidden pre-activations, O(nH) per image;
* MADE 784-500-784 (one masked ReLU layer, one mask).

The engine's step is what ``fit`` runs per step (learning-rate schedule, minibatch
indexing, ``objective.differentiable_loss(model.model, model.guide, ...)``, Adam, loss
read-back), with the objective ``fit`` uses for these models by default (``jit_elbo``: the
Pyro objective traced once and replayed) and with plain Pyro (``elbo``). The baseline is
the loss written with ``torch.nn.functional``. Before timing, both losses are checked equal.
Data: synthetic binary images (timing does not depend on pixel values), batch 128.

    python -m benchmarks.autoregressive [--quick] [--threads 2] [--models nade made] [--rounds 7 --repeat 5]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import inference
import zoo
from benchmarks.common import interleaved, table
from inference.loop import batch_indices, lr_at

OBJECTIVES = ("jit_elbo", "elbo")


def hand_nade_loss(W, c, V, b, batch, num_data):
    """NADE's negative log-likelihood in plain PyTorch (natural ordering)."""
    shifted = F.pad(batch[:, :-1], (1, 0)).t()  # (n, B): x_{t-1} at position t
    a = torch.cumsum(shifted.unsqueeze(-1) * F.pad(W, (1, 0)).t().unsqueeze(1), dim=0).add_(c)  # (n, B, H)
    logits = torch.baddbmm(b.view(-1, 1, 1), torch.sigmoid(a), V.unsqueeze(-1)).squeeze(-1).t()
    return (num_data / batch.shape[0]) * F.binary_cross_entropy_with_logits(logits, batch, reduction="sum")


def hand_made_loss(weights, biases, masks, batch, num_data):
    """MADE's negative log-likelihood in plain PyTorch (one mask)."""
    h = batch
    for l, (w, b, m) in enumerate(zip(weights, biases, masks)):
        h = F.linear(h, w * m, b)
        if l < len(weights) - 1:
            h = F.relu(h)
    return (num_data / batch.shape[0]) * F.binary_cross_entropy_with_logits(h, batch, reduction="sum")


def make_case(name: str, objective: str, data: torch.Tensor, *, hidden: int = 500, batch_size: int = 128):
    """(engine_step, hand_step) for one model and objective, after checking equal losses."""
    n, d = data.shape
    torch.manual_seed(0)
    options = {"hidden_size": hidden} if name == "nade" else {"hidden_sizes": (hidden,)}
    engine_model = zoo.create(name, data_dim=d, **options)
    hand_model = zoo.create(name, data_dim=d, **options)
    hand_model.load_state_dict(engine_model.state_dict())
    if name == "nade":
        params = [hand_model.W, hand_model.c, hand_model.V, hand_model.b]
        hand_loss = lambda batch: hand_nade_loss(*params, batch, n)  # noqa: E731
    else:
        net = hand_model.net
        params = list(net.weights) + list(net.biases)
        masks = net.masks(0)
        hand_loss = lambda batch: hand_made_loss(list(net.weights), list(net.biases), masks, batch, n)  # noqa: E731
    elbo = inference.make_objective(objective)
    opt_e = torch.optim.Adam(engine_model.parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(params, lr=1e-3)
    state = {"engine": 0, "hand": 0}

    def engine_step():
        step = state["engine"]
        for g in opt_e.param_groups:
            g["lr"] = lr_at(step, 10_000, 1e-3, "cosine", 0.01)
        batch = data[batch_indices(step, n, batch_size, 0)]
        loss = elbo.differentiable_loss(engine_model.model, engine_model.guide, batch, num_data=n)
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
        value = float(loss.detach() / n)
        assert value == value
        state["engine"] += 1

    def hand_step():
        step = state["hand"]
        for g in opt_h.param_groups:
            g["lr"] = lr_at(step, 10_000, 1e-3, "cosine", 0.01)
        batch = data[batch_indices(step, n, batch_size, 0)]
        loss = hand_loss(batch)
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        value = float(loss.detach() / n)
        assert value == value
        state["hand"] += 1

    batch = data[:batch_size]
    for _ in range(2 if objective.startswith("jit_") else 1):  # the second call replays the trace
        a = elbo.differentiable_loss(engine_model.model, engine_model.guide, batch, num_data=n)
    b = hand_loss(batch)
    assert torch.allclose(a, b, rtol=1e-5), (name, objective, float(a), float(b))
    return engine_step, hand_step


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--models", nargs="+", default=["nade", "made"], choices=["nade", "made"])
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    parser.add_argument("--repeat", type=int, default=5, help="steps per round")
    args = parser.parse_args(argv)
    rounds, repeat = (3, 2) if args.quick else (args.rounds, args.repeat)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    data = torch.bernoulli(torch.full((10_000, 784), 0.13), generator=g)
    rows = []
    for name in args.models:
        for objective in OBJECTIVES:
            engine_step, hand_step = make_case(name, objective, data, hidden=args.hidden, batch_size=args.batch_size)
            t = interleaved({"engine": engine_step, "hand": hand_step}, rounds=rounds, repeat=repeat)
            rows.append({
                "model": f"{name.upper()} 784-{args.hidden} (batch {args.batch_size})",
                "objective": objective,
                "engine ms/step": 1e3 * t["engine"],
                "hand-written ms/step": 1e3 * t["hand"],
                "ratio": t["engine"] / t["hand"],
            })
    out = table(rows, ["model", "objective", "engine ms/step", "hand-written ms/step", "ratio"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} interleaved rounds of {repeat} steps, medians\n")
    print(out)
    return out


if __name__ == "__main__":
    main()
