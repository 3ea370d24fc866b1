"""The ``zoo`` command line (the only place that defines flags).

    zoo list
    zoo info MODEL
    zoo train MODEL --data NAME [--objective OBJ] [--steps N | --epochs N] [--out DIR] [-o key=value ...]
    zoo train path/to/file.py:Class --data path/to/data.npz      (your own model and data)
    zoo train --config RUN_DIR/config.json [flags that override it]
    zoo evaluate RUN_DIR
    zoo sample RUN_DIR [-n 64]
    zoo experiment NAME [--out DIR] [--set key=value ...] [--key value ...]   (= python -m experiments NAME)
    zoo compare RUN_DIR... [--out DIR] [--names A B ...]

Errors in the input (unknown names, bad options, bad or missing files, bad data, a setting
that cannot fit in memory, a full disk) print one line ``zoo: error: ...`` and exit with
status 2; a mistyped flag prints the subcommand's usage. An interrupted run exits with 130
(143 on SIGTERM) and resumes when the same command is run again.

Starting is cheap: torch, Pyro and ArviZ are imported only by the commands that need them,
so ``zoo --help``, ``zoo list`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import errno
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["main"]

#: the objectives of inference.objectives.OBJECTIVES (listed here so that --help needs no torch;
#: tests/experiments/test_cli.py checks the two agree)
OBJECTIVE_NAMES = ("elbo", "meanfield", "enum", "iwae", "renyi", "jit_elbo", "jit_meanfield", "jit_enum", "jit_iwae", "jit_renyi")
#: the built-in data sets of zoo.data.DATASETS (checked against it by the tests)
DATA_NAMES = ("digits", "digits_labels", "mnist", "fashion_mnist", "binarized_mnist")
#: the schedules of inference.loop.LR_SCHEDULES (checked against it by the tests)
LR_SCHEDULES = ("cosine", "constant", "staged")
GUIDE_EXAMPLES = "auto_normal, auto_delta, auto_mvn, auto_diagonal_normal, auto_lowrank_mvn"


#: ``ZOO_TINY=1``: smoke-test settings for every command (the README's test runs its commands so)
TINY_ENV = "ZOO_TINY"
TINY_STEPS = 20


def _tiny() -> bool:
    return os.environ.get(TINY_ENV, "").strip() not in ("", "0")


# ---------------------------------------------------------------------------
# parsing


class _Help(argparse.HelpFormatter):
    """Shows an option's default where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with defaults shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _value(text: str):
    """A command-line value: a Python/JSON literal if it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "null": None, "none": None}.get(text.lower(), text)


def _pairs(items, flag: str = "-o") -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def _parser(prog: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = _Parser(prog=prog or "zoo", description="A zoo of generative models in Pyro: train, evaluate, "
                "sample, compare and run experiments. `zoo COMMAND --help` describes a command.",
                epilog=f"{TINY_ENV}=1 runs every command with smoke-test settings ({TINY_STEPS} training steps unless "
                "--steps/--epochs is given; experiments with their TINY settings).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    subs = {}

    subs["list"] = sub.add_parser("list", help="list the registered models and experiments",
                                  description="List the registered models and experiments.")

    i = subs["info"] = sub.add_parser("info", help="a model's description, options, support and parameter count",
                                      description="Print a model's docstring, its constructor options with "
                                      "defaults, the data it models and its parameter count formula.")
    i.add_argument("model", help="a registered name (zoo list), path/to/file.py:Class or package.module:Class")

    t = subs["train"] = sub.add_parser(
        "train", help="train a model into a run folder (resumes if interrupted)",
        description="Train a model into a run folder, evaluate it on the test split and plot its loss "
        "and samples. Running the same command again resumes an interrupted run.",
    )
    t.add_argument("model", nargs="?", help="a registered name (zoo list), path/to/file.py:Class or "
                   "package.module:Class (a zoo.ZooModel subclass); optional with --config")
    t.add_argument("--config", metavar="FILE", help="a JSON or TOML file with the keys of a run's config.json "
                   "(e.g. RUN_DIR/config.json); flags given here override it")
    t.add_argument("--data", help="a data set (" + ", ".join(DATA_NAMES) + "; default digits) or a file "
                   "path/to/data.{npz,npy,pt,csv}: rows are data points (binary 0/1, integer categories or real "
                   "values); an .npz/.pt with train/valid/test entries keeps that split")
    t.add_argument("--data-dir", help="folder with the data files of mnist, fashion_mnist and binarized_mnist "
                   "(default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)")
    t.add_argument("--binarize", choices=["threshold", "dynamic"],
                   help="grey levels to 0/1 by a fixed threshold (default) or by Bernoulli draws (dynamic)")
    t.add_argument("--objective", help="training objective: " + ", ".join(OBJECTIVE_NAMES)
                   + " (default: the model's own)")
    t.add_argument("--guide", help=f"an AutoGuide on the model instead of its own guide, e.g. {GUIDE_EXAMPLES}")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="optimisation steps (default: the model's, else 20 epochs)")
    g.add_argument("--epochs", type=int, help="passes over the training data")
    t.add_argument("--batch-size", type=int, help="minibatch size (global under torchrun; default 128)")
    t.add_argument("--lr", type=float, help="Adam's initial learning rate (cosine-decayed to 1%%; default 1e-3 "
                   "or the model's)")
    t.add_argument("--optimizer", choices=("adam", "adagrad"), help="torch's Adam (default) or Adagrad")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="cosine decay to 1%% (default), constant, or staged (Burda et al. 2016's: lr*10^(-i/7) for 3^i parts)")
    t.add_argument("--num-particles", type=int, metavar="K", help="guide draws per step; K of iwae/renyi (default 1)")
    t.add_argument("--weight-decay", type=float, metavar="W", help="Adam's L2 penalty on every parameter (default 0)")
    t.add_argument("--fused", action="store_true", default=None,
                   help="torch's fused Adam kernel: several times faster on large models, equal within rounding")
    t.add_argument("--early-stopping", type=int, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation loss; keep the best parameters")
    t.add_argument("--seed", type=int, help="seed of parameters, minibatches and draws (default 0)")
    t.add_argument("--device", help="cpu (default), cuda or cuda:N")
    t.add_argument("--out", help="run folder (default runs/MODEL-DATA-seedS)")
    t.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a model constructor option as a Python literal, e.g. -o hidden=[500]; "
                   "`zoo info MODEL` lists them")
    t.add_argument("--logger", choices=["jsonl", "tensorboard"],
                   help="metrics.jsonl is always written; tensorboard also writes TensorBoard events (the same "
                   "scalars and the sample grid) to RUN_DIR/tensorboard (needs pip install tensorboard)")
    t.add_argument("--restart", action="store_true", help="start over instead of resuming")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--eval", choices=["none", "nll", "all"],
                   help="after training: NLL and sample metrics (all, default), NLL only, or none")

    e = subs["evaluate"] = sub.add_parser("evaluate", help="evaluate a run folder's model on a split",
                                          description="Print the metrics of a run folder's model on a split.")
    e.add_argument("run_dir", help="a run folder written by zoo train")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"], help="the data split")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    s = subs["sample"] = sub.add_parser("sample", help="draw a sample grid from a run folder's model",
                                        description="Draw samples from a run folder's model into a PNG.")
    s.add_argument("run_dir", help="a run folder written by zoo train")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="seed of the draws")
    s.add_argument("--out", help="PNG file (default: a new RUN_DIR/samples-N.png; the run's own samples.png "
                   "is never overwritten)")

    x = subs["experiment"] = sub.add_parser(
        "experiment", help="run an experiment (= python -m experiments NAME)",
        description="Run an experiment: it prints a progress bar per phase, then the table it wrote.",
    )
    x.add_argument("name", help="an experiment (zoo list)")
    x.add_argument("--out", help="output folder (default runs/NAME)")
    x.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE",
                   help="override config entries (Python literals), e.g. --set epochs=5")
    x.add_argument("--tiny", action="store_true", help=f"apply the experiment's TINY settings (runs in seconds; also "
                   f"with {TINY_ENV}=1)")

    c = subs["compare"] = sub.add_parser(
        "compare", help="compare run folders: one table, figures and an HTML/Markdown report",
        description="Compare run folders: a table of metrics and diagnostics, figures and report.html.",
    )
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by zoo train")
    c.add_argument("--out", help="output folder (default runs/compare)")
    c.add_argument("--names", nargs="+", help="one label per run folder (default: folder names)")
    return p, subs


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """'unrecognized arguments: ...' with the nearest flag suggested for a typo."""
    flags = [s for a in parser._actions for s in a.option_strings]
    message = "unrecognized arguments: " + " ".join(extra)
    for word in extra:
        if word.startswith("-"):
            near = difflib.get_close_matches(word.split("=")[0], flags, n=1)
            if near:
                return f"{message} (did you mean {near[0]}?)"
    return message


def main(argv=None, prog: str | None = None) -> int:
    parser, subs = _parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "experiment":  # the subcommand's usage, not the top-level one
        subs[args.command].error(_unrecognized(subs[args.command], extra))
    args.extra = extra  # an experiment's config keys as flags: --budget-minutes 5 = --set budget_minutes=5
    try:
        return _COMMANDS[args.command](args) or 0
    except KeyboardInterrupt as e:
        message = str(e).strip() or "interrupted"
        if "resume" not in message:
            message += "; run the same command again to resume"
        print(f"zoo: {message}", file=sys.stderr)
        signum = getattr(e, "signum", None)
        return 128 + int(signum) if signum else (143 if "SIGTERM" in message else 130)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError, FloatingPointError) as e:
        return _fail(e)
    except OSError as e:
        return _fail(_os_error(e, args))
    except (RuntimeError, MemoryError) as e:
        if not _is_out_of_memory(e):
            raise
        return _fail(_out_of_memory(e, args))


def _fail(e) -> int:
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"zoo: error: {message}", file=sys.stderr)
    return 2


def _os_error(e: OSError, args) -> str:
    where = e.filename or getattr(args, "out", None) or getattr(args, "run_dir", None) or "."
    folder = where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))
    if e.errno == errno.ENOSPC:
        return f"no space left on the device of {folder}: free some space or choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {where}: {e.strerror}; choose another --out"
    return f"{e.strerror or e}: {where}"


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or any(
        s in text for s in ("not enough memory", "out of memory", "can't allocate memory", "cannot allocate memory")
    )


def _out_of_memory(e: BaseException, args) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if args.command == "train":
        hint = (f"lower --num-particles (K = {args.num_particles}) or --batch-size"
                if args.num_particles else "lower --batch-size or the model's size (-o ...)")
    elif args.command == "sample":
        hint = f"lower -n (now {args.n})"
    else:
        hint = "use a smaller setting or a machine with more memory"
    return f"not enough memory ({first[:160]}): {hint}"


# ---------------------------------------------------------------------------
# models by name, file or module, listed without importing torch


def _model_catalogue() -> dict[str, str]:
    """name -> first docstring line of every built-in model, read from zoo/ without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("zoo")
    root = Path(next(iter(spec.submodule_search_locations)))
    tree = ast.parse((root / "registry.py").read_text())
    table = next(
        node.value for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and "_MODELS" in ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
    )
    out = {}
    for name, target in ast.literal_eval(table).items():
        module, _, cls = target.partition(":")
        doc = ""
        path = root.parent / (module.replace(".", "/") + ".py")
        if path.is_file():
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and node.name == cls:
                    doc = ast.get_docstring(node) or ""
        out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def _check_model_name(spec: str) -> None:
    """An unknown registered name fails here, before torch is imported."""
    if ":" in spec:
        return
    try:
        names = _model_catalogue()
    except Exception:  # an unusual install: let the registry answer
        return
    if spec not in names:
        near = difflib.get_close_matches(spec, list(names), n=1)
        raise ValueError(
            f"unknown model {spec!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; available models: {', '.join(sorted(names))}; or path/to/file.py:Class"
        )


# ---------------------------------------------------------------------------
# commands


def _list(args):
    import experiments

    try:
        models = _model_catalogue()
    except Exception:
        import zoo

        models = {n: ((zoo.get(n).__doc__ or "").strip().splitlines() or [""])[0] for n in zoo.available()}
    print("models:")
    for name, doc in sorted(models.items()):
        print(f"  {name:<16} {doc}")
    print("experiments:")
    for name in experiments.available():
        print(f"  {name:<20} {experiments.describe(name)}")
    print("`zoo info MODEL` describes a model; `zoo train path/to/file.py:Class` trains your own.")


def _info(args):
    _check_model_name(args.model)
    from experiments.sources import describe_model

    print(describe_model(args.model))


#: settings that must be whole numbers >= 1 (None: not given)
_POSITIVE_INTS = {"steps": "--steps", "epochs": "--epochs", "batch_size": "--batch-size",
                  "num_particles": "--num-particles", "early_stopping": "--early-stopping"}


def _check_settings(config: dict) -> None:
    """Refuse impossible settings up front, naming the flag."""
    for key, flag in _POSITIVE_INTS.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                config[key] = int(value)
                continue
            raise ValueError(f"{flag} ({key}) must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"{flag} ({key}) must be at least 1, got {value}")
    lr = config.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0)):
        raise ValueError(f"--lr must be a positive number, got {lr!r}")
    seed = config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"--seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(config.get("options", {}), dict):
        raise ValueError(f"options must be a mapping of model options, got {config['options']!r}")


def _check_device(device: str | None) -> None:
    if device in (None, "cpu"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {device}: MPS is not available on this machine; use cpu")
    else:
        raise ValueError(f"unsupported --device {device!r}; use cpu, cuda or cuda:N")


def _check_out(out: Path) -> None:
    """The run folder must be a folder we can create and write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out} is below {parent}, which is a file; choose another --out")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".zoo-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise ValueError(f"cannot write to --out {out}: {e.strerror}; choose another --out") from None


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            config = tomllib.loads(p.read_text())
        else:
            config = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"--config {path} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path} must hold an object of settings, got {type(config).__name__}")
    return config


def train_config(args) -> dict:
    """The run's configuration: ``--config`` file, then the flags given (which override it)."""
    config = {}
    if args.config:
        from experiments.train import CONFIG, DERIVED

        config = _read_config_file(args.config)
        for key in DERIVED:  # written by a run (config.json), recomputed on every run
            if key != "model_path":
                config.pop(key, None)
        unknown = set(config) - set(CONFIG) - {"model_path"}
        if unknown:
            raise ValueError(f"--config {args.config}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(CONFIG))}")
    flags = dict(
        model=args.model, data=args.data, data_dir=args.data_dir, binarize=args.binarize,
        objective=args.objective, guide=args.guide, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule, num_particles=args.num_particles, weight_decay=args.weight_decay,
        fused=args.fused, early_stopping=args.early_stopping, seed=args.seed, device=args.device, logger=args.logger,
        eval=args.eval,
    )
    if args.steps is not None or args.epochs is not None:  # one setting: a flag replaces both
        config.pop("steps", None)
        config.pop("epochs", None)
    if args.model:  # another model: the recorded module folder belongs to the old one
        config.pop("model_path", None)
    config.update({k: v for k, v in flags.items() if v is not None})
    if args.option:
        config["options"] = {**config.get("options", {}), **_pairs(args.option)}
    if args.no_progress:
        config["progress"] = False
    if not config.get("model"):
        raise ValueError("give a MODEL (zoo list shows them) or --config FILE")
    if _tiny() and config.get("steps") is None and config.get("epochs") is None:
        config["steps"] = TINY_STEPS
        print(f"zoo: {TINY_ENV}=1: training {TINY_STEPS} steps", file=sys.stderr)
    return config


def _default_out(config: dict) -> Path:
    model = str(config["model"]).rpartition(":")[2] if ":" in str(config["model"]) else config["model"]
    data = config.get("data") or "digits"
    data = Path(data).stem if any(data.endswith(s) for s in (".npz", ".npy", ".pt", ".csv")) else data
    return Path("runs") / f"{model}-{data}-seed{config.get('seed') or 0}"


def _train(args):
    if args.model:  # cheap checks first: a typo answers before torch is imported
        _check_model_name(args.model)
    _check_settings(vars(args))
    config = train_config(args)
    _check_settings(config)
    _check_model_name(str(config["model"]))
    _check_device(config.get("device"))
    out = Path(args.out) if args.out else _default_out(config)
    _check_out(out)
    from experiments.train import train_and_evaluate
    from inference.distributed import is_main_process

    metrics = train_and_evaluate(config, out, resume=not args.restart)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    _print_metrics(metrics)
    print(f"run folder: {out}")


def _evaluate(args):
    from experiments.train import evaluate_run

    metrics = evaluate_run(args.run_dir, args.split)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), "split": args.split, **metrics}, indent=2))
        return
    print(f"{args.run_dir} on the {args.split} split:")
    _print_values(metrics, prefix=f"  {args.split} ")


def _sample(args):
    if args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    from experiments.train import load_run, sample_figure

    model, config = load_run(args.run_dir)
    path = Path(args.out) if args.out else _next_free(Path(args.run_dir), "samples-{}.png")
    if args.out and path.exists() and path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a PNG file name")
    written = sample_figure(model, config, path, n=args.n, seed=args.seed)
    print(f"samples: {written}" if written else "this model has no sampler")


def _next_free(folder: Path, pattern: str) -> Path:
    k = 1
    while (folder / pattern.format(k)).exists():
        k += 1
    return folder / pattern.format(k)


def _experiment(args):
    import experiments

    module = experiments.get(args.name)
    given = {**_pairs(args.set, "--set"), **_flags(args.extra)}
    unknown = set(given) - set(module.CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys for {args.name}: {sorted(unknown)}; valid keys: {', '.join(sorted(module.CONFIG))}")
    tiny = args.tiny or _tiny()
    if tiny and not args.tiny:
        print(f"zoo: {TINY_ENV}=1: the experiment's TINY settings", file=sys.stderr)
    config = {**module.CONFIG, **(module.TINY if tiny else {}), **given}
    out = Path(args.out or f"runs/{args.name}")
    _check_out(out)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.md")}
    module.run(config, out)
    tables = sorted(
        (p for p in out.rglob("*.md") if before.get(p) != p.stat().st_mtime_ns),
        key=lambda p: (len(p.relative_to(out).parts), p.name),
    )
    for table in tables:
        print(f"\n{table.relative_to(out)}:\n")
        print(table.read_text().rstrip())
    print(f"\noutputs: {out}")


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
    from experiments.compare import compare_runs

    result = compare_runs(args.run_dirs, Path(args.out or "runs/compare"), names=args.names)
    print(result["table"].read_text(), end="")
    print(f"report: {result['report_html']} (and {result['report_md'].name}); figures: "
          + ", ".join(p.name for p in result["figures"].values()))


def _print_values(values: dict, prefix: str):
    for k, v in values.items():
        if isinstance(v, dict):
            continue
        print(f"{prefix}{k}: {v:.4f}" if isinstance(v, float) else f"{prefix}{k}: {v}")
    quality = values.get("sample_quality") or {}
    shown = [k for k in ("fd", "mmd2", "parzen_ll", "parzen_bernoulli_ll", "classes_covered") if k in quality]
    if shown:
        print("  samples: " + ", ".join(f"{k} {quality[k]:.4g}" for k in shown))


def _print_metrics(metrics: dict):
    test = metrics.get("test") or {}
    print(f"{metrics['model']} on {metrics['data']}: {metrics['num_parameters']} parameters, "
          f"{metrics['steps']} steps, {metrics['train_seconds']:.1f} s")
    _print_values({**test, "sample_quality": metrics.get("sample_quality")}, prefix="  test ")


_COMMANDS = {"list": _list, "info": _info, "train": _train, "evaluate": _evaluate, "sample": _sample,
             "experiment": _experiment, "compare": _compare}


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m experiments.cli train ...
    sys.exit(main())
