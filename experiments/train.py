"""Train one zoo model on one data set into a run folder, then evaluate and plot.

The run folder's layout, its lock and its atomic files are :mod:`experiments.run_folder`'s.
Running the same configuration into the same folder again resumes an interrupted run.
"""
from __future__ import annotations

import pyro
import torch

import inference
import zoo
from experiments import plots
from experiments.run_folder import RunFolder

__all__ = ["CONFIG", "load_run", "sample_figure", "train_and_evaluate"]

#: Defaults of ``zoo train``; None means "the model's fit_defaults, then the engine's".
CONFIG = dict(
    model="bernoulli",
    options={},
    data="digits",
    data_dir=None,
    binarize="threshold",
    objective=None,
    steps=None,
    epochs=None,
    batch_size=None,
    lr=None,
    num_particles=None,
    early_stopping=None,
    seed=0,
    device="cpu",
    progress=True,
    eval="all",  # after training: "all" (NLL + sample quality), "nll" (valid/test NLL) or "none"
    eval_options={},  # model.log_prob options of the evaluation, e.g. {"num_samples": 5000}
)

EVAL_LEVELS = ("none", "nll", "all")

FIT_KEYS = ("objective", "steps", "epochs", "batch_size", "lr", "num_particles", "early_stopping")


def resolve(config: dict) -> dict:
    """Fill in defaults and the data dimensions the model needs."""
    unknown = set(config) - set(CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(CONFIG)}")
    config = {**CONFIG, **config}
    if config["eval"] not in EVAL_LEVELS:
        raise ValueError(f"unknown eval {config['eval']!r}; choose from {', '.join(EVAL_LEVELS)}")
    cls = zoo.get(config["model"])  # unknown model -> UnknownNameError before any work
    train = _load(config, "train")
    options = dict(config["options"])
    if cls.support == "categorical":
        if train.support != "categorical":
            raise zoo.DataError(f"model {config['model']!r} needs categorical data; {config['data']!r} is {train.support}")
        options.setdefault("num_categories", train.num_categories)
    elif cls.support == "binary":
        if train.support != "binary":
            raise zoo.DataError(f"model {config['model']!r} needs binary data; {config['data']!r} is {train.support}")
        options.setdefault("data_dim", train.dim)
    config["options"] = options
    config["image_shape"] = list(train.image_shape) if train.image_shape else None
    return config


def _load(config: dict, split: str) -> zoo.Dataset:
    return zoo.load(config["data"], split, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])


def build_model(config: dict):
    """The model of a resolved config, with parameters drawn from its seed."""
    pyro.set_rng_seed(config["seed"])
    return zoo.create(config["model"], **config["options"])


def train_and_evaluate(config: dict, workdir, *, resume: bool = True) -> dict:
    """Train, evaluate and plot one run; returns the final metrics (also in metrics.json)."""
    config = resolve(config)
    with RunFolder(workdir, resume=resume) as folder:
        if resume and folder.has_checkpoint() and (folder.path / "config.json").exists():
            previous = folder.read_config()
            if _comparable(previous) != _comparable(config):
                raise ValueError(
                    f"{folder.path} holds a run with another configuration; choose another --out "
                    "or delete the folder"
                )
        folder.write_config(config)
        return _train_into(config, folder)


def _train_into(config: dict, folder: RunFolder) -> dict:
    model = build_model(config)
    train, valid, test = (_load(config, s) for s in ("train", "valid", "test"))
    fit_kwargs = {k: config[k] for k in FIT_KEYS if config[k] is not None}
    # a model of the adversarial protocol (the GAN) is trained by the adversarial game
    adversarial = isinstance(model, inference.Adversarial)
    outputs = folder.engine_outputs()
    result = (inference.fit_adversarial if adversarial else inference.fit)(
        model,
        train,
        val_data=valid if len(valid) else None,
        seed=config["seed"],
        device=config["device"],
        progress=config["progress"],
        **outputs,
        **fit_kwargs,
    )
    if not folder.writer:
        return {"model": config["model"], "data": config["data"], "steps": result.steps}
    metrics = {
        "model": config["model"],
        "data": config["data"],
        "num_parameters": model.num_parameters(),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3),  # summed over the run's parts
        "stopped_early": result.stopped_early,
        **evaluate_run(model, config, valid, test),
    }
    folder.write_metrics(metrics)
    plots.loss_curve(
        result.history, folder.path / "loss.png", val_losses=result.val_losses,
        title=f"{config['model']} on {config['data']}",
    )
    sample_figure(model, config, folder.path / "samples.png", test=test)
    return metrics


def evaluate_run(model, config: dict, valid, test) -> dict:
    """The post-training metrics at the config's ``eval`` level: ``valid``/``test``
    (:func:`inference.evaluate`, bounded memory, a bar each) and ``sample_quality`` (FD, MMD,
    Parzen window and mode coverage of samples vs the test split; only with "all")."""
    level, progress = config.get("eval", "all"), config["progress"]
    if level == "none":
        return {"eval": "none"}
    options = dict(config.get("eval_options") or {})
    out = {
        "eval": level,
        "valid": inference.evaluate(model, valid, progress=progress, desc="evaluate valid", **options) if len(valid) else None,
        "test": inference.evaluate(model, test, progress=progress, desc="evaluate test", **options),
    }
    if level == "all":
        out["sample_quality"] = inference.sample_quality(
            model, config["data"], root=config["data_dir"], binarize=config["binarize"], seed=config["seed"],
            progress=progress,
        )
    return out


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("progress", "device", "data_dir", "eval", "eval_options")}


def load_run(workdir):
    """(model, config) of a run folder, with the parameters of its checkpoint."""
    folder = RunFolder(workdir)
    config = folder.read_config()
    model = build_model(config)
    state = folder.load_state()
    try:
        model.load_state_dict(state["modules"]["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise inference.CheckpointError(f"{folder.path} holds parameters of another model: {first}") from None
    return model, config


def sample_figure(model, config: dict, path, *, n: int = 64, test=None, seed: int = 0):
    """Save ``n`` samples as an image grid (image data) or as frequencies (categorical)."""
    pyro.set_rng_seed(seed)
    try:
        samples = model.sample(n if model.support != "categorical" else 10_000)
    except zoo.NoDensityError:
        return None
    samples = samples.cpu()
    if config.get("image_shape"):
        return plots.image_grid(samples, config["image_shape"], path, title=f"samples: {config['model']}")
    if model.support == "categorical":
        m = model.num_categories
        freq = torch.bincount(samples, minlength=m).double() / len(samples)
        fig, ax = plots.plt.subplots(figsize=(6, 4))
        ax.bar(torch.arange(m) - 0.2, freq.numpy(), width=0.4, label="model samples")
        if test is not None:
            data = torch.bincount(test.x.cpu(), minlength=m).double() / len(test)
            ax.bar(torch.arange(m) + 0.2, data.numpy(), width=0.4, label="test data")
        ax.set_xlabel("category")
        ax.set_ylabel("frequency")
        ax.legend()
        return plots._save(fig, path)
    return None
