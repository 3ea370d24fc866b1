"""A zoo of generative models written as Pyro programs.

    >>> import zoo
    >>> zoo.available()
    [...]
    >>> model = zoo.create("bernoulli", data_dim=64)

Every model has ``model``/``guide`` (Pyro), ``log_prob``, ``sample`` and
``num_parameters``; :mod:`inference` trains, evaluates and diagnoses all of them.
"""
import pyro

# Parameters of a PyroModule live on the module, not in Pyro's global parameter store:
# two models with the same parameter names never share values, and any optimiser that
# takes ``module.parameters()`` trains them (Pyro's recommended PyTorch-style setting).
pyro.settings.set(module_local_params=True)

from zoo.base import NoDensityError, ZooModel, data_plate  # noqa: E402
from zoo.data import DATASETS, DataError, Dataset, load  # noqa: E402
from zoo.registry import UnknownNameError, available, create, get, register  # noqa: E402

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "NoDensityError",
    "UnknownNameError",
    "ZooModel",
    "available",
    "create",
    "data_plate",
    "get",
    "load",
    "register",
]
