"""The likelihood ladder: every tractable-likelihood rung trained the same way, scored the same way.

Each model in ``CONFIG["models"]`` is built for the data set, trained by the one engine
(:func:`inference.fit`, the model's ``fit_defaults`` unless the config overrides them) on
the training split and scored by :func:`inference.evaluate` on the test split: the exact
negative log-likelihood in nats per image and bits per dimension (an importance-sampled
estimate for latent-variable models such as the VAE, whose ``log_prob`` says so). Models
that cannot run (not registered yet, or too large, like the full joint over 64 pixels)
get a row that says why.

Writes to ``workdir``:

=========================  ==================================================================
``leaderboard.md``         model, parameters, test NLL (nats/image), bits/dim, training time,
                           steps; published figures beside ours on binarized MNIST
``leaderboard.png``        test NLL against the number of parameters (log scale)
``samples_<label>.png``    a grid of samples per model
``loss_<label>.png``       training curves
``results.json``           every number above, and the settings
=========================  ==================================================================

Adding a rung: append its registered name (or ``{"name", "label", "options", "fit"}``) to
``models``; per-label constructor options go in ``options`` and fit settings in ``fit``.
More columns: :func:`leaderboard` takes any per-model metric dicts.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pyro
import torch

import inference
import zoo
from experiments import plots, progress

__all__ = ["CONFIG", "PUBLISHED", "TINY", "leaderboard", "model_entries", "run", "train_and_score"]

CONFIG = dict(
    data="digits",
    data_dir=None,
    binarize="threshold",
    # rungs, bottom to top; a string is a registered name, a dict adds label/options/fit
    models=[
        "independent",
        "markov",
        {"name": "markov", "label": "markov-3", "options": {"order": 3}},
        "fvsbn",
        "nade",
        "made",
        {"name": "made", "label": "made-8-orderings", "options": {"num_masks": 8, "order_agnostic": True}, "fit": {"epochs": 400}},
        "mixture",
        "vae",
        "gan",  # no likelihood: trained by fit_adversarial, scored on the sample columns only
        "full_joint",
    ],
    options={},  # label -> constructor options (merged over the entry's)
    fit={},  # label -> inference.fit settings (merged over the entry's)
    eval_options={"vae": {"num_samples": 1000}},  # label -> log_prob options (e.g. K of an IS estimate)
    epochs=None,  # if set, every model trains this many epochs (e.g. for binarized MNIST)
    steps=None,  # if set, every model trains this many steps
    batch_size=None,  # if set, every model's batch size
    num_samples=64,  # images per sample grid
    seed=0,
    device="cpu",
    progress=False,
    sample_metrics=True,  # FD, MMD, Parzen, classes covered of every model (inference.sample_quality)
    parzen_samples=10_000,
)

TINY = dict(
    steps=3,
    num_samples=4,
    options={"nade": {"hidden_size": 8}, "made": {"hidden_sizes": [8]}, "made-8-orderings": {"hidden_sizes": [8]}, "mixture": {"num_components": 3}, "gan": {"hidden": [8], "latent_dim": 2}},
    eval_options={"vae": {"num_samples": 4}},
    parzen_samples=200,
)

#: Published test NLLs (nats) on binarized MNIST, for the leaderboard's reference column.
PUBLISHED = {
    "fixed": {  # Salakhutdinov & Murray (2008) binarization, Larochelle & Murray 2011 / Germain et al. 2015
        "mixture": ("137.64 (MoB, 500 comp.; Larochelle & Murray 2011)",),
        "fvsbn": ("97.45 (Larochelle & Murray 2011)",),
        "nade": ("88.86 (H=500; Larochelle & Murray 2011)",),
        "made": ("88.40 (1 hidden layer, 1 mask; Germain et al. 2015, Table 6)",),
        "made-8-orderings": ("88.04 (1 hidden layer, 32 masks; Germain et al. 2015, Table 6)",),
    },
    "dynamic": {  # pytorch-generative README, dynamically binarized MNIST
        "fvsbn": ("96.58 (pytorch-generative)",),
        "nade": ("85.65 (pytorch-generative)",),
        "made": ("84.87 (pytorch-generative)",),
    },
}

#: Columns of the leaderboard, in order; any other metric keys follow them.
COLUMNS = [
    ("label", "model"),
    ("num_parameters", "parameters"),
    ("nll", "test NLL (nats/image)"),
    ("bits_per_dim", "bits/dim"),
    ("train_seconds", "train time (s)"),
    ("steps", "steps"),
    ("published", "published NLL"),
    ("note", "note"),
]
#: sample-quality columns (inference.metrics: lower fd/mmd2, higher parzen/classes is better)
SAMPLE_COLUMNS = ("fd", "mmd2", "parzen_ll", "parzen_bernoulli_ll", "classes_covered")
HIDDEN = {"name", "options", "fit", "eval_options", "num_examples", "nll_note", "train_nll", "final_loss"}


def model_entries(config: dict) -> list[dict]:
    """The config's models as ``{"label", "name", "options", "fit", "eval_options"}`` dicts."""
    entries = []
    for item in config["models"]:
        entry = {"name": item} if isinstance(item, str) else dict(item)
        if "name" not in entry:
            raise ValueError(f"model entry {item!r} has no 'name'")
        label = entry.setdefault("label", entry["name"])
        entry["options"] = {**entry.get("options", {}), **config["options"].get(label, {})}
        entry["fit"] = {**entry.get("fit", {}), **config["fit"].get(label, {})}
        entry["eval_options"] = dict(config["eval_options"].get(label, {}))
        for key in ("epochs", "steps", "batch_size"):
            if config.get(key) is not None:
                if key in ("epochs", "steps"):
                    entry["fit"].pop("epochs", None)
                    entry["fit"].pop("steps", None)
                entry["fit"][key] = config[key]
        entries.append(entry)
    labels = [e["label"] for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}")
    return entries


def train_and_score(entry: dict, train, test, config: dict, workdir: Path) -> dict:
    """Build, train and evaluate one rung; a row of the leaderboard (with a note if skipped)."""
    label, name = entry["label"], entry["name"]
    row = {"label": label, "name": name, "options": entry["options"]}
    if name not in zoo.available():
        return {**row, "note": f"not run: {name!r} is not registered"}
    cls = zoo.get(name)
    if cls.support != train.support:
        return {**row, "note": f"not run: {name} models {cls.support} data, {config['data']} is {train.support}"}
    pyro.set_rng_seed(config["seed"])
    try:
        model = zoo.create(name, data_dim=train.dim, **entry["options"])
    except ValueError as e:  # e.g. the full joint over 64 pixels
        return {**row, "note": f"not run: {e}"}
    row["num_parameters"] = model.num_parameters()
    fit = inference.fit_adversarial if issubclass(cls, inference.Adversarial) else inference.fit
    result = fit(model, train, seed=config["seed"], device=config["device"], progress=config["progress"], **entry["fit"])
    row.update(train_seconds=round(result.seconds, 2), steps=result.steps, final_loss=result.losses[-1])
    pyro.set_rng_seed(config["seed"] + 1)
    metrics = inference.evaluate(model, test, **entry["eval_options"])
    row.update({k: v for k, v in metrics.items() if k not in row})
    if metrics.get("nll_note"):
        row["note"] = metrics["nll_note"]
    if config.get("sample_metrics", True):
        quality = inference.sample_quality(
            model, config["data"], root=config["data_dir"], binarize=config["binarize"], seed=config["seed"],
            parzen_samples=config.get("parzen_samples", 10_000),
        )
        row.update({k: quality[k] for k in SAMPLE_COLUMNS if k in quality})
    plots.loss_curve(result.history, workdir / f"loss_{label}.png", title=f"{label} on {config['data']}")
    if train.image_shape is not None:
        pyro.set_rng_seed(config["seed"] + 2)
        samples = model.sample(int(config["num_samples"])).cpu()
        plots.image_grid(samples, train.image_shape, workdir / f"samples_{label}.png", title=f"{label}: samples")
    return row


def leaderboard(metrics: dict[str, dict], columns=None) -> str:
    """A Markdown table with one row per model (``{label: {metric: value}}``), best NLL first.

    Columns: :data:`COLUMNS` that any row has, then every other metric key in first-seen
    order (so callers may add their own metrics, e.g. sample-quality scores).
    """
    rows = list(metrics.values())
    if columns is None:
        present = {k for r in rows for k in r}
        columns = [(k, title) for k, title in COLUMNS if k in present]
        known = {k for k, _ in COLUMNS} | HIDDEN
        extra = []
        for r in rows:
            extra += [k for k in r if k not in known and k not in extra]
        columns[-1:-1] = [(k, k) for k in extra]  # before the note
    rows.sort(key=lambda r: (r.get("nll") is None, r.get("nll") or 0.0))
    lines = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def nll_plot(metrics: dict[str, dict], path, title: str) -> Path:
    """Test NLL against the number of parameters (log x), one labelled point per model."""
    scored = [r for r in metrics.values() if r.get("nll") is not None and r.get("num_parameters")]
    fig, ax = plots.plt.subplots(figsize=(7, 4.5))
    for r in scored:
        ax.scatter(r["num_parameters"], r["nll"], s=30)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test NLL (nats per image)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
    fig.tight_layout()
    plots.label_points(ax, [r["num_parameters"] for r in scored], [r["nll"] for r in scored], [r["label"] for r in scored])
    return plots._save(fig, path)


def run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = lambda split: zoo.load(config["data"], split, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])  # noqa: E731
    train, test = load("train"), load("test")
    published = PUBLISHED.get(_binarization(config), {})
    metrics = {}
    started = time.perf_counter()
    entries = model_entries(config)
    bar = progress(entries, "likelihood_ladder: fit and score", unit="model")
    for entry in bar:
        bar.set_postfix_str(entry["label"])
        row = train_and_score(entry, train, test, config, workdir)
        if entry["label"] in published:
            row["published"] = published[entry["label"]][0]
        metrics[entry["label"]] = row
    total = time.perf_counter() - started

    title = f"{config['data']} ({len(train)} train / {len(test)} test, {train.dim} pixels)"
    table = leaderboard(metrics)
    header = (
        f"# Likelihood ladder on {title}\n\n"
        f"Binarization: {config['binarize']}. Device: {config['device']}, torch threads: {torch.get_num_threads()}. "
        f"Total time {total:.0f} s. NLL is exact for every fully observed model and the mixture; "
        "for latent-variable models with an importance-sampled log_prob it is an estimate (upper bound in expectation).\n\n"
    )
    (workdir / "leaderboard.md").write_text(header + table)
    nll_plot(metrics, workdir / "leaderboard.png", f"likelihood ladder: {config['data']}")
    results = {"config": config, "total_seconds": round(total, 1), "models": metrics}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    return results


def _binarization(config) -> str | None:
    """"fixed" (binarized_mnist), "dynamic" (mnist binarized by sampling) or None."""
    if config["data"] == "binarized_mnist":
        return "fixed"
    if config["data"] == "mnist" and config["binarize"] == "dynamic":
        return "dynamic"
    return None


def _json(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)
