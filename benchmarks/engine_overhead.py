"""Engine overhead on the small models: ``fit``'s step against a hand-written PyTorch step.

The fixed per-step cost of the engine shows most on small models, so this times the
64-dim digits models (batch 128) through the suite's harness (:func:`benchmarks.suite.step_case`:
exactly what ``inference.fit`` runs per step, on its default traced path and on plain
Pyro, against a hand-written loop on the same weights and minibatches, losses checked
equal first, interleaved rounds, medians). ``python -m benchmarks`` runs every model at
both sizes; this is the quick look.

    python -m benchmarks.engine_overhead [--quick] [--models bernoulli vae ...] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

import zoo
from benchmarks.suite import likelihood_models, matmul_peak_gflops, step_case, table


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--models", nargs="+", help="default: every likelihood model")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rounds, round_seconds, case_seconds = (3, 0.1, 2.0) if args.quick else (11, 0.5, 20.0)
    peak = matmul_peak_gflops(device, n=1024)
    data = zoo.load("digits", "train").x
    rows = []
    for name in args.models or likelihood_models():
        row = step_case(name, data, {}, rounds=rounds, round_seconds=round_seconds,
                        case_seconds=case_seconds, device=device, peak_gflops=peak)
        rows.append({"model": f"{name} (64-dim digits, batch 128)", **row})
    out = table([r for r in rows if "skipped" not in r],
                ["model", "objective", "fast path", "engine ms/step", "plain Pyro ms/step",
                 "hand-written ms/step", "ratio", "plain ratio"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(out)
    return out


if __name__ == "__main__":
    main()
