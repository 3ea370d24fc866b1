"""The model registry: names -> model classes.

Built-in models are listed by import path and imported on first use, so that
``zoo.available()`` is cheap. Users add their own with :func:`register`::

    @zoo.register("my_model")
    class MyModel(zoo.ZooModel):
        ...
"""
from __future__ import annotations

import importlib
from typing import Callable

__all__ = ["UnknownNameError", "available", "create", "get", "register"]


class UnknownNameError(ValueError):
    """An unknown model (or other registered) name."""


# name -> "module:Class" (built-ins, imported lazily) or the class itself
_MODELS: dict[str, object] = {
    "bernoulli": "zoo.bernoulli:BetaBernoulli",
    "categorical": "zoo.categorical:DirichletCategorical",
    "independent": "zoo.independent:Independent",
    "full_joint": "zoo.full_joint:FullJoint",
    "markov": "zoo.markov:Markov",
    "fvsbn": "zoo.fvsbn:FVSBN",
    "nade": "zoo.nade:NADE",
    "made": "zoo.made:MADE",
    "mixture": "zoo.mixture:BernoulliMixture",
    "rgb_pixel": "zoo.rgb_pixel:RGBPixel",
    "gan": "zoo.gan:GAN",
    "vae": "zoo.vae:VAE",
    "vae2": "zoo.vae2:VAE2",
    "pixelcnn": "zoo.pixelcnn:PixelCNN",
    "autoencoder": "zoo.autoencoder:Autoencoder",
}


def register(name: str, cls: type | None = None) -> Callable | type:
    """Register a :class:`~zoo.base.ZooModel` subclass under ``name``.

    Use as a decorator (``@register("name")``) or call ``register("name", cls)``.
    """

    def add(cls: type) -> type:
        _MODELS[name] = cls
        cls.registered_name = name
        return cls

    return add if cls is None else add(cls)


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def get(name: str) -> type:
    """The model class registered under ``name``."""
    try:
        entry = _MODELS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model {name!r}; available models: {', '.join(available())}"
        ) from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        entry.registered_name = name
        _MODELS[name] = entry
    return entry


def create(name: str, **options):
    """Instantiate the model registered under ``name`` with its ``options``.

    Unknown options raise ``TypeError`` naming them (from the constructor).
    """
    cls = get(name)
    try:
        return cls(**options)
    except TypeError as e:
        if "unexpected keyword" in str(e) or "positional argument" in str(e):
            raise TypeError(f"bad option for model {name!r}: {e}") from None
        raise
