"""The GAN baseline: trained by the adversarial game, scored on samples beside the likelihood models.

For each data set (``digits``; ``mnist`` too when its files are present) the GAN
(``zoo.gan``) is trained by :func:`inference.fit_adversarial` with each generator loss in
``objectives`` (non-saturating and minimax), and the likelihood models in ``compare`` that
are registered are trained by :func:`inference.fit` with their ``fit_defaults``. Every model
is then scored alike by :func:`inference.sample_quality` on the test split (Frechet
distance in a classifier's features, kernel MMD, Parzen windows, mode coverage), and the
likelihood models also by their test NLL. Two reference rows bracket the table: the
training split itself used as "samples" (what a model that memorised the data would score)
and Bernoulli(1/2) noise.

Writes to ``workdir``:

====================================  ======================================================
``metrics_<data>.md``                 the table (one row per model; arrows say which way is
                                      better) and how it was measured
``gan_<objective>_<data>_over_training.png``  fixed noise z decoded by G at ``snapshots``
                                      points of training (one row per snapshot)
``gan_<objective>_<data>_losses.png`` the discriminator's and the generator's loss per step
``samples_<label>_<data>.png``        a sample grid of every model
``results.json``                      every number, and the settings
====================================  ======================================================
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
from experiments.optimal_discriminator import torch_threads
from inference.metrics import load_classifier, score_samples

__all__ = ["CONFIG", "TINY", "metrics_table", "run", "train_gan", "train_likelihood_model"]

CONFIG = dict(
    datasets=["digits", "mnist"],  # a data set whose files are absent gets a note, not an error
    data_dir=None,
    binarize="threshold",
    objectives=["non_saturating", "minimax"],
    gan_options={},  # zoo.create("gan", ...) options
    gan_fit={},  # fit_adversarial settings over the GAN's fit_defaults
    gan_steps_by_data={"mnist": 10_000},
    compare=["vae", "nade", "made", "fvsbn", "mixture", "independent"],  # where registered
    compare_fit={},  # name -> inference.fit settings
    compare_epochs_by_data={"mnist": 5},  # likelihood models' epochs on large data sets
    compare_steps=None,  # if set, every likelihood model trains this many steps
    snapshots=8,
    num_images=16,
    parzen_samples=10_000,
    seed=0,
    progress=False,
    threads=1,  # torch threads while it runs (None: leave as is); small MLPs are fastest on one
)

TINY = dict(
    datasets=["digits"],
    objectives=["non_saturating"],
    gan_options={"hidden": [16], "latent_dim": 4},
    gan_fit={"steps": 20},
    compare=["independent"],
    compare_steps=3,
    snapshots=2,
    num_images=4,
    parzen_samples=300,
)

#: table columns: key, title (arrow: which way is better)
COLUMNS = [
    ("label", "model"),
    ("num_parameters", "parameters"),
    ("nll", "test NLL (nats) ↓"),
    ("fd", "FD ↓"),
    ("mmd2", "MMD² ↓"),
    ("parzen_ll", "Parzen LL, Gaussian ↑"),
    ("parzen_bernoulli_ll", "Parzen LL, Bernoulli (nats) ↑"),
    ("label_kl", "label KL ↓"),
    ("classes_covered", "classes covered ↑"),
    ("classifier_score", "classifier score ↑"),
    ("train_seconds", "train (s)"),
]


def _load(data: str, split: str, config: dict) -> zoo.Dataset:
    return zoo.load(data, split, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])


def train_gan(train, objective: str, config: dict, data: str):
    """Train one GAN; returns (model, FitResult, snapshots (steps, images))."""
    pyro.set_rng_seed(config["seed"])
    model = zoo.create("gan", data_dim=train.dim, **config["gan_options"])
    fit = dict(config["gan_fit"])
    if data in config["gan_steps_by_data"] and "steps" not in fit and "epochs" not in fit:
        fit["steps"] = config["gan_steps_by_data"][data]
    total = fit.get("steps") or inference.adversarial.resolve_settings(model, **fit).get("steps")
    if total is None:  # epochs given
        total = fit["epochs"] * max(len(train) // int(fit.get("batch_size", model.fit_defaults.get("batch_size", 64))), 1)
    # snapshots at 0, ~total/(k-1), ..., total; fixed noise from its own generator, so taking
    # them draws nothing from the training's random streams
    marks = sorted({round(i * total / max(config["snapshots"] - 1, 1)) for i in range(config["snapshots"])})
    z = torch.randn(config["num_images"], model.latent_dim, generator=torch.Generator().manual_seed(config["seed"] + 7))
    snaps = []

    def snapshot(step):
        if step in marks:
            with torch.no_grad():
                snaps.append((step, model.generate(z, hard=True).detach().cpu()))

    snapshot(0)
    result = inference.fit_adversarial(
        model, train, objective=objective, seed=config["seed"], progress=config["progress"], on_step=snapshot, **fit
    )
    return model, result, snaps


def train_likelihood_model(name: str, train, config: dict, data: str):
    """Train a registered likelihood model with its fit_defaults (and the config's overrides)."""
    pyro.set_rng_seed(config["seed"])
    model = zoo.create(name, data_dim=train.dim)
    fit = dict(config["compare_fit"].get(name, {}))
    if config["compare_steps"] is not None:
        fit.pop("epochs", None)
        fit["steps"] = config["compare_steps"]
    elif data in config["compare_epochs_by_data"] and "steps" not in fit:
        fit["epochs"] = config["compare_epochs_by_data"][data]
    result = inference.fit(model, train, seed=config["seed"], progress=config["progress"], **fit)
    return model, result


def metrics_table(rows: list[dict]) -> str:
    """Markdown table of the rows (``COLUMNS``; missing values blank)."""
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}"


def _quality(samples, test, valid, classifier, n: int) -> dict:
    q = score_samples(samples[:n], test, valid, classifier=classifier, parzen_samples=samples)
    return {k: v for k, v in q.items() if k != "label_frequencies"} | {"label_frequencies": q.get("label_frequencies")}


def run_dataset(data: str, config: dict, workdir: Path) -> dict:
    try:
        train, valid, test = (_load(data, s, config) for s in ("train", "valid", "test"))
    except (FileNotFoundError, zoo.DataError) as e:
        return {"note": f"skipped: {e}"}
    classifier, info = load_classifier(data, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])
    n = len(test)
    rows = []
    g = torch.Generator().manual_seed(config["seed"] + 11)
    noise = torch.bernoulli(torch.full((max(n, config["parzen_samples"]), train.dim), 0.5), generator=g)
    reference = train.x[: config["parzen_samples"]]  # as many "samples" as the models get (at most)
    rows.append({"label": "reference: training split as samples", **_quality(reference, test, valid, classifier, n)})
    rows.append({"label": "reference: Bernoulli(1/2) noise", **_quality(noise, test, valid, classifier, n)})
    images = {}
    for objective in progress(config["objectives"], f"gan_baseline {data}: GAN fits", unit="objective"):
        start = time.perf_counter()
        model, result, snaps = train_gan(train, objective, config, data)
        seconds = time.perf_counter() - start
        label = f"gan ({objective.replace('_', '-')})"
        pyro.set_rng_seed(config["seed"] + 1)
        samples = model.sample(max(n, config["parzen_samples"]))
        rows.append({"label": label, "num_parameters": model.num_parameters(), "train_seconds": round(seconds, 1),
                     "steps": result.steps, "final_loss_d": result.history["loss_d"][-1],
                     "final_loss_g": result.history["loss_g"][-1], **_quality(samples, test, valid, classifier, n)})
        tag = f"gan_{objective}_{data}"
        if train.image_shape:
            steps = [s for s, _ in snaps]
            plots.image_grid(torch.cat([im for _, im in snaps]), train.image_shape, workdir / f"{tag}_over_training.png",
                             ncol=config["num_images"], title=f"{label}: fixed z at steps {steps}")
        plots.loss_curve(result.history, workdir / f"{tag}_losses.png", title=f"{label} on {data}: both players")
        images[label] = samples[: config["num_images"] * 4]
    for name in progress(config["compare"], f"gan_baseline {data}: likelihood models", unit="model"):
        if name not in zoo.available():
            rows.append({"label": name, "note": "not registered"})
            continue
        start = time.perf_counter()
        model, result = train_likelihood_model(name, train, config, data)
        seconds = time.perf_counter() - start
        pyro.set_rng_seed(config["seed"] + 1)
        nll = inference.evaluate(model, test)["nll"]
        pyro.set_rng_seed(config["seed"] + 1)
        with torch.no_grad():
            samples = model.sample(max(n, config["parzen_samples"])).cpu().float()
        rows.append({"label": name, "num_parameters": model.num_parameters(), "train_seconds": round(seconds, 1),
                     "steps": result.steps, "nll": nll, **_quality(samples, test, valid, classifier, n)})
        images[name] = samples[: config["num_images"] * 4]
    if train.image_shape:
        for label, im in images.items():
            safe = label.replace(" ", "_").replace("(", "").replace(")", "")
            plots.image_grid(im, train.image_shape, workdir / f"samples_{safe}_{data}.png", title=f"{label} samples")
    header = (
        f"# Sample quality on {data} ({len(train)} train / {len(valid)} valid / {len(test)} test, {train.dim} pixels)\n\n"
        f"Every model's samples against the test split: FD, MMD² and the label metrics from the first {n} samples, "
        f"the Parzen windows from {config['parzen_samples']} samples (the training-split row: its first "
        f"{min(len(train), config['parzen_samples'])} points), "
        f"bandwidths chosen on the validation split. FD in the features of an MLP classifier {info['hidden']} "
        f"(test accuracy {info['test_accuracy']:.3f}); MMD² unbiased, Gaussian kernel, median-heuristic bandwidth of "
        "the test set; Parzen LL (Gaussian) is Goodfellow et al.'s estimator, a density on R^D, not comparable with "
        "NLLs and poor in high dimension (Theis et al. 2016); the Bernoulli-kernel Parzen LL is a pmf on {0,1}^D "
        "in nats, on the scale of -NLL. Label KL = KL(predicted labels of samples || predicted labels of test data); "
        "classes covered: predicted for at least 1/4 of their test frequency. The GAN has no NLL (no density).\n\n"
    )
    (workdir / f"metrics_{data}.md").write_text(header + metrics_table(rows))
    return {"classifier": info, "rows": rows}


def run(config: dict, workdir) -> dict:
    with torch_threads(config.get("threads")):
        return _run(config, workdir)


def _run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"config": config, "datasets": {}}
    for data in config["datasets"]:
        results["datasets"][data] = run_dataset(data, config, workdir)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=_json) + "\n")
    return results


def _json(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)
