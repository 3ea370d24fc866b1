"""A zoo of generative models written as Pyro programs.

    >>> import zoo
    >>> zoo.available()
    [...]
    >>> model = zoo.create("bernoulli", data_dim=64)

Every model has ``model``/``guide`` (Pyro), ``log_prob``, ``sample`` and
``num_parameters``; :mod:`inference` trains, evaluates and diagnoses all of them.
"""
# Importing the zoo changes no global state: a zoo model keeps its parameters on the module
# (Pyro's ``module_local_params``) by switching that setting on inside its own methods only
# (see zoo.base.ZooModel), so the user's own Pyro programs run exactly as without the zoo.
from zoo.base import NoDensityError, ZooModel, data_plate
from zoo.data import DATASETS, DataError, Dataset, load
from zoo.registry import UnknownNameError, available, create, get, register

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
