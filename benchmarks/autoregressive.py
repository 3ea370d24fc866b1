"""NADE and MADE: one ``inference.fit`` step against a hand-written PyTorch step; NADE's
O(nH) recurrence against its former cumulative-sum formulation and the FLOP floor.

Both sides hold the same weights (copied), take the same minibatch and the same Adam
update on the same objective, the exact negative log-likelihood of the minibatch scaled to
the data set, -(N/B) sum_n log p(x_n) (the ELBO of a fully observed model with the empty
guide):

* NADE 784-500 (tied weights, sigmoid hidden units): all 784 conditionals by
  :func:`zoo.nade.nade_logits` (the blocked recurrence, a custom autograd function), the
  same computation in the engine and in the hand-written loop;
* MADE 784-500-784 (one masked ReLU layer, one mask).

The engine's step is what ``fit`` runs per step (learning-rate schedule, minibatch
indexing, ``objective.differentiable_loss(model.model, model.guide, ...)``, Adam, loss
read-back), with the objective ``fit`` uses for these models by default (``jit_elbo``: the
Pyro objective traced once and replayed) and with plain Pyro (``elbo``). The baseline is
the loss written with ``torch.nn.functional``. Before timing, both losses are checked equal.
Data: synthetic binary images (timing does not depend on pixel values), batch 128.

:func:`nade_speedup` times one hand-written NADE step (784-500, batch 128) with
:func:`zoo.nade.nade_logits` against the same step with the former formulation
(:func:`zoo.nade.nade_logits_cumsum`: an (n, B, H) cumulative sum differentiated by autograd),
interleaved, on binarized MNIST when it is present (else synthetic images), and against the
FLOP floor: 6 multiply-adds per (pixel, image, hidden unit) (forward: a += W x, logit += V h;
backward: dV, dh = g V, dW, the running sum of da) at this machine's matmul peak measured in
the same run.

    python -m benchmarks.autoregressive [--quick] [--threads 2] [--models nade made] [--rounds 7 --repeat 5]
    python -m benchmarks.autoregressive --nade-speedup --threads 1
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import inference
import zoo
from benchmarks.common import interleaved, table
from inference.loop import batch_indices, lr_at
from zoo.nade import nade_logits, nade_logits_cumsum

OBJECTIVES = ("jit_elbo", "elbo")


def hand_nade_loss(W, c, V, b, batch, num_data, logits_fn=None):
    """NADE's negative log-likelihood in plain PyTorch (natural ordering), with
    :func:`zoo.nade.nade_logits` (or ``logits_fn``, e.g. the former cumulative sum)."""
    logits = (logits_fn or nade_logits)(batch, W, c, V, b)
    return (num_data / batch.shape[0]) * F.binary_cross_entropy_with_logits(logits, batch, reduction="sum")


def nade_floor_flops(n: int, batch: int, hidden: int) -> int:
    """The FLOP floor of one NADE training step: 6 multiply-adds per (pixel, image, hidden unit)."""
    return 2 * 6 * n * batch * hidden


def nade_speedup(*, hidden: int = 500, batch_size: int = 128, rounds: int = 3, repeat: int = 2,
                 data: torch.Tensor | None = None) -> dict:
    """One NADE step (loss, backward, Adam) with the recurrence vs the former cumulative sum
    on the same weights and batches, interleaved; and the step against the FLOP floor."""
    from benchmarks.suite import matmul_peak_gflops

    if data is None:
        try:
            data = zoo.load("binarized_mnist", "train").x[:2048]
            source = "binarized MNIST"
        except (zoo.DataError, OSError):
            g = torch.Generator().manual_seed(0)
            data = torch.bernoulli(torch.full((2048, 784), 0.13), generator=g)
            source = "synthetic Bernoulli(0.13) images"
    else:
        source = "given images"
    n = data.shape[1]
    torch.manual_seed(0)
    model = zoo.create("nade", data_dim=n, hidden_size=hidden)
    params = [model.W, model.c, model.V, model.b]
    batch = data[:batch_size]
    new = hand_nade_loss(*params, batch, len(data)).detach()
    old = hand_nade_loss(*params, batch, len(data), logits_fn=nade_logits_cumsum).detach()
    check = abs(float(new) - float(old)) / abs(float(old))
    assert check < 1e-5, (float(new), float(old))
    opt = torch.optim.Adam(params, lr=1e-3)
    state = {"step": 0}

    def step(fn):
        def run():
            i = state["step"] % (len(data) // batch_size)
            state["step"] += 1
            loss = hand_nade_loss(*params, data[i * batch_size : (i + 1) * batch_size], len(data), logits_fn=fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    t = interleaved({"recurrence": step(nade_logits), "cumulative sum": step(nade_logits_cumsum)},
                    rounds=rounds, repeat=repeat, warmup=1)
    peak = matmul_peak_gflops(torch.device("cpu"), n=1024)
    floor = nade_floor_flops(n, batch_size, hidden) / (peak * 1e9)
    return {
        "model": f"NADE {n}-{hidden} (batch {batch_size}, {source})",
        "recurrence ms/step": 1e3 * t["recurrence"],
        "cumulative sum ms/step": 1e3 * t["cumulative sum"],
        "speed-up": t["cumulative sum"] / t["recurrence"],
        "floor ms/step": 1e3 * floor,
        "x floor": t["recurrence"] / floor,
        "GFLOP floor": nade_floor_flops(n, batch_size, hidden) / 1e9,
        "matmul peak GFLOP/s": peak,
        "loss check (rel. diff)": check,
        "threads": torch.get_num_threads(),
    }


SPEEDUP_COLUMNS = ["model", "threads", "recurrence ms/step", "cumulative sum ms/step", "speed-up", "floor ms/step",
                   "x floor", "matmul peak GFLOP/s"]


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
    parser.add_argument("--nade-speedup", action="store_true",
                        help="only NADE's recurrence vs its former cumulative sum and the FLOP floor")
    args = parser.parse_args(argv)
    rounds, repeat = (3, 2) if args.quick else (args.rounds, args.repeat)
    torch.set_num_threads(args.threads)
    if args.nade_speedup:
        row = nade_speedup(hidden=args.hidden, batch_size=args.batch_size, rounds=rounds, repeat=repeat)
        out = table([row], SPEEDUP_COLUMNS)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} interleaved rounds of {repeat} steps, medians\n")
        print(out)
        return out
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
