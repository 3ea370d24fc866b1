"""The contract every model of the zoo keeps.

A zoo model is a :class:`~pyro.nn.PyroModule` with

* ``model(x, num_data=None)`` and ``guide(x, num_data=None)``: the Pyro model and its
  guide. ``x`` is a minibatch; ``num_data`` is the size of the full data set, so that
  :func:`data_plate` scales the likelihood of a minibatch to the whole data set.
  With ``x=None`` the model simulates ``num_data`` new data points.
* ``log_prob(x)``: log p(x) in nats, shape ``(batch,)``, at the current point estimate
  of the global parameters (:meth:`ZooModel.point_estimate`).
* ``sample(n)``: ``n`` draws from that same distribution, drawn ancestrally by running
  the model forward.
* ``num_parameters()``: the number of free parameters of the distribution, by the
  formula in the model's docstring.

Parameters live on the module (Pyro's ``module_local_params`` setting), so two models
never share values through Pyro's global parameter store. The setting is switched on
only inside the model's own methods (construction, ``model``, ``guide``, ``log_prob``,
...; see :meth:`ZooModel.__init_subclass__`), never for the whole process: a user's own
Pyro program runs exactly as it would without the zoo.

Nothing here depends on names: the observed sites are those with ``is_observed``, and
the data plate is :func:`data_plate`'s (any name the engine finds structurally).
"""
from __future__ import annotations

import functools
import inspect

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample

from zoo.data import DataError, check_binary

__all__ = ["NoDensityError", "ZooModel", "data_plate", "local_params", "observed_sites"]


def local_params(fn):
    """Run ``fn`` with Pyro's ``module_local_params`` on, restoring the caller's setting."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if pyro.settings.get("module_local_params"):
            return fn(*args, **kwargs)
        with pyro.settings.context(module_local_params=True):
            return fn(*args, **kwargs)

    wrapper.__zoo_local_params__ = True
    return wrapper


def observed_sites(trace) -> dict:
    """The observed sample sites of a trace (``is_observed``, subsample sites excluded), by name."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
    }


class NoDensityError(NotImplementedError):
    """Raised by ``log_prob`` of a model that defines no density over x."""


def data_plate(x: torch.Tensor | None, num_data: int | None = None) -> pyro.plate:
    """``pyro.plate("data")`` over the rows of the minibatch ``x``.

    The plate has ``num_data`` elements (default ``len(x)``) of which ``x`` holds a
    subsample, so Pyro scales the log-likelihood of ``x`` by ``num_data / len(x)``
    and the ELBO of a minibatch is unbiased for the full data set.
    When ``x`` is None the plate simply has ``num_data`` elements (for simulation).
    """
    if x is None:
        if num_data is None:
            raise ValueError("data_plate needs x or num_data")
        return pyro.plate("data", num_data)
    n = x.shape[0]
    size = n if num_data is None else num_data
    return pyro.plate("data", size, subsample=torch.arange(n, device=x.device))


class ZooModel(PyroModule):
    """Base class of the zoo's models (see the module docstring for the contract).

    Class attributes a subclass sets:

    * ``support``: ``"binary"`` (float 0/1 tensors of shape ``(batch, data_dim)``),
      ``"categorical"`` (int64 tensors of shape ``(batch,)``) or ``"real"``.
    * ``fit_defaults``: settings of :func:`inference.fit` this model trains well with
      (used where the caller gives none).
    * ``max_plate_nesting``: how many plates the model nests (1: only ``data``).
    * ``exact_density``: False where ``log_prob`` is an estimate (e.g. importance-sampled).
    * ``static_structure``: True declares that ``model`` and ``guide`` run the same
      operations every step (no Python control flow on values, no per-row parameters),
      so :func:`inference.fit` may replay a traced graph of the objective (its fast path).
    """

    support: str = "binary"
    fit_defaults: dict = {}
    #: the constructor's arguments (with defaults), recorded at construction: a resumed
    #: run checks them, so a checkpoint never silently changes a model's options
    options: dict = {}
    max_plate_nesting: int = 1
    exact_density: bool = True
    static_structure: bool = False
    data_dim: int
    num_categories: int | None = None

    def __init_subclass__(cls, **kwargs):
        """Every method a subclass defines runs with module-local parameters (and the
        constructor records :attr:`options`); the caller's Pyro settings are untouched."""
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not inspect.isfunction(value) or getattr(value, "__zoo_local_params__", False):
                continue
            if name.startswith("__") and name not in ("__init__", "__call__"):
                continue
            if name == "__init__":
                value = _recording_options(value)
            setattr(cls, name, local_params(value))

    # ----- the probabilistic program -------------------------------------------
    def model(self, x: torch.Tensor | None = None, num_data: int | None = None):
        raise NotImplementedError

    def guide(self, x: torch.Tensor | None = None, num_data: int | None = None):
        """The empty guide: right for fully observed models with no latent variables."""

    # ----- point estimate, density and simulation ------------------------------
    def point_estimate(self) -> dict[str, torch.Tensor]:
        """Point estimates of the global latent sites (e.g. posterior means).

        Empty for models whose global parameters are point estimates already.
        """
        return {}

    def _at_point_estimate(self):
        return poutine.condition(self.model, data=self.point_estimate())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, shape ``(batch,)``, at :meth:`point_estimate`.

        The default runs the model conditioned on the point estimate and reads the
        log-density of its observed site ``x``; models with local latent variables
        override it.
        """
        self.check_data(x)
        trace = poutine.trace(self._at_point_estimate()).get_trace(x)
        free = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        ]
        if free:
            raise NotImplementedError(
                f"{type(self).__name__} has latent sites {free}: it must override log_prob"
            )
        conditioned = set(self.point_estimate())
        sites = {k: v for k, v in observed_sites(trace).items() if k not in conditioned}
        if not sites:
            raise NotImplementedError(f"{type(self).__name__} has no observed site")
        return sum(site["fn"].log_prob(site["value"]) for site in sites.values())

    @torch.no_grad()
    def sample(self, n: int, point: dict | None = None) -> torch.Tensor:
        """``n`` draws from the model at :meth:`point_estimate`, by running it forward.

        The draws are the values of the model's observed site (the one site that is
        observed when the model is given data); a model with several overrides this.
        ``point`` gives the global latent sites' values instead (e.g. the median of an
        AutoGuide the model was fitted with).
        """
        model = self._at_point_estimate() if point is None else poutine.condition(self.model, data=point)
        trace = poutine.trace(model).get_trace(None, num_data=n)
        observed = [name for name in self._observed_names() if name in trace.nodes]
        if len(observed) != 1:
            raise NotImplementedError(
                f"{type(self).__name__} has observed sites {sorted(observed)}: it must override sample"
            )
        return trace.nodes[observed[0]]["value"]

    def _observed_names(self) -> set:
        """Names of the sites that are observed when the model sees data (found once)."""
        names = self.__dict__.get("_zoo_observed")
        if names is None:
            with poutine.block(), torch.random.fork_rng():
                probe = _example_data(self)
                trace = poutine.trace(self._at_point_estimate()).get_trace(probe)
            names = set(observed_sites(trace)) - set(self.point_estimate())
            self.__dict__["_zoo_observed"] = names
        return names

    def num_parameters(self) -> int:
        """The number of free parameters of the distribution (docstring formula)."""
        raise NotImplementedError

    # ----- evaluation hooks ----------------------------------------------------
    def evaluation_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """Extra metrics that :func:`inference.evaluate` reports (e.g. an ELBO)."""
        return {}

    # ----- input checks --------------------------------------------------------
    def check_data(self, x) -> None:
        """Raise :class:`~zoo.data.DataError` unless ``x`` is data this model accepts."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if self.support == "binary":
            if x.dim() != 2 or x.shape[1] != self.data_dim:
                raise DataError(
                    f"{name} expects binary data of shape (batch, {self.data_dim}), "
                    f"got shape {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise DataError(f"{name} expects a float tensor of 0/1, got {x.dtype}")
            check_binary(x, name="data")
        elif self.support == "categorical":
            if x.dim() != 1:
                raise DataError(
                    f"{name} expects categorical data of shape (batch,), "
                    f"got shape {tuple(x.shape)}"
                )
            if x.is_floating_point() or x.dtype == torch.bool:
                raise DataError(f"{name} expects an integer tensor, got {x.dtype}")
            if x.numel() and (x.min() < 0 or x.max() >= self.num_categories):
                raise DataError(
                    f"{name} expects categories in 0..{self.num_categories - 1}, "
                    f"got values in {int(x.min())}..{int(x.max())}"
                )

    @property
    def dims_per_example(self) -> int:
        """How many dimensions an example has (for bits per dimension)."""
        return 1 if self.support == "categorical" else self.data_dim

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters()}"


def _example_data(model: ZooModel) -> torch.Tensor:
    """Two data points of the model's support (for finding its structure)."""
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    if model.support == "categorical":
        return torch.zeros(2, dtype=torch.long, device=device)
    return torch.zeros(2, model.data_dim, device=device)


def _recording_options(init):
    """Wrap a constructor so that the outermost call records its arguments as ``options``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        outermost = "_zoo_recording" not in self.__dict__
        if outermost:
            object.__setattr__(self, "_zoo_recording", True)
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                del self.__dict__["_zoo_recording"]
        if outermost:
            try:
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                options = {k: _plain(v) for k, v in bound.arguments.items() if k != "self"}
            except TypeError:
                options = {}
            self.__dict__["options"] = options

    return wrapper


def _plain(value):
    """A value as numbers, strings, lists and dicts (to compare and to store in a checkpoint)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() <= 64:
        return value.tolist()
    return repr(value)
