"""Where a run's model and data come from: a registered name, or a user's own file.

Models: ``"vae"`` (registered, :func:`zoo.get`), ``"path/to/file.py:ClassName"`` or
``"package.module:ClassName"``. :func:`model_spec` turns a spec into its recorded form
(an absolute file path, or the module plus the folder it was imported from), so that a
run folder's ``config.json`` rebuilds the model from any working directory.

Data: a built-in name (:data:`zoo.DATASETS`) or a file ``.npz``, ``.npy``, ``.pt`` or
``.csv`` whose rows are data points. An ``.npz``/``.pt`` with entries ``train``, ``valid``
and ``test`` (or ``x_train``, ...) keeps that split; otherwise the rows are split 80/10/10
by a fixed permutation. What the values are decides the support: 0/1 values (2-D) are
``"binary"``, non-negative integers in one column are ``"categorical"``, anything else
(finite) is ``"real"``; :func:`check_support` compares it with the model's.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

import zoo

__all__ = ["DATA_SUFFIXES", "FileDataset", "check_support", "describe_model", "is_data_file",
           "load_data", "model_class", "model_spec"]

DATA_SUFFIXES = (".npz", ".npy", ".pt", ".csv")
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------
# models


def _split_spec(spec: str) -> tuple[str, str]:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"model {spec!r}: expected a registered name, path/to/file.py:Class or package.module:Class")
    return where, name


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def model_spec(spec: str) -> dict:
    """The recorded form of a model spec: ``{"model": ..., "model_path": ...}``.

    A file becomes its absolute path; a module records the folder it was imported from
    (added to ``sys.path`` when the run folder is loaded again).
    """
    if ":" not in spec:
        return {"model": spec}
    where, name = _split_spec(spec)
    if _is_file_spec(where):
        return {"model": f"{Path(where).expanduser().resolve()}:{name}"}
    module = _import_module(where, None)
    file = getattr(module, "__file__", None)
    root = None
    if file:
        root = Path(file).resolve().parent
        for _ in where.split(".")[1:]:
            root = root.parent
        if Path(file).name == "__init__.py":
            root = root.parent
    return {"model": spec, "model_path": str(root) if root else None}


def _import_module(name: str, path: str | None):
    for entry in ([path] if path else []) + [str(Path.cwd())]:  # as `python -m` would find it
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"cannot import module {name!r} for the model: {e}") from None


def _load_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    name = "zoo_user_" + re.sub(r"\W", "_", str(path.with_suffix("")))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"cannot load model file {path}: {type(e).__name__}: {e}") from e
    return module


def model_class(spec: str, model_path: str | None = None) -> type:
    """The model class of a spec (see the module docstring)."""
    if ":" not in spec:
        return zoo.get(spec)
    where, name = _split_spec(spec)
    module = _load_file(Path(where).expanduser()) if _is_file_spec(where) else _import_module(where, model_path)
    cls = getattr(module, name, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                 and v.__module__ == module.__name__]
        raise ValueError(f"{where} has no class {name!r}" + (f"; it defines {', '.join(found)}" if found else ""))
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and callable(getattr(cls, "model", None))):
        raise ValueError(f"{spec} is not a model: expected a zoo.ZooModel (a PyroModule with model and guide)")
    return cls


def constructor_options(cls: type) -> dict[str, object]:
    """name -> default (``inspect.Parameter.empty`` if required) of the class's constructor."""
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.default
    return out


def fill_options(cls: type, options: dict, data) -> dict:
    """``options`` plus the data's dimensions where the constructor takes them."""
    known = constructor_options(cls)
    options = dict(options)
    if "data_dim" in known and data.support != "categorical":
        options.setdefault("data_dim", data.dim)
    if "num_categories" in known and data.support == "categorical":
        options.setdefault("num_categories", data.num_categories)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    bad = sorted(set(options) - set(known)) if not takes_any else []
    if bad:
        raise ValueError(
            f"bad option for model {getattr(cls, 'registered_name', cls.__name__)!r}: {', '.join(bad)}; "
            f"valid options: {', '.join(known) or 'none'}"
        )
    missing = [k for k, v in known.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise ValueError(f"model {cls.__name__} needs the option(s) {', '.join(missing)} (-o {missing[0]}=...)")
    return options


def parameter_formula(cls: type) -> str | None:
    """The paragraph of a model's docstrings that states its parameter count."""
    doc = (sys.modules[cls.__module__].__doc__ or "") + "\n\n" + (cls.__doc__ or "")
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        text = " ".join(paragraph.split())
        if re.match(r"(Free )?[Pp]arameters?\b", text) and not text.startswith(":param"):
            return text.replace("**", "").replace("``", "")
    return None


def describe_model(spec: str) -> str:
    """What ``zoo info`` prints: docstrings, options with defaults, support, parameter count."""
    cls = model_class(spec)
    module_doc = inspect.cleandoc(sys.modules[cls.__module__].__doc__ or "")
    class_doc = inspect.cleandoc(cls.__doc__ or "")
    lines = [f"{spec}: {cls.__module__}.{cls.__qualname__}", ""]
    if module_doc and module_doc != class_doc:
        lines += [module_doc, ""]
    if class_doc:
        lines += [class_doc, ""]
    lines.append("options (zoo train ... -o KEY=VALUE):")
    for name, default in constructor_options(cls).items():
        shown = "required" if default is inspect.Parameter.empty else f"default {default!r}"
        auto = "  (set from the data)" if name in ("data_dim", "num_categories") else ""
        lines.append(f"  {name}: {shown}{auto}")
    lines.append(f"support: {getattr(cls, 'support', 'not declared')}")
    if getattr(cls, "fit_defaults", None):
        lines.append(f"training defaults: {cls.fit_defaults}")
    from inference.adversarial import Adversarial  # the protocol the adversarial trainer needs

    adversarial = isinstance(cls, type) and issubclass(cls, Adversarial)
    lines.append(f"trainer: {'inference.fit_adversarial (the adversarial game)' if adversarial else 'inference.fit (SVI)'}")
    formula = parameter_formula(cls)
    lines.append(f"parameter count: {formula or 'see num_parameters()'}")
    try:
        lines.append(f"  with the default options: {cls().num_parameters():,}")
    except Exception:  # required options, or no closed form
        pass
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# data


def is_data_file(name: str) -> bool:
    return isinstance(name, str) and name.lower().endswith(DATA_SUFFIXES)


@dataclasses.dataclass(frozen=True, eq=False)
class FileDataset(zoo.Dataset):
    """A :class:`zoo.Dataset` read from a user's file, which may also hold real values."""

    kind: str = "binary"

    @property
    def support(self) -> str:
        return self.kind

    def __post_init__(self) -> None:
        if self.kind == "real":
            return
        super().__post_init__()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """split (or "all") -> array, from one file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"all": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                entries = {k: f[k] for k in f.files}
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            entries = obj if isinstance(obj, dict) else {"all": obj}
            entries = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in entries.items()}
        else:  # csv: numbers separated by commas, an optional header line
            with open(path) as f:
                first = f.readline()
            skip = 0 if re.fullmatch(r"[\s\d.,eE+\-naif]*", first or "") else 1
            return {"all": np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)}
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise zoo.DataError(f"cannot read data file {path}: {' '.join(str(e).split())[:200]}") from None
    named = {}
    for split in SPLITS:
        for key in (split, f"x_{split}", f"{split}_x", "val" if split == "valid" else split, "validation" if split == "valid" else split):
            if key in entries:
                named[split] = entries[key]
                break
    if "train" in named:
        return named
    for key in ("x", "data", "all", "arr_0"):
        if key in entries:
            return {"all": entries[key]}
    if len(entries) == 1:
        return {"all": next(iter(entries.values()))}
    raise zoo.DataError(
        f"{path}: cannot tell the data apart from its entries {sorted(entries)}; "
        "name them train/valid/test, or x (all rows)"
    )


def _kind(x: np.ndarray, path: Path) -> str:
    if x.dtype == bool:
        return "binary"
    if not np.issubdtype(x.dtype, np.number):
        raise zoo.DataError(f"{path}: values must be numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise zoo.DataError(f"{path}: {bad} value(s) are NaN or infinite; data must be finite")
    if x.ndim == 1:
        if np.all(x == np.round(x)) and x.min() >= 0:
            return "categorical"
        return "real"
    if np.isin(x, (0, 1)).all():
        return "binary"
    return "real"


def _image_shape(dim: int, shape: tuple) -> tuple[int, int] | None:
    if len(shape) == 3:
        return tuple(int(s) for s in shape[1:])
    side = math.isqrt(dim)
    return (side, side) if side * side == dim and side > 1 else None


def load_data(path, split: str) -> FileDataset:
    """One split of a user's data file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise zoo.DataError(f"data file {path} not found (--data takes a data set name or a .npz/.npy/.pt/.csv file)")
    arrays = _arrays(path)
    if "all" in arrays:
        x = arrays["all"]
        if len(x) == 0:
            raise zoo.DataError(f"{path} holds no data points (0 rows)")
        order = np.random.default_rng(0).permutation(len(x))
        n_valid = n_test = len(x) // 10
        cut = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}
        x = x[np.sort(cut[split])]
    else:
        if split not in arrays:
            x = arrays["train"][:0]
        else:
            x = arrays[split]
        if split == "train" and len(x) == 0:
            raise zoo.DataError(f"{path}: the train entry holds no data points (0 rows)")
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:  # one column (a CSV of labels): one value per data point
        x = x[:, 0]
    if x.ndim not in (1, 2, 3):
        raise zoo.DataError(f"{path}: expected rows of data points (1-, 2- or 3-dimensional), got shape {x.shape}")
    shape = x.shape
    if x.ndim == 3:
        x = x.reshape(len(x), -1)
    kind = _kind(x, path) if x.size else ("categorical" if x.ndim == 1 else "binary")
    if kind == "categorical":
        t = torch.as_tensor(x.astype(np.int64))
        ref = np.asarray(arrays.get("train", arrays.get("all")))
        return FileDataset(name=str(path), split=split, x=t, y=None, image_shape=None,
                           num_categories=int(np.max(ref)) + 1, kind=kind)
    t = torch.as_tensor(x.astype(np.float32))
    return FileDataset(name=str(path), split=split, x=t, y=None, image_shape=_image_shape(t.shape[1], shape), kind=kind)


def check_support(cls: type, data, name: str) -> None:
    """Refuse data the model does not model, naming both."""
    wanted = getattr(cls, "support", None)
    if not isinstance(wanted, str) or wanted == data.support:
        return
    label = getattr(cls, "registered_name", cls.__name__)
    if wanted == "real" and data.support == "binary":
        return  # 0/1 values are real values too
    raise zoo.DataError(f"model {label!r} needs {wanted} data; {name!r} is {data.support}")
