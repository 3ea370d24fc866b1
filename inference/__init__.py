"""Inference for the zoo: one SVI engine, evaluation and reference posteriors.

    >>> import zoo, inference
    >>> data = zoo.load("digits", "train")
    >>> model = zoo.create("bernoulli", data_dim=64)
    >>> result = inference.fit(model, data)          # SVI, defaults tuned per model
    >>> inference.evaluate(model, zoo.load("digits", "test"))
    {'nll': ..., 'bits_per_dim': ..., ...}
    >>> inference.fit(pyro_model, data, guide="auto_normal")   # any Pyro program

Importing it changes no global state (Pyro settings, random states, plotting backend).
"""
from inference.adversarial import Adversarial, AdversarialStep, fit_adversarial, fit_discriminator
from inference.callbacks import Callback
from inference.checkpoint import Checkpointer, CheckpointError, MetricLog, load_checkpoint, save_checkpoint
from inference.compare import RunRecord, compare_models, compare_runs
from inference.diagnostics import diagnose, posterior_distances, psis_khat, to_inference_data
from inference.evaluation import evaluate, exact_posterior, posterior
from inference.loop import DivergenceError, FitResult, Interrupted, Trainer
from inference.mcmc import ConvergenceWarning, MCMCResult, convergence, mcmc
from inference.metrics import sample_quality
from inference.objectives import OBJECTIVES, make_objective
from inference.sbc import SBCResult, sbc, sbc_exact, sbc_fitted_guide
from inference.svi import DEFAULTS, GUIDES, SVIStep, fit

__all__ = [
    "Adversarial",
    "AdversarialStep",
    "Callback",
    "CheckpointError",
    "Checkpointer",
    "GUIDES",
    "Interrupted",
    "MetricLog",
    "SVIStep",
    "Trainer",
    "ConvergenceWarning",
    "DEFAULTS",
    "DivergenceError",
    "FitResult",
    "MCMCResult",
    "OBJECTIVES",
    "SBCResult",
    "compare_models",
    "RunRecord",
    "compare_runs",
    "convergence",
    "diagnose",
    "evaluate",
    "exact_posterior",
    "fit",
    "fit_adversarial",
    "fit_discriminator",
    "load_checkpoint",
    "make_objective",
    "mcmc",
    "posterior",
    "posterior_distances",
    "psis_khat",
    "save_checkpoint",
    "sample_quality",
    "sbc",
    "sbc_exact",
    "sbc_fitted_guide",
    "to_inference_data",
]
