"""The ``zoo`` command line (the only place that defines flags).

    zoo list
    zoo train MODEL --data NAME [--objective OBJ] [--steps N | --epochs N] [--out DIR] [-o key=value ...]
    zoo evaluate RUN_DIR
    zoo sample RUN_DIR [-n 64]
    zoo experiment NAME [--out DIR] [--set key=value ...] [--key value ...]   (= python -m experiments NAME)
    zoo compare RUN_DIR... [--out DIR] [--names A B ...]

Errors in the input (unknown names, bad options, bad or missing files, bad data) print
one line ``zoo: error: ...`` and exit with status 2; an interrupted run exits with 130
and resumes when the same command is run again.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import inference
import zoo

__all__ = ["main"]


def _value(text: str):
    """A command-line value: a Python/JSON literal if it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "null": None, "none": None}.get(text.lower(), text)


def _pairs(items) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or "zoo", description="A zoo of generative models in Pyro.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the registered models and experiments")

    t = sub.add_parser("train", help="train a model into a run folder (resumes if interrupted)")
    t.add_argument("model")
    t.add_argument("--data", default="digits", help="digits (default), digits_labels, mnist, fashion_mnist, binarized_mnist")
    t.add_argument("--data-dir", help="folder with the data files (default: $ZOO_DATA_DIR)")
    t.add_argument("--binarize", default="threshold", choices=["threshold", "dynamic"])
    t.add_argument("--objective", help=", ".join(inference.OBJECTIVES))
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--num-particles", type=int)
    t.add_argument("--early-stopping", type=int, metavar="EPOCHS")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--out", help="run folder (default runs/MODEL-DATA-seedS)")
    t.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="model option, e.g. -o hidden=[500]")
    t.add_argument("--restart", action="store_true", help="start over instead of resuming")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--eval", default="all", choices=["none", "nll", "all"],
                   help="after training: NLL and sample metrics (all, default), NLL only, or none")

    e = sub.add_parser("evaluate", help="evaluate a run folder's model on the test split")
    e.add_argument("run_dir")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])

    s = sub.add_parser("sample", help="draw samples from a run folder's model")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG file (default RUN_DIR/samples.png)")

    x = sub.add_parser("experiment", help="run an experiment (python -m experiments NAME)")
    x.add_argument("name")
    x.add_argument("--out", help="output folder (default runs/NAME)")
    x.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="override config entries")
    x.add_argument("--tiny", action="store_true", help="apply the experiment's TINY settings")

    c = sub.add_parser("compare", help="compare run folders: one table, figures and an HTML/Markdown report")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", help="output folder (default runs/compare)")
    c.add_argument("--names", nargs="+", help="one label per run folder (default: folder names)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "experiment":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # an experiment's config keys as flags: --budget-minutes 5 = --set budget_minutes=5
    try:
        return _COMMANDS[args.command](args) or 0
    except KeyboardInterrupt as e:
        print(f"zoo: {e or 'interrupted'}; run the same command again to resume", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))  # 130 for Ctrl-C, 143 for SIGTERM
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError, FloatingPointError) as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2


def _list(args):
    import experiments

    print("models:")
    for name in zoo.available():
        doc = (zoo.get(name).__doc__ or "").strip().splitlines()
        print(f"  {name:<16} {doc[0] if doc else ''}")
    print("experiments:")
    for name in experiments.available():
        doc = (experiments.get(name).__doc__ or "").strip().splitlines()
        print(f"  {name:<20} {doc[0] if doc else ''}")


def _train(args):
    from experiments.train import train_and_evaluate

    config = dict(
        model=args.model, options=_pairs(args.option), data=args.data, data_dir=args.data_dir,
        binarize=args.binarize, objective=args.objective, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, num_particles=args.num_particles,
        early_stopping=args.early_stopping, seed=args.seed, device=args.device,
        progress=not args.no_progress, eval=args.eval,
    )
    out = Path(args.out or f"runs/{args.model}-{args.data}-seed{args.seed}")
    metrics = train_and_evaluate(config, out, resume=not args.restart)
    _print_metrics(metrics)
    print(f"run folder: {out}")


def _evaluate(args):
    from experiments.train import _load, load_run

    model, config = load_run(args.run_dir)
    data = _load(config, args.split)
    metrics = inference.evaluate(model, data)
    metrics["sample_quality"] = inference.sample_quality(
        model, config["data"], root=config.get("data_dir"), binarize=config["binarize"],
        seed=config["seed"], split=args.split,
    )
    print(json.dumps({"run": str(args.run_dir), "split": args.split, **metrics}, indent=2))


def _sample(args):
    from experiments.train import load_run, sample_figure

    model, config = load_run(args.run_dir)
    path = Path(args.out or Path(args.run_dir) / "samples.png")
    written = sample_figure(model, config, path, n=args.n, seed=args.seed)
    print(f"samples: {written}" if written else "this model has no sampler")


def _experiment(args):
    import experiments

    module = experiments.get(args.name)
    config = {**module.CONFIG, **(module.TINY if args.tiny else {}), **_pairs(args.set), **_flags(args.extra)}
    unknown = set(config) - set(module.CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys for {args.name}: {sorted(unknown)}; known: {sorted(module.CONFIG)}")
    out = Path(args.out or f"runs/{args.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    results = module.run(config, out)
    print(json.dumps(results, indent=2, default=str)[:4000])
    print(f"outputs: {out}")


def _flags(items) -> dict:
    """``--key-name VALUE`` pairs (or ``--key-name=VALUE``) as config entries ``{"key_name": value}``."""
    out, items = {}, list(items or [])
    while items:
        flag = items.pop(0)
        name, sep, value = flag.partition("=")
        if not name.startswith("--") or len(name) < 3:
            raise ValueError(f"expected --key value, got {flag!r}")
        if not sep:
            if not items:
                raise ValueError(f"{flag} needs a value")
            value = items.pop(0)
        out[name[2:].replace("-", "_")] = _value(value)
    return out


def _compare(args):
    result = inference.compare_runs(args.run_dirs, Path(args.out or "runs/compare"), names=args.names)
    print(result["table"].read_text(), end="")
    print(f"report: {result['report_html']} (and {result['report_md'].name}); figures: "
          + ", ".join(p.name for p in result["figures"].values()))


def _print_metrics(metrics: dict):
    test = metrics.get("test") or {}
    print(f"{metrics['model']} on {metrics['data']}: {metrics['num_parameters']} parameters, "
          f"{metrics['steps']} steps, {metrics['train_seconds']:.1f} s")
    for k, v in test.items():
        print(f"  test {k}: {v:.4f}" if isinstance(v, float) else f"  test {k}: {v}")
    quality = metrics.get("sample_quality") or {}
    if "fd" in quality or "mmd2" in quality:
        print("  samples: " + ", ".join(
            f"{k} {quality[k]:.4g}" for k in ("fd", "mmd2", "parzen_ll", "parzen_bernoulli_ll", "classes_covered") if k in quality
        ))


_COMMANDS = {"list": _list, "train": _train, "evaluate": _evaluate, "sample": _sample, "experiment": _experiment, "compare": _compare}


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m experiments.cli train ...
    sys.exit(main())
