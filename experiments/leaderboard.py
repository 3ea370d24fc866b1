"""The binarized-MNIST leaderboard: each model trained on its paper's recipe, scored by its paper's estimator.

    python -m experiments leaderboard --data binarized_mnist            # fixed (Larochelle & Murray) binarization
    python -m experiments leaderboard --data mnist --binarize dynamic   # a fresh draw per epoch, test fixed (seed 0)
    python -m experiments leaderboard --data binarized_mnist --budget-minutes 5 --models "['fvsbn','made']"

Every row is one run folder ``workdir/<label>/`` written by :func:`experiments.train.train_and_evaluate`
with the row's full recipe (architecture, optimiser and its settings, epochs, early stopping on the
validation split), so an interrupted leaderboard resumes each model where it stopped, and a GPU session
(``--device cuda``) finishes what a CPU session started. ``epochs`` (a total, e.g. ``--epochs 3``:
train up to epoch 3 of the recipe's schedule) and ``budget_minutes`` (training time per model in
this session) stop a run early at a checkpoint; its row is then marked *partial* with the epochs run
against the recipe's. The learning-rate schedule is always the recipe's, so a capped run continued
later ends where an uninterrupted one would.

Each finished or capped model is scored on the test split by its paper's estimator: the exact NLL
for fully observed models (the MADE mask ensemble is the exact mixture, by log-mean-exp over the
masks), the importance-sampled bound with K = 5000 for the VAEs (Burda et al. 2016). Scores are
cached in the run folder by checkpoint step, so rerunning the leaderboard re-scores only what moved.

Recipes live in :data:`RECIPES` (one per row label); a model class with a ``paper`` attribute
(``dict(recipe=fit settings, options=constructor options, published=dict(fixed=, dynamic=),
citation=...)``) supplies the recipe of the row labelled by its registered name, and registered
classes with a ``paper`` but no row get one. The optimiser is the engine's Adam unless the recipe
names another (``optimizer="adagrad"``: the MADE rows, as Germain et al.'s code trains); where a
paper used one the engine lacks (SGD, EM), the recipe's ``note`` says so.

Writes to ``workdir``: ``leaderboard-<data>.md`` (the table and notes; ``<data>`` is
``binarized-mnist``, ``mnist-dynamic``, ...), ``.csv``, ``.json`` (every number) and ``.png`` (ours
against published, per model); the run folders are ``workdir/<data>/<label>/``.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import signal
import time
from pathlib import Path

import pyro
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import inference
import zoo
from experiments import plots
from experiments.train import load_run, train_and_evaluate
from inference.checkpoint import METRICS
from inference.loop import CHECKPOINT

#: a row's sessions (training time, steps, device) and its cached score, in its run folder
STATUS = "leaderboard_status.json"

__all__ = ["CONFIG", "RECIPES", "TINY", "resolve_rows", "run", "run_row", "table_markdown"]

L_AND_M = "Larochelle & Murray 2011, Table 2"
MADE_PAPER = "Germain et al. 2015, Table 6"
IWAE_T1 = "Burda et al. 2016, Table 1"
#: the appendix's table not read here; nbip/IWAE's README lists 88.71 (k=1) and 87.10 (k=50) from it
IWAE_APPENDIX = "Burda et al. 2016, appendix D (fixed binarization), as listed by nbip/IWAE's README"
#: read at EugenHotaj/pytorch-generative d1f0a5c: "We train likelihood based models on dynamically Binarized MNIST"
PYTORCH_GENERATIVE = "pytorch-generative README (dynamic binarization)"
KARPATHY_FIG2 = "Germain et al. 2015, Figure 2 (500 units, 1 mask), as read by karpathy/pytorch-made's README on the validation split; not verified here"
#: Germain et al.'s MNIST networks as their code (mgermain/MADE) builds them: layers of 8000 ReLU units,
#: a random ordering (trainMADE.py shuffles before training), masked direct input -> output weights
MADE_PAPER_OPTIONS = dict(hidden_sizes=[8000], ordering="random", direct=True)
#: and their training (trainMADE.py's command): Adagrad 0.01 without decay, batches of 100, early
#: stopping with a 30-epoch look-ahead (no epoch cap there; 200 here); fused: 1.8x a step at 8000 units
MADE_PAPER_FIT = dict(optimizer="adagrad", lr=0.01, lr_schedule="constant", batch_size=100, epochs=200,
                      early_stopping=30, fused=True)
MADE_NOTE = ("the authors' code's MNIST network and training (8000 ReLU units a layer, random ordering, direct "
             "input-output weights, Adagrad 0.01, early stopping with a 30-epoch look-ahead; Table 6's hidden size "
             "itself not verified here)")
#: Burda et al.'s training: batches of 20, 3280 passes in 8 stages of 3^i passes at 1e-3 * 10^(-i/7)
#: ("staged"), Adam with the paper's beta1 = 0.9, beta2 = 0.999 and eps = 1e-4 on the gradient of a
#: minibatch's summed bound, which is 0.25 on the engine's data-set loss (50000 / 20 times larger).
#: Their code (yburda/iwae) has beta1 = 0.99 with second moments that start at one; with Adam's
#: zero start, beta1 = 0.99 stalls the VAE and collapses the 2-layer one (after 2 passes on the
#: fixed binarization: 196.0 against 136.5 for the VAE, 208.7 against 155.4 for the 2-layer VAE)
#: fused: torch's one-kernel Adam (the same update, rounded differently from the multi-tensor one),
#: a step at batch 20 in 1.90 ms against 2.53 (VAE 784-200-200-50) and 1.65 against 1.98 (2 layers)
IWAE_FIT = dict(lr=1e-3, lr_schedule="staged", betas=(0.9, 0.999), eps=0.25, batch_size=20, epochs=3280, fused=True)

#: one recipe per row: model, constructor options, fit settings, estimator, published figures
RECIPES = {
    "independent": dict(
        model="independent", fit=dict(lr=0.05, batch_size=100, epochs=10),
        published={}, note="baseline: independent pixels (no published figure)",
    ),
    "mixture-500": dict(
        model="mixture", options=dict(num_components=500), fit=dict(objective="enum", lr=0.02, batch_size=100, epochs=100, early_stopping=10),
        published=dict(fixed=(137.64, L_AND_M)), note="paper: EM; ours: gradient (Adam) on the enumerated marginal",
    ),
    "fvsbn": dict(
        model="fvsbn", fit=dict(lr=3e-3, batch_size=100, epochs=40, early_stopping=10, weight_decay=2.0),
        published=dict(fixed=(97.45, L_AND_M), dynamic=(96.58, PYTORCH_GENERATIVE)),
        note="ours: Adam with weight decay 2 (4e-5 on a per-example mean), chosen on the validation split: weight decay "
        "0 / 0.5 / 2 / 10 at lr 1e-2 for 20 epochs gave validation 99.26 / 99.09 / 98.98 / 99.06, this recipe 98.93",
    ),
    "nade": dict(
        model="nade", options=dict(hidden_size=500), fit=dict(lr=1e-3, batch_size=100, epochs=100, early_stopping=10),
        published=dict(fixed=(88.86, L_AND_M), dynamic=(85.65, PYTORCH_GENERATIVE)), note="H=500; ours: Adam, early stopping on the validation split",
    ),
    "made": dict(
        model="made", options=dict(MADE_PAPER_OPTIONS), fit=dict(MADE_PAPER_FIT),
        published=dict(fixed=(88.40, MADE_PAPER), dynamic=(84.87, PYTORCH_GENERATIVE)),
        note=MADE_NOTE + "; 1 hidden layer of 8000, 1 mask",
    ),
    "made-adam": dict(
        model="made", options=dict(MADE_PAPER_OPTIONS),
        fit=dict(lr=1e-3, batch_size=100, epochs=200, early_stopping=30, fused=True),
        published=dict(fixed=(88.40, MADE_PAPER)),
        note="the made row's network trained by Adam 1e-3 (cosine over 200 epochs) instead of the authors' Adagrad",
    ),
    "made-500": dict(
        model="made", options=dict(hidden_sizes=[500], ordering="random"),
        fit=dict(lr=1e-3, batch_size=100, epochs=100, early_stopping=30, weight_decay=5.0),
        published=dict(fixed=(94.5, KARPATHY_FIG2)),
        note="karpathy/pytorch-made's recipe in the engine: 784-500-784, one random ordering, Adam 1e-3 with weight decay 1e-4 "
        "on the per-example mean (5 on the engine's data-set loss), 100 epochs (cosine here, StepLR there)",
    ),
    "made-32-masks": dict(
        model="made", options=dict(MADE_PAPER_OPTIONS, num_masks=32, order_agnostic=True), fit=dict(MADE_PAPER_FIT),
        published=dict(fixed=(88.04, MADE_PAPER)),
        note=MADE_NOTE + "; 1 hidden layer of 8000, 32 masks, one drawn per step",
    ),
    "made-2-layers-32-masks": dict(
        model="made", options=dict(MADE_PAPER_OPTIONS, hidden_sizes=[8000, 8000], num_masks=32, order_agnostic=True),
        fit=dict(MADE_PAPER_FIT), published=dict(fixed=(86.64, MADE_PAPER)),
        note=MADE_NOTE + "; 2 hidden layers of 8000 (the command of mgermain/MADE's README for the paper's MNIST result), 32 masks",
    ),
    "vae": dict(
        model="vae", options=dict(hidden=[200, 200], latent_dim=50, activation="tanh"), fit=dict(objective="elbo", **IWAE_FIT),
        published=dict(fixed=(88.71, IWAE_APPENDIX), dynamic=(86.76, IWAE_T1)), eval_options=dict(num_samples=5000),
        note="1 stochastic layer 784-200-200-50 (tanh), k=1; Burda et al.'s Adam with lr 1e-3 * 10^(-i/7) for 3^i passes",
    ),
    "vae-authors-code": dict(
        model="vae", options=dict(hidden=[200, 200], latent_dim=50, activation="tanh", init="glorot"),
        fit=dict(objective="elbo", **dict(IWAE_FIT, betas=(0.99, 0.999))),
        published=dict(fixed=(88.71, IWAE_APPENDIX), dynamic=(86.76, IWAE_T1)), eval_options=dict(num_samples=5000),
        note="the vae row as yburda/iwae's code trains it where it departs from the paper's text: Adam's beta1 0.99 "
        "(optimizers.Adam's default; the paper says 0.9), Glorot-uniform weights with zero biases "
        "(nnet.Linear.random) and the output bias at the logit of the training mean (get_train_bias_np); "
        "not copied: its Adam second moments starting at one, its unshuffled minibatches, its exp (ours softplus) "
        "for the encoder's sigma",
    ),
    "vae-2-stochastic-layers": dict(
        model="vae2", eval_options=dict(num_samples=5000), fit=dict(objective="elbo", **IWAE_FIT),
        published=dict(dynamic=(85.33, IWAE_T1)),
        note="IWAE's 2 stochastic layers 784-(200-200)-100-(100-100)-50, k=1",
    ),
    "vae-2-stochastic-layers-authors-code": dict(
        model="vae2", options=dict(latent_dims=(100, 50), hidden=(200, 100), activation="tanh", init="glorot"),
        eval_options=dict(num_samples=5000), fit=dict(objective="elbo", **IWAE_FIT),
        published=dict(dynamic=(85.33, IWAE_T1)),
        note="the vae-2-stochastic-layers row started as yburda/iwae's code starts it: Glorot-uniform weights, zero "
        "biases, the output bias at the logit of the training mean; Adam's beta1 stays the paper's 0.9",
    ),
    "pixelcnn": dict(
        model="pixelcnn", fit=dict(lr=1e-3, batch_size=100, epochs=100, early_stopping=10),
        published=dict(fixed=(81.30, "van den Oord et al. 2016 (Pixel RNN), Table 4"), dynamic=(81.45, PYTORCH_GENERATIVE)),
        note="masked convolutions",
    ),
    "iwae-k50": dict(
        model="vae", options=dict(hidden=[200, 200], latent_dim=50, activation="tanh"),
        fit=dict(objective="iwae", num_particles=50, **IWAE_FIT),
        published=dict(fixed=(87.10, IWAE_APPENDIX), dynamic=(84.78, IWAE_T1)), eval_options=dict(num_samples=5000),
        note="the same VAE trained by the IWAE bound with k=50",
    ),
    "iwae-2-stochastic-layers-k50": dict(
        model="vae2", eval_options=dict(num_samples=5000), fit=dict(objective="iwae", num_particles=50, **IWAE_FIT),
        published=dict(dynamic=(82.90, IWAE_T1)),
        note="the 2-stochastic-layer VAE trained by the IWAE bound with k=50",
    ),
}

CONFIG = dict(
    data="binarized_mnist",
    data_dir=None,
    binarize="threshold",
    models=None,  # row labels; None: every recipe, then every registered class with a ``paper``
    recipes={},  # label -> recipe overrides (merged over RECIPES[label] and any class's paper)
    epochs=None,  # train each model up to this epoch of its recipe's schedule (a total across sessions)
    budget_minutes=None,  # at most this much training per model in this session
    eval_options={},  # label -> log_prob options overriding the recipe's (e.g. a smaller K)
    train=True,  # False: only score and tabulate the run folders that exist
    keep_rows=None,  # an earlier table's .json: its rows that this invocation does not run are kept
    seed=0,
    device="cpu",
    threads=None,  # torch.set_num_threads (None: leave it)
    progress=True,
)

TINY = dict(
    data="digits",
    models=["fvsbn", "made-32-masks", "vae"],
    recipes={
        "fvsbn": dict(fit=dict(epochs=2, batch_size=100, early_stopping=None)),
        "made-32-masks": dict(options=dict(hidden_sizes=[16], num_masks=2), fit=dict(epochs=2, batch_size=100, early_stopping=None)),
        "vae": dict(options=dict(hidden=[16], latent_dim=2), fit=dict(epochs=2, batch_size=100), eval_options=dict(num_samples=8)),
    },
    progress=False,
)

COLUMNS = [
    ("label", "model"), ("parameters", "parameters"), ("binarization", "binarization (train / test)"),
    ("estimator", "estimator (K)"), ("ours", "ours (nats)"), ("published", "published (nats)"),
    ("difference", "difference"), ("epochs", "epochs (run / recipe)"), ("wall_time", "wall time"), ("device", "device"),
]


# ----- rows ------------------------------------------------------------------------------
def resolve_rows(config: dict) -> list[dict]:
    """The config's rows: ``{"label", "model", "options", "fit", "eval_options", "estimator",
    "published", "note"}``, from :data:`RECIPES`, the classes' ``paper`` and ``config["recipes"]``."""
    labels = list(config["models"] or RECIPES)
    if config["models"] is None:  # classes that bring their own paper recipe get a row
        labels += [n for n in zoo.available() if getattr(zoo.get(n), "paper", None) and n not in labels
                   and not any(RECIPES[lab]["model"] == n for lab in labels)]
    rows = []
    for label in labels:
        recipe = copy.deepcopy(RECIPES.get(label, {"model": label}))
        override = config["recipes"].get(label, {})
        name = override.get("model", recipe.get("model", label))  # a new label may name its model
        paper = getattr(zoo.get(name), "paper", None) if name in zoo.available() else None
        if paper and label == name:
            recipe.update(options=paper.get("options", recipe.get("options", {})), fit=paper.get("recipe", recipe.get("fit", {})))
            cite = paper.get("citation", "")
            recipe["published"] = {k: (v, cite) for k, v in (paper.get("published") or {}).items() if v is not None}
            for key in ("eval_options", "estimator", "note"):
                recipe[key] = paper.get(key, recipe.get(key))
        elif paper and "options" not in recipe:  # a row of a model with a paper: the paper's architecture
            recipe["options"] = copy.deepcopy(paper.get("options", {}))
        for key in ("options", "fit", "eval_options"):
            recipe[key] = {**(recipe.get(key) or {}), **(override.get(key) or {})}
        recipe.update({k: v for k, v in override.items() if k not in ("options", "fit", "eval_options")})
        recipe["eval_options"].update(config["eval_options"].get(label, {}))
        rows.append(dict(recipe, label=label, model=name))
    return rows


def estimator(row: dict) -> str:
    """How a row's test NLL is computed, with K."""
    if row.get("estimator"):
        return row["estimator"]
    masks = row["options"].get("num_masks", 1)
    if masks > 1:  # MADE's log_prob is the exact mixture over its masks
        return f"exact, {masks}-mask ensemble (log-mean-exp)"
    k = row["eval_options"].get("num_samples")
    if row["model"] not in zoo.available():
        return f"IS, K={k}" if k else "exact"
    if k or not getattr(zoo.get(row["model"]), "exact_density", True):
        return f"IS, K={k or getattr(zoo.get(row['model']), 'default_num_samples', '?')}"
    return "exact"


def binarization(config: dict) -> tuple[str, str | None]:
    """(description for the table, key of the published figures: "fixed"/"dynamic"/None)."""
    if config["data"] == "binarized_mnist":
        return "fixed (Larochelle & Murray) / fixed", "fixed"
    if config["binarize"] == "dynamic":
        return (f"dynamic, a draw per epoch / one draw, seed {zoo.data.EVAL_BINARIZATION_SEEDS['test']}",
                "dynamic" if config["data"] == "mnist" else None)
    return "threshold 0.5 / threshold 0.5", None


# ----- training with caps ---------------------------------------------------------------
@contextlib.contextmanager
def _capped(max_steps: int | None, seconds: float | None):
    """Stop training after ``max_steps`` optimiser steps or ``seconds`` by the engine's own
    Ctrl-C path (checkpoint, then KeyboardInterrupt); yields a dict whose "hit" says if it did."""
    state = {"hit": False, "steps": 0}
    deadline = None if seconds is None else time.perf_counter() + seconds

    def hook(optimizer, args, kwargs):
        state["steps"] += 1
        late = deadline is not None and time.perf_counter() > deadline
        if not state["hit"] and (late or (max_steps is not None and state["steps"] >= max_steps)):
            state["hit"] = True
            signal.raise_signal(signal.SIGINT)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def _train_config(row: dict, config: dict) -> dict:
    return dict(
        model=row["model"], options=row["options"], data=config["data"], data_dir=config["data_dir"],
        binarize=config["binarize"], seed=config["seed"], device=config["device"],
        progress=config["progress"], eval="none", **row["fit"],
    )


def _steps_per_epoch(row: dict, num_train: int) -> int:
    batch = row["fit"].get("batch_size") or zoo.get(row["model"]).fit_defaults.get("batch_size", 128)
    return max(num_train // min(int(batch), num_train), 1)


def _checkpoint_step(workdir: Path) -> int:
    path = workdir / CHECKPOINT
    return int(inference.load_checkpoint(path)["step"]) if path.is_file() else 0


def train_row(row: dict, config: dict, workdir: Path, status: dict, num_train: int) -> dict:
    """Train (or resume) one row's run folder within the config's caps; updates ``status``."""
    per_epoch = _steps_per_epoch(row, num_train)
    done = _checkpoint_step(workdir)
    max_steps = None if config["epochs"] is None else int(config["epochs"] * per_epoch) - done
    if status.get("finished") or (max_steps is not None and max_steps <= 0) or not config["train"]:
        return status
    seconds = None if config["budget_minutes"] is None else 60 * float(config["budget_minutes"])
    caps = [f"up to epoch {config['epochs']}"] if max_steps is not None else []
    caps += [f"at most {config['budget_minutes']} min"] if seconds is not None else []
    print(f"  training from epoch {done / per_epoch:g} of {row['fit'].get('epochs', '?')}"
          + (f" ({', '.join(caps)})" if caps else ""), flush=True)
    start, interrupted = time.perf_counter(), None
    try:
        with _capped(max_steps, seconds) as cap:
            metrics = train_and_evaluate(_train_config(row, config), workdir)
        status.update(finished=True, stopped_early=bool(metrics.get("stopped_early")))
    except KeyboardInterrupt as e:
        if not cap["hit"]:
            interrupted = e
    after = _checkpoint_step(workdir)
    status.setdefault("sessions", []).append(dict(
        seconds=round(time.perf_counter() - start, 1), from_step=done, to_step=after, device=_device(config),
    ))
    if interrupted is not None:  # Ctrl-C: the checkpoint is saved; keep this session's record too
        (workdir / STATUS).write_text(json.dumps(status, indent=2) + "\n")
        raise interrupted
    return status


def _device(config: dict) -> str:
    if str(config["device"]).startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


# ----- scoring ---------------------------------------------------------------------------
def _selected_state(row: dict, workdir: Path):
    """(step, module states) that early stopping selects so far: the best validation epoch's
    parameters, for a row with ``early_stopping`` whose checkpoint holds them; else None."""
    if not row["fit"].get("early_stopping"):
        return None
    best = inference.load_checkpoint(workdir / CHECKPOINT).get("best") or {}
    return (int(best["step"]), best["state"]) if best.get("state") else None


def score_row(row: dict, config: dict, workdir: Path, status: dict, test) -> dict | None:
    """The test metrics of the run folder's checkpoint by the row's estimator (cached by step).
    A row with early stopping is scored at the parameters it selects so far (its best
    validation epoch), as the finished run would be, also while it is partial."""
    step = _checkpoint_step(workdir)
    if step == 0:
        return None
    selected = _selected_state(row, workdir)
    key = dict(step=step, eval_options=row["eval_options"], test=f"{config['data']}/{config['binarize']}",
               scored_step=selected[0] if selected else step)
    cached = status.get("score")
    if cached and cached.get("key") == key:
        return cached["metrics"]
    print(f"  scoring the checkpoint of step {step} on {len(test)} test images ({estimator(row)})"
          + (f", at its best validation step {selected[0]}" if selected else ""), flush=True)
    model, _ = load_run(workdir)
    if selected:
        model.load_state_dict(selected[1]["model"])
    model.to(config["device"])
    model.eval()
    pyro.set_rng_seed(config["seed"] + 1)
    start = time.perf_counter()
    metrics = inference.evaluate(model, test, progress=config["progress"], desc=f"score {row['label']}", **row["eval_options"])
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics["scored_step"] = key["scored_step"]
    status["score"] = dict(key=key, metrics=metrics)
    return metrics


def run_row(row: dict, config: dict, workdir: Path, train_size: int, test) -> dict:
    """Train, score and tabulate one row; its status (sessions, score) lives in the run folder."""
    workdir = Path(workdir)
    status_path = workdir / STATUS
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    if row["model"] not in zoo.available():
        return dict(_published(row, config), label=row["label"], model=row["model"], estimator=estimator(row),
                    note=f"not run: model {row['model']!r} is not registered yet")
    status = train_row(row, config, workdir, status, train_size)
    metrics = score_row(row, config, workdir, status, test)
    if status:
        workdir.mkdir(parents=True, exist_ok=True)
        status_path.write_text(json.dumps(status, indent=2) + "\n")
    out = table_row(row, config, status, metrics, _steps_per_epoch(row, train_size), _checkpoint_step(workdir), test.dim)
    if out.get("partial") and (trend := validation_trend(workdir / METRICS)):
        out["validation"] = trend
    return out


def validation_trend(path: Path) -> dict | None:
    """The validation objective of a run's metrics.jsonl at the middle of the logged run and at
    its end (``from``, ``to``: epoch and value), and its best: whether more epochs still help."""
    points = []
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("val_loss") is not None and record.get("epoch") is not None:
                    points.append((float(record["epoch"]), float(record["val_loss"])))
    if len(points) < 2:
        return None
    last = points[-1]
    middle = min(points, key=lambda p: abs(p[0] - last[0] / 2))
    best = min(points, key=lambda p: p[1])
    return {"from": list(middle), "to": list(last), "best": list(best)}


def table_row(row, config, status, metrics, per_epoch, step, data_dim) -> dict:
    """One row of the table from a recipe, its status and its test metrics."""
    pyro.set_rng_seed(0)
    model = zoo.create(row["model"], data_dim=data_dim, **row["options"])
    out = dict(label=row["label"], model=row["model"], parameters=model.num_parameters(), **_published(row, config))
    out["recipe"] = recipe_of(row)
    recipe_epochs = row["fit"].get("epochs")
    epochs = step / per_epoch
    partial = not status.get("finished")
    sessions = status.get("sessions", [])
    seconds = sum(s["seconds"] for s in sessions)
    trained = sum(s["to_step"] - s["from_step"] for s in sessions) / per_epoch
    out.update(
        estimator=estimator(row), ours=metrics["nll"] if metrics else None, epochs_run=round(epochs, 2), recipe_epochs=recipe_epochs, partial=partial,
        stopped_early=status.get("stopped_early", False), train_seconds=round(seconds, 1),
        seconds_per_epoch=round(seconds / trained, 2) if trained > 0 else None,
        score_seconds=metrics.get("seconds") if metrics else None,
        device=", ".join(dict.fromkeys(s["device"] for s in sessions)) or None, note=row.get("note"),
    )
    out["run"] = bool(sessions or step)
    if not out["run"]:
        out["note"] = "not run yet" + (f"; {out['note']}" if out["note"] else "")
    if metrics and metrics.get("scored_step") not in (None, step):
        out["scored_epoch"] = round(metrics["scored_step"] / per_epoch, 2)
        out["note"] = (f"{out['note']}; " if out["note"] else "") + (
            f"scored at its best validation epoch, {out['scored_epoch']:g}")
    if out["ours"] is not None and out["published"] is not None:
        out["difference"] = out["ours"] - out["published"]
    if partial:
        _budget(out, row["fit"].get("early_stopping"), epochs)
    return out


def _budget(out: dict, early_stopping: int | None, epochs: float) -> None:
    """A partial row's training time left at its measured rate: ``budget_left_seconds`` (with early
    stopping, the look-ahead after its best epoch, if no better epoch comes) and, where that is
    less than the whole recipe, ``budget_max_seconds`` (all the recipe's epochs)."""
    rate, recipe_epochs = out.get("seconds_per_epoch"), out.get("recipe_epochs")
    if not (rate and recipe_epochs):
        return
    last = recipe_epochs
    if out.get("scored_epoch") is not None and early_stopping:
        last = min(last, out["scored_epoch"] + early_stopping)  # at most: no better epoch comes
    out["budget_left_seconds"] = round(rate * max(last - epochs, 0))
    if last < recipe_epochs:  # and at most the whole recipe, if better epochs keep coming
        out["budget_max_seconds"] = round(rate * (recipe_epochs - epochs))


# ----- the table -------------------------------------------------------------------------
def _published(row: dict, config: dict) -> dict:
    """The binarization text and the published figure (value, citation) of the config's protocol."""
    text, key = binarization(config)
    published = row.get("published", {}).get(key) if key else None
    return dict(binarization=text, published=published[0] if published else None,
                citation=published[1] if published else None)


def _cells(r: dict) -> dict:
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    epochs = f"{r['epochs_run']:g} / {r['recipe_epochs']}" if r.get("epochs_run") is not None else ""
    if r.get("epochs_run") == 0:
        epochs = f"not run / {r['recipe_epochs']}"
    elif r.get("partial") and epochs:
        epochs += " (partial)"
    elif r.get("stopped_early"):
        epochs += " (early stop)"
    published = "" if r.get("published") is None else f"{r['published']:.2f} ({r['citation']})"
    diff = "" if r.get("difference") is None else f"{r['difference']:+.2f}"
    wall = "" if not r.get("train_seconds") else f"{r['train_seconds'] / 60:.1f} min"
    if r.get("score_seconds"):
        wall += f" + {r['score_seconds'] / 60:.1f} min scoring"
    return dict(
        label=r["label"], parameters=f"{r['parameters']:,}" if r.get("parameters") else "",
        binarization=r.get("binarization", ""), estimator=r.get("estimator", ""), ours=fmt(r.get("ours")),
        published=published, difference=diff, epochs=epochs, wall_time=wall, device=r.get("device") or "",
    )


def table_markdown(rows: list[dict]) -> str:
    """The Markdown table of the rows (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = _cells(r)
        lines.append("| " + " | ".join(str(cells[k]).replace("|", "\\|") for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def notes_markdown(rows: list[dict]) -> str:
    """Per-row notes: why a row is missing or partial, and the budget it still needs."""
    lines = []
    for r in rows:
        parts = [r["note"]] if r.get("note") else []
        if r.get("budget_left_seconds") is not None:
            left = f"{r['budget_left_seconds'] / 3600:.1f} h more at that rate"
            if r.get("budget_max_seconds") is not None:
                left = (f"at least {left} (early stopping's look-ahead, if no better epoch comes), at most "
                        f"{r['budget_max_seconds'] / 3600:.1f} h (all {r['recipe_epochs']} epochs)")
            parts.append(f"{r['seconds_per_epoch']:.1f} s/epoch measured here; the recipe needs {left}")
        if r.get("validation"):
            (e0, v0), (e1, v1), (eb, vb) = r["validation"]["from"], r["validation"]["to"], r["validation"]["best"]
            parts.append(f"its validation objective went from {v0:.2f} (epoch {e0:g}) to {v1:.2f} (epoch {e1:g})"
                         + (f", best {vb:.2f} at epoch {eb:g}" if eb != e1 else ""))
        if r.get("difference") is not None:
            d = r["difference"]
            parts.append(f"{-d:.2f} nats below (better than) the published figure" if d < -0.5
                         else "within 0.5 nat of the published figure" if d <= 0.5
                         else f"{d:.2f} nats above the published figure")
        if parts:
            lines.append(f"- **{r['label']}**: " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path, title: str) -> Path:
    """Left: ours (filled: finished, hollow: partial) and published (x) per model. Right: ours -
    published, with the 0.5-nat band of the issue's goal shaded."""
    scored = [r for r in rows if r.get("ours") is not None or r.get("published") is not None]
    fig, (ax, dx) = plots.plt.subplots(1, 2, figsize=(11, 0.45 * len(scored) + 1.8), sharey=True,
                                       gridspec_kw=dict(width_ratios=[3, 2]))
    for i, r in enumerate(scored):
        if r.get("published") is not None:
            ax.scatter(r["published"], i, marker="x", color="black", s=50, zorder=3)
        if r.get("ours") is not None:
            ax.scatter(r["ours"], i, s=45, facecolors="white" if r.get("partial") else "tab:blue",
                       edgecolors="tab:blue", zorder=3)
            if r.get("published") is not None:
                ax.plot([r["published"], r["ours"]], [i, i], color="tab:blue", alpha=0.4)
        if r.get("difference") is not None:
            dx.barh(i, r["difference"], color="tab:orange" if r["difference"] > 0.5 else "tab:green",
                    alpha=0.5 if r.get("partial") else 0.9)
            left = r["difference"] < 0  # the label beyond the bar's end, on its side
            dx.annotate(f"{r['difference']:+.2f}", (r["difference"], i), xytext=(-3 if left else 3, 0),
                        textcoords="offset points", va="center", ha="right" if left else "left", fontsize=8)
    ax.scatter([], [], s=45, color="tab:blue", label="ours (finished)")
    ax.scatter([], [], s=45, facecolors="white", edgecolors="tab:blue", label="ours (partial)")
    ax.scatter([], [], marker="x", color="black", label="published")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0 + 0.4 / max(len(scored), 1)), ncol=3, fontsize=8, frameon=False)
    ax.set_yticks(range(len(scored)), [r["label"] for r in scored])
    ax.set_ylim(len(scored) - 0.5, -0.5)  # first row on top, half a row of margin
    ax.set_xlabel("test NLL (nats per image, lower is better)")
    ax.grid(alpha=0.3, axis="x")
    dx.axvspan(-0.5, 0.5, color="tab:green", alpha=0.12, label="within 0.5 nat")
    dx.axvline(0, color="black", lw=0.8)
    dx.set_xlabel("ours - published (nats)")
    dx.margins(x=0.2)
    dx.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    return plots._save(fig, path)


def data_key(config: dict) -> str:
    """The name of the table's files: ``binarized-mnist``, ``mnist-dynamic``, ``digits-threshold``, ..."""
    if config["data"] == "binarized_mnist":
        return "binarized-mnist"
    return f"{config['data'].replace('_', '-')}-{config['binarize']}"


def _write(rows: list[dict], config: dict, workdir: Path, seconds: float) -> str:
    title = f"Leaderboard: {config['data']}" + (f" ({config['binarize']})" if config["data"] != "binarized_mnist" else "")
    caps = ", ".join(f"{k}={config[k]}" for k in ("epochs", "budget_minutes") if config[k] is not None) or "none"
    text = (
        f"# {title}\n\n{table_markdown(rows)}\n"
        "Lower is better. *partial*: trained fewer epochs than the recipe (the run folder resumes it). "
        "Difference = ours - published. Wall time is the training time summed over sessions, plus the scoring; "
        "seconds per epoch are as measured in those sessions (on a shared machine they can be several times "
        "an idle core's).\n\n"
        f"Caps of this session: {caps}; this invocation took {seconds / 60:.1f} min.\n\n{notes_markdown(rows)}"
    )
    stem = workdir / f"leaderboard-{data_key(config)}"
    stem.with_suffix(".md").write_text(text)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps(dict(config=config, rows=rows), indent=2, default=str) + "\n")
    figure(rows, stem.with_suffix(".png"), title)
    return text


#: fit settings that change how the same update is computed (its rounding), not the recipe
IMPLEMENTATION = ("fused",)


def recipe_of(row: dict) -> dict:
    """What a row's number depends on (model, options, fit settings but :data:`IMPLEMENTATION`'s,
    estimator), as JSON keeps it. Also takes a recorded recipe (a table's ``recipe`` field)."""
    recipe = {k: row.get(k) for k in ("model", "options", "fit", "eval_options")}
    recipe["fit"] = {k: v for k, v in (recipe["fit"] or {}).items() if k not in IMPLEMENTATION}
    return json.loads(json.dumps(recipe, default=str))


def kept(rows: list[dict], config: dict, say: bool = False) -> list[dict]:
    """``rows`` with the rows of ``config["keep_rows"]`` (an earlier table's .json, e.g. another
    machine's) that ``rows`` lacks, in the recipes' order; each kept row says where it came from.
    A row is kept only if it records the recipe (:func:`recipe_of`) that its label has now; it
    replaces a row that this invocation lists but has not run (no run folder here).

    :raises ValueError: the file is missing or unreadable, or its table is of other data.
    """
    if not config.get("keep_rows"):
        return rows
    path = Path(config["keep_rows"])
    try:
        earlier = json.loads(path.read_text())
        their = {k: earlier["config"][k] for k in ("data", "binarize", "seed")}
        old_rows = list(earlier["rows"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"keep_rows: {path} is not a leaderboard table's .json ({type(e).__name__}: {e})") from None
    if data_key(their) != data_key(config) or their["seed"] != config["seed"]:
        raise ValueError(f"keep_rows: {path} is a table of {data_key(their)} (seed {their['seed']}), "
                         f"not of {data_key(config)} (seed {config['seed']})")
    have = {r["label"] for r in rows if r.get("run", True)}  # a row not run here may be kept
    recipes = {r["label"]: r for r in resolve_rows({**config, "models": None})}
    current = {label: recipe_of(r) for label, r in recipes.items()}
    extra = []
    for r in (r for r in old_rows if r["label"] not in have):
        if r["label"] not in current or current[r["label"]] != recipe_of(r.get("recipe") or {}):  # another recipe's number is no row here
            if say:
                print(f"keep_rows: not keeping {r['label']!r}: its recipe is not this table's", flush=True)
            continue
        note = str(r.get("note") or "")
        if not note.startswith("kept from"):  # kept twice: it says so once
            note = f"kept from {path.name} (not rerun in this invocation)" + (f"; {note}" if note else "")
        row = dict(r, note=note, **_published(recipes[r["label"]], config))  # today's citation of the figure
        if row.get("partial") and row.get("epochs_run") is not None:  # the budget as this version states it
            _budget(row, recipes[r["label"]]["fit"].get("early_stopping"), row["epochs_run"])
        if row.get("ours") is not None and row["published"] is not None:
            row["difference"] = row["ours"] - row["published"]
        extra.append(row)
    order = {label: i for i, label in enumerate(RECIPES)}
    replaced = {r["label"] for r in extra}
    return sorted([r for r in rows if r["label"] not in replaced] + extra, key=lambda r: order.get(r["label"], len(order)))


def run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    started = time.perf_counter()
    load = lambda split: zoo.load(config["data"], split, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])  # noqa: E731
    train_size, test = len(load("train")), load("test")
    rows = []
    todo = resolve_rows(config)
    for i, row in enumerate(todo):
        print(f"[leaderboard {i + 1}/{len(todo)}] {row['label']}: train and score", flush=True)
        rows.append(run_row(row, config, workdir / data_key(config) / row["label"], train_size, test))
        _write(kept(rows, config), config, workdir, time.perf_counter() - started)  # the table so far survives a kill
    rows = kept(rows, config, say=True)
    text = _write(rows, config, workdir, time.perf_counter() - started)
    print(text)
    return dict(rows=rows, table=str(workdir / f"leaderboard-{data_key(config)}.md"))


