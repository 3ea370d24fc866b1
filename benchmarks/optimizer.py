"""Adam's implementations in the engine: ``fit(fused=True)`` against the default, per step.

    python -m benchmarks.optimizer [--threads 1] [--rounds 5] [--steps 10]

For each model (MADE 784-8000-784, the leaderboard's; MADE 784-500-784; NADE 784-500), the
engine's whole step (``inference.svi.build_trainer``, what ``fit`` runs) with torch's fused
Adam kernel against the default multi-tensor Adam, the two timed in interleaved rounds on the
same weights and minibatches, and against torch's one-tensor-at-a-time Adam (torch's CPU
default, which the engine used before) in a hand-built optimiser. Prints seconds per step and
the ratios.
"""
from __future__ import annotations

import argparse

import torch

import zoo
from benchmarks.common import interleaved, table
from benchmarks.suite import rerun
from inference.svi import build_trainer

CASES = [
    ("made 784-8000-784", "made", dict(hidden_sizes=(8000,), ordering="random", direct=True)),
    ("made 784-500-784", "made", dict(hidden_sizes=(500,))),
    ("nade 784-500", "nade", dict(hidden_size=500)),
]


def case(label, name, options, *, rounds, steps):
    x = (torch.rand(1000, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    trainers = {}
    for fused in (False, True):
        model = zoo.create(name, data_dim=784, **options)
        trainers[fused], _ = build_trainer(model, x, steps=steps, batch_size=100, fused=fused, progress=False)
    single = trainers[False].step_obj  # torch's one-tensor Adam: the same step object, another optimiser
    times = interleaved({
        "default": lambda: rerun(trainers[False], steps),
        "fused": lambda: rerun(trainers[True], steps),
    }, rounds=rounds, repeat=1, warmup=1)
    params = single.params
    one = torch.optim.Adam(params, lr=1e-3, foreach=False)
    multi = torch.optim.Adam(params, lr=1e-3, foreach=True)
    for p in params:
        p.grad = torch.zeros_like(p)
    adam = interleaved({"one-tensor": one.step, "multi-tensor": multi.step}, rounds=rounds, repeat=steps, warmup=2)
    return {
        "model": label, "parameters": sum(p.numel() for p in params),
        "step, default (ms)": 1e3 * times["default"] / steps, "step, fused (ms)": 1e3 * times["fused"] / steps,
        "fused speed-up": times["default"] / times["fused"],
        "Adam alone, one-tensor / multi-tensor": adam["one-tensor"] / adam["multi-tensor"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [case(*c, rounds=args.rounds, steps=args.steps) for c in CASES]
    print(table(rows, list(rows[0])))
    return rows


if __name__ == "__main__":
    main()
