"""Train one zoo model on one data set into a run folder, then evaluate and plot.

The run folder's layout, its lock and its atomic files are :mod:`experiments.run_folder`'s.
Running the same configuration into the same folder again resumes an interrupted run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyro
import torch

import inference
import zoo
from experiments import plots, sources
from experiments.run_folder import RunFolder, as_stored
from inference.checkpoint import METRICS
from inference.svi import _make_guide

__all__ = ["CONFIG", "TensorBoardLogger", "evaluate_run", "load_run", "load_split", "sample_figure", "train_and_evaluate"]

#: Defaults of ``zoo train``; None means "the model's fit_defaults, then the engine's".
CONFIG = dict(
    model="bernoulli",
    options={},
    data="digits",
    data_dir=None,
    binarize="threshold",
    objective=None,
    guide=None,
    steps=None,
    epochs=None,
    batch_size=None,
    optimizer=None,
    lr=None,
    lr_schedule=None,
    betas=None,
    eps=None,
    num_particles=None,
    weight_decay=None,
    fused=None,
    early_stopping=None,
    seed=0,
    device="cpu",
    progress=True,
    logger="jsonl",
    eval="all",  # after training: "all" (NLL + sample quality), "nll" (valid/test NLL) or "none"
    eval_options={},  # model.log_prob options of the evaluation, e.g. {"num_samples": 5000}
)

#: keys a run adds to its config.json (recomputed when that file is passed back in)
DERIVED = ("image_shape", "model_path", "support")

EVAL_LEVELS = ("none", "nll", "all")

FIT_KEYS = ("objective", "guide", "steps", "epochs", "batch_size", "optimizer", "lr", "lr_schedule", "betas", "eps", "num_particles", "weight_decay", "fused", "early_stopping")


def resolve(config: dict) -> dict:
    """Fill in defaults and the data dimensions the model's constructor takes."""
    config = {k: v for k, v in config.items() if k not in DERIVED or k == "model_path"}
    unknown = set(config) - set(CONFIG) - {"model_path"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {', '.join(sorted(CONFIG))}")
    config = {**CONFIG, **{k: v for k, v in config.items() if v is not None}}
    if config["eval"] not in EVAL_LEVELS:
        raise ValueError(f"unknown eval {config['eval']!r}; choose from {', '.join(EVAL_LEVELS)}")
    if sources.is_data_file(config["data"]):  # recorded absolute: the run folder works from anywhere
        config["data"] = str(Path(config["data"]).expanduser().resolve())
    if "model_path" not in config:
        config.update(sources.model_spec(config["model"]))
    cls = model_class(config)  # unknown model -> UnknownNameError before any work
    train = _load(config, "train")
    if len(train) == 0:
        raise zoo.DataError(f"{config['data']}: the train split holds no data points")
    sources.check_support(cls, train, config["data"])
    config["options"] = sources.fill_options(cls, config["options"], train)
    config["image_shape"] = list(train.image_shape) if train.image_shape else None
    if config.get("model_path") is None:
        config.pop("model_path", None)
    return config


def model_class(config: dict) -> type:
    """The class of a config's model: registered, or from a user's file or module."""
    return sources.model_class(config["model"], config.get("model_path"))


def _load(config: dict, split: str) -> zoo.Dataset:
    if sources.is_data_file(config["data"]):
        return sources.load_data(config["data"], split)
    return zoo.load(config["data"], split, root=config["data_dir"], binarize=config["binarize"], seed=config["seed"])


def load_split(config: dict, split: str) -> zoo.Dataset:
    """One split of a run's data (a built-in data set or the user's file)."""
    return _load({**CONFIG, **config}, split)


def build_model(config: dict):
    """The model of a resolved config, with parameters drawn from its seed."""
    pyro.set_rng_seed(config["seed"])
    cls = model_class(config)
    try:
        return cls(**config["options"])
    except TypeError as e:
        raise TypeError(f"bad option for model {config['model']!r}: {e}") from None


def train_and_evaluate(config: dict, workdir, *, resume: bool = True) -> dict:
    """Train, evaluate and plot one run; returns the final metrics (also in metrics.json)."""
    config = resolve(config)
    with RunFolder(workdir, resume=resume) as folder:
        if resume and folder.has_checkpoint() and (folder.path / "config.json").exists():
            # keys added to CONFIG since that run was written take their defaults
            previous = {**CONFIG, **folder.read_config()}
            if _comparable(previous) != _comparable(config):
                raise ValueError(
                    f"{folder.path} holds a run with another configuration; choose another --out, "
                    "pass --restart to start over, or delete the folder"
                )
        folder.write_config(config)
        return _train_into(config, folder)


def make_guide(config: dict, model):
    """The run's guide when it is not the model's own (``config["guide"]``, an AutoGuide's
    name from :data:`inference.svi.GUIDES`), else None."""
    if config.get("guide") is None or isinstance(model, inference.Adversarial):
        return None
    return _make_guide(config["guide"], model.model)


def _train_into(config: dict, folder: RunFolder) -> dict:
    model = build_model(config)
    train, valid, test = (_load(config, s) for s in ("train", "valid", "test"))
    fit_kwargs = {k: config[k] for k in FIT_KEYS if config[k] is not None}
    if not folder.has_checkpoint() and callable(getattr(model, "init_from_data", None)):
        model.init_from_data(train.x)  # a model's data-dependent start (a resumed run loads its state)
    guide = make_guide(config, model)  # trained in place by fit, then evaluated with the model
    if guide is not None:
        fit_kwargs["guide"] = guide
    # a model of the adversarial protocol (the GAN) is trained by the adversarial game
    adversarial = isinstance(model, inference.Adversarial)
    logger = TensorBoardLogger(folder.path) if config["logger"] == "tensorboard" and folder.writer else None
    try:
        result = (inference.fit_adversarial if adversarial else inference.fit)(
            model,
            train,
            val_data=valid if len(valid) else None,
            seed=config["seed"],
            device=config["device"],
            progress=config["progress"],
            **folder.engine_outputs(),
            **fit_kwargs,
        )
    finally:
        if logger is not None:
            logger.stop()
    if not folder.writer:
        return {"model": config["model"], "data": config["data"], "steps": result.steps}
    metrics = {
        "model": config["model"],
        "data": config["data"],
        "num_parameters": model.num_parameters(),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3),  # summed over the run's parts
        "stopped_early": result.stopped_early,
        **post_training_metrics(model, config, valid, test, guide=guide),
    }
    folder.write_metrics(metrics)
    plots.loss_curve(
        result.history, folder.path / "loss.png", val_losses=result.val_losses,
        title=f"{config['model']} on {config['data']}", **_loss_labels(model, len(train), len(valid), metrics),
    )
    samples = sample_figure(model, config, folder.path / "samples.png", test=test, guide=guide)
    if logger is not None:
        logger.final(metrics, samples)
    return metrics


def _loss_labels(model, num_train: int, num_valid: int, metrics: dict) -> dict:
    """What the curves of loss.png are. The engine's validation loss is the training objective
    on the validation split scaled to that split: for a model with global latents (a posterior
    q over parameters) its KL(q || prior) term is divided by the N_valid examples instead of
    the N_train of the training loss, so it sits above the training curve by about
    KL (1/N_valid - 1/N_train) besides any generalisation gap, and above the validation NLL of
    metrics.json, which has no KL term (the NLL at the point estimate, or importance-sampled)."""
    if isinstance(model, inference.Adversarial):
        return {}
    global_latents = bool(model.point_estimate())
    if global_latents:
        val_label = f"validation -ELBO per example (its KL term / {num_valid}; training: / {num_train})"
    else:
        val_label = "validation loss (the training objective per example)"
    out = {"val_label": val_label}
    nll = (metrics.get("valid") or {}).get("nll")
    if nll is not None:
        how = "at the point estimate" if getattr(model, "exact_density", True) else "importance-sampled"
        out["reference"] = (nll, f"final validation NLL, {how} (metrics.json)")
    return out


def guide_samples(model, guide, n: int, example: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``n`` samples of a zoo model at the median of the AutoGuide it was fitted with (the
    model's own ``sample`` uses its own guide's point estimate)."""
    if type(model).sample is not zoo.ZooModel.sample or not hasattr(guide, "median"):
        raise zoo.NoDensityError(f"{type(model).__name__} draws its samples by its own guide only")
    with torch.no_grad(), torch.random.fork_rng():
        point = guide.median(example, num_data=len(example))
        pyro.set_rng_seed(seed)
        return model.sample(n, point=point)


def _sample_quality(model, config: dict, progress: bool = True, guide=None, split: str = "test") -> dict:
    if sources.is_data_file(config["data"]):
        return {"sample_note": "sample-quality metrics need a built-in image data set (they use its labelled classifier)"}
    source = model
    if guide is not None:  # the samples at the guide's median, drawn here
        try:
            source = guide_samples(model, guide, 10_000, load_split(config, split).x[:2], seed=config.get("seed", 0))
        except zoo.NoDensityError as e:
            return {"sample_note": f"{e} (this run's guide is {config['guide']!r})"}
    return inference.sample_quality(
        source, config["data"], root=config.get("data_dir"), binarize=config.get("binarize", "threshold"),
        seed=config.get("seed", 0), split=split, progress=progress,
    )


def evaluate_run(workdir, split: str = "test") -> dict:
    """The metrics of a run folder's model on ``split`` (``zoo evaluate``), under the run's
    guide when it was trained with another than the model's own."""
    model, config = load_run(workdir)
    data = load_split(config, split)
    guide = load_guide(workdir, model, config, data.x[:2])
    metrics = inference.evaluate(model, data, guide=guide)
    metrics["sample_quality"] = _sample_quality(model, config, guide=guide, split=split)
    return metrics


def post_training_metrics(model, config: dict, valid, test, guide=None) -> dict:
    """The post-training metrics at the config's ``eval`` level: ``valid``/``test``
    (:func:`inference.evaluate`, bounded memory, a bar each) and ``sample_quality`` (FD, MMD,
    Parzen window and mode coverage of samples vs the test split; only with "all")."""
    level, progress = config.get("eval", "all"), config["progress"]
    if level == "none":
        return {"eval": "none"}
    options = dict(config.get("eval_options") or {})
    if guide is not None:
        options["guide"] = guide
    out = {
        "eval": level,
        "valid": inference.evaluate(model, valid, progress=progress, desc="evaluate valid", **options) if len(valid) else None,
        "test": inference.evaluate(model, test, progress=progress, desc="evaluate test", **options),
    }
    if level == "all":
        out["sample_quality"] = _sample_quality(model, config, progress=progress, guide=guide)
    return out


def _comparable(config: dict) -> dict:
    """The entries that make a run another run, in their stored form (a tuple of betas and the
    list config.json reads back are the same setting)."""
    return as_stored({k: v for k, v in config.items()
                      if k not in ("progress", "device", "data_dir", "logger", "eval", "eval_options")})


def load_run(workdir):
    """(model, config) of a run folder, with the parameters of its checkpoint."""
    folder = RunFolder(workdir)
    config = {**CONFIG, **folder.read_config()}
    model = build_model(config)
    state = folder.load_state()
    try:
        model.load_state_dict(state["modules"]["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise inference.CheckpointError(f"{folder.path} holds parameters of another model: {first}") from None
    return model, config


def load_guide(workdir, model, config: dict, example: torch.Tensor):
    """The run's AutoGuide with its checkpointed parameters, or None for a run with the
    model's own guide. ``example``: a few rows to set the guide up with (its parameters
    are created on a first call, then loaded)."""
    guide = make_guide(config, model)
    if guide is None:
        return None
    state = RunFolder(workdir).load_state()
    with torch.no_grad(), torch.random.fork_rng(), pyro.poutine.block():
        guide(example, num_data=len(example))
    try:
        guide.load_state_dict(state["modules"]["guide"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise inference.CheckpointError(
            f"{Path(workdir)} holds no parameters of its guide {config['guide']!r}: {first}") from None
    return guide


class TensorBoardLogger:
    """Mirrors a run's metrics.jsonl into TensorBoard events (``RUN_DIR/tensorboard``).

    A thread follows metrics.jsonl while the engine trains and writes each new record's
    scalars at its step (so TensorBoard shows the run live); :meth:`final` adds the final
    metrics and the sample grid. metrics.jsonl stays the record of the run.
    """

    def __init__(self, workdir: Path, poll: float = 1.0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--logger tensorboard needs the tensorboard package: pip install tensorboard "
                             "(or pip install pyro-zoo[tensorboard])") from None
        import threading

        self.log = workdir / METRICS
        self.writer = SummaryWriter(log_dir=str(workdir / "tensorboard"))
        self.seen = 0
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self):
        while not self._stop.wait(self.poll):
            self.flush()

    def flush(self):
        if not self.log.exists():
            return
        lines = self.log.read_text().splitlines()
        if len(lines) < self.seen:  # a resume truncated the log: its lines were written already
            self.seen = len(lines)
        for line in lines[self.seen:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line being written: read it next time
                break
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
            self.seen += 1
        self.writer.flush()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.flush()

    def final(self, metrics: dict, samples):
        step = metrics["steps"]
        for split in ("valid", "test"):
            for key, value in (metrics.get(split) or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{split}/{key}", value, step)
        for key, value in (metrics.get("sample_quality") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"samples/{key}", value, step)
        if samples is not None:
            import matplotlib.image

            image = matplotlib.image.imread(str(samples))[..., :3]
            self.writer.add_image("samples", image, step, dataformats="HWC")
        self.writer.close()


def sample_figure(model, config: dict, path, *, n: int = 64, test=None, seed: int = 0, guide=None):
    """Save ``n`` samples as an image grid (image data) or as frequencies (categorical);
    with ``guide`` (the run's, not the model's own), samples at its median."""
    pyro.set_rng_seed(seed)
    n = n if model.support != "categorical" else 10_000
    try:
        if guide is not None:
            if test is None:
                return None
            samples = guide_samples(model, guide, n, test.x[:2], seed=seed)
        else:
            samples = model.sample(n)
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
