"""Inference for the zoo: one SVI engine, evaluation and reference posteriors.

    >>> import zoo, inference
    >>> data = zoo.load("digits", "train")
    >>> model = zoo.create("bernoulli", data_dim=64)
    >>> result = inference.fit(model, data)          # SVI, defaults tuned per model
    >>> inference.evaluate(model, zoo.load("digits", "test"))
    {'nll': ..., 'bits_per_dim': ..., ...}
"""
import zoo  # noqa: F401  (sets Pyro's module-local parameters before any model is built)
from inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from inference.evaluation import evaluate, exact_posterior, posterior
from inference.loop import DivergenceError, FitResult, train_loop
from inference.objectives import OBJECTIVES, make_objective
from inference.svi import DEFAULTS, fit

__all__ = [
    "CheckpointError",
    "DEFAULTS",
    "DivergenceError",
    "FitResult",
    "OBJECTIVES",
    "evaluate",
    "exact_posterior",
    "fit",
    "load_checkpoint",
    "make_objective",
    "posterior",
    "save_checkpoint",
    "train_loop",
]
