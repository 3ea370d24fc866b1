"""Binary image and categorical data sets for the model zoo.

Every loader returns a :class:`Dataset` holding one split (``"train"``,
``"valid"`` or ``"test"``) as torch tensors. Nothing is ever downloaded: the
embedded scikit-learn digits work offline everywhere, and the MNIST-family
files are read from a local data root (see :func:`data_root`).

Data sets (``DATASETS``)
------------------------
``digits``
    scikit-learn's ``load_digits``: 1797 images of 8x8 pixels with grey
    levels 0..16, labels 0..9. Embedded, always available. ``x`` has shape
    ``(N, 64)``.
``digits_labels``
    The digit labels of the same split as categorical data: ``x`` is an int64
    tensor of shape ``(N,)`` with values in 0..9, ``num_categories=10``,
    ``y=None`` (for Dirichlet-Categorical style models).
``mnist``, ``fashion_mnist``
    The standard IDX files in ``<root>/mnist/`` resp. ``<root>/fashion_mnist/``,
    gzipped or not: ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte[.gz]``. ``x`` has shape ``(N, 784)``, labels 0..9.
``binarized_mnist``
    Larochelle & Murray's (2011) fixed binarisation of MNIST, the standard
    likelihood benchmark: ``<root>/binarized_mnist/binarized_mnist_{train,
    valid,test}.amat[.gz]``, text with one image per line of 784 values
    ``0``/``1`` separated by single spaces. No labels (``y=None``).

Binarisation (``binarize=``)
----------------------------
``"threshold"`` (default)
    ``digits``: pixel = 1 iff grey level >= 8 (of 0..16).
    ``mnist``/``fashion_mnist``: pixel = 1 iff grey level >= 128 (of 0..255).
``"dynamic"``
    Each pixel ~ Bernoulli(grey / 16) for ``digits``, Bernoulli(grey / 255)
    for the MNIST IDX sets, as the dynamic-binarisation papers train
    (Salakhutdinov & Murray 2008; Burda et al. 2016, Table 1):

    * ``train``: a **fresh draw every epoch**. The dataset keeps its grey
      levels; :meth:`Dataset.for_epoch` ``(e)`` returns the ``(N, D)`` 0/1
      images of epoch ``e`` (same rows, same order), drawn from a
      ``torch.Generator`` seeded by ``(seed, e)`` (through
      ``numpy.random.SeedSequence([seed, e])``), so a resumed run sees the
      same images as an uninterrupted one. ``x`` is the epoch-0 draw.
    * ``valid`` and ``test``: binarised **once, with a fixed seed** that does
      not depend on ``seed`` (:data:`EVAL_BINARIZATION_SEEDS`: ``valid`` 1,
      ``test`` 0, i.e. ``for_epoch``'s draw of epoch 0 with seed 1 resp. 0),
      so every model and every training seed is scored on the same images.
      ``for_epoch`` returns ``x``.
``binarized_mnist`` is already binary and ``digits_labels`` is categorical:
both accept only the default ``"threshold"`` (a no-op) and reject
``"dynamic"``.

Splits (``SPLITS``)
-------------------
``digits``, ``digits_labels``
    A fixed permutation of the 1797 images
    (``numpy.random.RandomState(0).permutation(1797)``, independent of
    ``seed``): the first 1197 are ``train``, the next 300 ``valid``, the last
    300 ``test``.
``mnist``, ``fashion_mnist``
    ``test`` is the t10k file. The training file of ``n`` images is split in
    order: ``valid`` is its last ``n // 6`` images, ``train`` the rest, i.e.
    the usual 50,000 / 10,000 on the real 60,000-image file.
``binarized_mnist``
    The published files: 50,000 / 10,000 / 10,000.

Returned tensors are always fresh copies: mutating them never affects later
calls. The parsed files are cached in-process (keyed by path, size and
modification time), so repeated :func:`load` calls only pay for the copy and
the binarisation; :func:`clear_cache` empties the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import pathlib
import zlib
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "BINARIZE_OPTIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "DataError",
    "Dataset",
    "EVAL_BINARIZATION_SEEDS",
    "SPLITS",
    "check_binary",
    "clear_cache",
    "data_root",
    "load",
]

DATASETS: tuple[str, ...] = (
    "digits",
    "digits_labels",
    "mnist",
    "fashion_mnist",
    "binarized_mnist",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
BINARIZE_OPTIONS: tuple[str, ...] = ("threshold", "dynamic")
DATA_DIR_ENV = "ZOO_DATA_DIR"
DEFAULT_DATA_DIR = pathlib.Path("~/.cache/zoo/data")
#: seeds of the one dynamic binarisation of the held-out splits (independent of ``seed``)
EVAL_BINARIZATION_SEEDS = {"valid": 1, "test": 0}

PathLike = Union[str, os.PathLike]

# digits
_DIGITS_SPLIT_SIZES = {"train": 1197, "valid": 300, "test": 300}
_DIGITS_MAX_GREY = 16
_DIGITS_THRESHOLD = 8

# MNIST-family IDX files
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGE_MAGIC = 0x00000803
_IDX_LABEL_MAGIC = 0x00000801
_MNIST_SIDE = 28
_MNIST_MAX_GREY = 255
_MNIST_THRESHOLD = 128
_NUM_CLASSES = 10

# binarized MNIST text files
_AMAT_PIXELS = _MNIST_SIDE * _MNIST_SIDE
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data set cannot be loaded: missing or corrupt file, or a bad
    name/split/option. The message names the file or the bad value and, for
    bad values, the valid choices."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set.

    :param name: data set name, one of :data:`DATASETS`.
    :param split: one of :data:`SPLITS`.
    :param x: binary image data as a float32 tensor of shape ``(N, D)`` with
        values 0/1 (``D = prod(image_shape)``), or categorical data as an int64
        tensor of shape ``(N,)`` with values in ``0..num_categories-1``.
    :param y: int64 class labels of shape ``(N,)``, or ``None``.
    :param image_shape: ``(height, width)`` of an image, e.g. ``(8, 8)`` or
        ``(28, 28)``; ``None`` for categorical data.
    :param num_categories: number of categories of categorical data, else
        ``None``.
    :param grey: for a dynamically binarised training split, the grey levels
        (uint8 ``(N, D)``) that :meth:`for_epoch` draws from; else ``None``.
    :param max_grey: the grey level of probability 1 (16 or 255) with ``grey``.
    :param seed: the seed of the per-epoch draws with ``grey``.
    """

    name: str
    split: str
    x: torch.Tensor
    y: Optional[torch.Tensor]
    image_shape: Optional[tuple[int, ...]]
    num_categories: Optional[int] = None
    grey: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)
    max_grey: Optional[int] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        expected_ndim = 1 if self.num_categories is not None else 2
        if self.x.dim() != expected_ndim:
            raise DataError(
                f"{self.name}/{self.split}: x must have {expected_ndim} dims for "
                f"{self.support} data, got shape {tuple(self.x.shape)}"
            )
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise DataError(
                f"{self.name}/{self.split}: y has shape {tuple(self.y.shape)}, "
                f"expected ({self.x.shape[0]},)"
            )

        if self.grey is not None and self.grey.shape != self.x.shape:
            raise DataError(
                f"{self.name}/{self.split}: grey has shape {tuple(self.grey.shape)}, "
                f"expected {tuple(self.x.shape)}"
            )

    @property
    def dynamic(self) -> bool:
        """True if :meth:`for_epoch` draws fresh images every epoch."""
        return self.grey is not None

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """The ``(N, D)`` images to train on in epoch ``epoch`` (0-based).

        Dynamically binarised training data: a fresh float32 0/1 tensor, pixel
        ~ Bernoulli(grey / max_grey) from a generator seeded by
        ``(seed, epoch)``; the same rows in the same order every epoch, the
        same draw for the same epoch (``for_epoch(0)`` equals ``x``). Any other
        data set: ``x`` itself.
        """
        if self.grey is None:
            return self.x
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
            raise DataError(f"epoch must be a non-negative integer, got {epoch!r}")
        return _bernoulli_draw(self.grey, self.max_grey, self.seed, int(epoch))

    @property
    def support(self) -> str:
        """``"categorical"`` if ``num_categories`` is set, else ``"binary"``."""
        return "binary" if self.num_categories is None else "categorical"

    @property
    def dim(self) -> int:
        """Event size ``D`` of one data point (1 for categorical data)."""
        return 1 if self.x.dim() == 1 else self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, "
            f"x={tuple(self.x.shape)} {self.x.dtype}, "
            f"y={None if self.y is None else tuple(self.y.shape)}, "
            f"image_shape={self.image_shape}, num_categories={self.num_categories})"
        )


# ---------------------------------------------------------------------------
# public helpers


def data_root(root: Optional[PathLike] = None) -> pathlib.Path:
    """Directory holding the ``mnist/``, ``fashion_mnist/`` and
    ``binarized_mnist/`` folders.

    Resolution order: the explicit ``root``, then the ``ZOO_DATA_DIR``
    environment variable (if set and non-empty), then ``~/.cache/zoo/data``.
    ``~`` is expanded; the directory need not exist.
    """
    if root is None:
        root = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(root).expanduser()


def check_binary(x: torch.Tensor, name: str = "data") -> None:
    """Raise :class:`DataError` unless every element of ``x`` is 0 or 1.

    :param x: tensor of any shape and dtype.
    :param name: what ``x`` is, used in the message.
    """
    bad = ~((x == 0) | (x == 1))  # NaN counts as bad
    num_bad = int(bad.sum())
    if num_bad:
        example = x[bad].flatten()[0].item()
        raise DataError(
            f"{name} must be binary (all values 0 or 1), but {num_bad} of "
            f"{x.numel()} values are not (e.g. {example})"
        )


def clear_cache() -> None:
    """Forget all parsed files cached by :func:`load`."""
    _read_idx.cache_clear()
    _read_amat.cache_clear()
    _digits_arrays.cache_clear()


def load(
    name: str,
    split: str = "train",
    *,
    root: Optional[PathLike] = None,
    binarize: str = "threshold",
    seed: int = 0,
) -> Dataset:
    """Load one split of a data set.

    :param name: one of :data:`DATASETS`.
    :param split: one of :data:`SPLITS`.
    :param root: data root for the file-based sets (see :func:`data_root`);
        unused for ``digits`` and ``digits_labels``.
    :param binarize: ``"threshold"`` or ``"dynamic"`` (see the module
        docstring); ``binarized_mnist`` and ``digits_labels`` accept only
        ``"threshold"``.
    :param seed: with ``"dynamic"``, the seed of the training split's
        per-epoch draws (:meth:`Dataset.for_epoch`); the held-out splits use
        :data:`EVAL_BINARIZATION_SEEDS` whatever ``seed`` is.
    :returns: a :class:`Dataset` with freshly allocated tensors.
    :raises DataError: on a bad argument or a missing or corrupt file.
    """
    _check_choice("data set name", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("binarize option", binarize, BINARIZE_OPTIONS)
    if name in ("digits_labels", "binarized_mnist") and binarize != "threshold":
        raise DataError(
            f"{name} is {'categorical' if name == 'digits_labels' else 'already binary'}: "
            f"binarize must be 'threshold' (the default), got {binarize!r}"
        )
    if name == "digits":
        return _load_digits(split, binarize, seed)
    if name == "digits_labels":
        return _load_digits_labels(split)
    if name == "binarized_mnist":
        return _load_binarized_mnist(split, data_root(root))
    return _load_idx_dataset(name, split, data_root(root), binarize, seed)


# ---------------------------------------------------------------------------
# shared internals


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")


def _binarize(grey: np.ndarray, max_grey: int, threshold: int, binarize: str, split: str, seed: int) -> dict:
    """Binarise grey levels ``grey`` (uint8 array of shape ``(N, D)``): the
    :class:`Dataset` fields ``x`` (a fresh float32 ``(N, D)`` tensor of 0/1) and,
    for a dynamically binarised training split, ``grey``/``max_grey``/``seed``."""
    if binarize == "threshold":
        return dict(x=torch.from_numpy((grey >= threshold).astype(np.float32)))
    _check_seed(seed)
    levels = torch.from_numpy(np.array(grey, dtype=np.uint8))  # a writable copy
    if split in EVAL_BINARIZATION_SEEDS:  # held out: one draw with a fixed seed
        return dict(x=_bernoulli_draw(levels, max_grey, EVAL_BINARIZATION_SEEDS[split], 0))
    return dict(x=_bernoulli_draw(levels, max_grey, seed, 0), grey=levels, max_grey=max_grey, seed=seed)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")


def _bernoulli_draw(grey: torch.Tensor, max_grey: int, seed: int, epoch: int, chunk: int = 8192) -> torch.Tensor:
    """float32 ``(N, D)``: pixel = [u < grey / max_grey], u ~ U[0, 1) from a
    generator seeded by ``SeedSequence([seed, epoch])``, i.e. Bernoulli(grey / max_grey).

    Drawn in blocks of ``chunk`` rows from one generator (the same numbers as one
    draw), so the temporary memory is a few MB whatever N is.
    """
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    out = torch.empty(grey.shape, dtype=torch.float32)
    for rows, levels in zip(out.split(chunk), grey.split(chunk)):
        u = torch.rand(levels.shape, generator=generator)
        rows.copy_(u.mul_(max_grey) < levels)  # u * max < grey  <=>  u < grey / max
    return out


def _file_key(path: pathlib.Path) -> tuple[str, int, int]:
    """Cache key of a file: its path, size and modification time, so that a
    rewritten file is parsed again."""
    try:
        stat = path.stat()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return str(path), stat.st_size, stat.st_mtime_ns


def _read_bytes(path: str) -> bytes:
    """Content of ``path``, gunzipped if it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {e}") from e
    return raw


def _find_file(directory: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
    """``directory/stem`` or else ``directory/stem.gz``, whichever exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_file_error(name: str, directory: pathlib.Path, missing: str, expected: list[str]) -> DataError:
    files = ", ".join(f"{f}.gz" for f in expected)
    return DataError(
        f"{name}: file {missing!r} (or {missing + '.gz'!r}) not found in {directory}. "
        f"Put these files, gzipped or not, into that directory: {files}. "
        f"The data root {directory.parent} is taken from --data-dir (zoo train) or "
        f"load(..., root=...), else "
        f"the {DATA_DIR_ENV} environment variable, else {DEFAULT_DATA_DIR}. "
        f"Nothing is downloaded."
    )


# ---------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read-only grey levels ``(1797, 64)`` uint8 and labels ``(1797,)`` int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.data.astype(np.uint8)
    labels = digits.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _digits_indices(split: str) -> np.ndarray:
    """Row indices into ``load_digits()`` of a split, by the fixed permutation."""
    perm = np.random.RandomState(0).permutation(sum(_DIGITS_SPLIT_SIZES.values()))
    start = 0
    for s in SPLITS:
        stop = start + _DIGITS_SPLIT_SIZES[s]
        if s == split:
            return perm[start:stop]
        start = stop
    raise AssertionError(split)


def _load_digits(split: str, binarize: str, seed: int) -> Dataset:
    images, labels = _digits_arrays()
    idx = _digits_indices(split)
    fields = _binarize(images[idx], _DIGITS_MAX_GREY, _DIGITS_THRESHOLD, binarize, split, seed)
    y = torch.from_numpy(labels[idx])  # fancy indexing copies
    return Dataset("digits", split, y=y, image_shape=(8, 8), **fields)


def _load_digits_labels(split: str) -> Dataset:
    _, labels = _digits_arrays()
    x = torch.from_numpy(labels[_digits_indices(split)])
    return Dataset("digits_labels", split, x, None, image_shape=None, num_categories=_NUM_CLASSES)


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files


def _idx_header(raw: bytes, path: str, magic: int, ndim: int) -> tuple[int, ...]:
    """Check the magic number of an IDX file and return its dims."""
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header_size})")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise DataError(
            f"{path}: bad IDX magic number 0x{int(header[0]):08x}, expected 0x{magic:08x} "
            f"({'images' if ndim == 3 else 'labels'}, uint8, {ndim} dims)"
        )
    dims = tuple(int(d) for d in header[1:])
    expected = header_size + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX header with dims {dims} needs {expected} bytes, file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    return dims


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, size: int, mtime_ns: int, images: bool) -> np.ndarray:
    """Parse an uint8 IDX file of images, read-only ``(N, 784)``, or of
    labels, read-only ``(N,)``. ``size`` and ``mtime_ns`` only key the cache."""
    raw = _read_bytes(path)
    if not images:
        _idx_header(raw, path, _IDX_LABEL_MAGIC, 1)
        labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
        if labels.size and labels.max() >= _NUM_CLASSES:
            raise DataError(f"{path}: label {labels.max()} out of range 0..{_NUM_CLASSES - 1}")
        return labels
    n, rows, cols = _idx_header(raw, path, _IDX_IMAGE_MAGIC, 3)
    if (rows, cols) != (_MNIST_SIDE, _MNIST_SIDE):
        raise DataError(f"{path}: images are {rows}x{cols}, expected {_MNIST_SIDE}x{_MNIST_SIDE}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def _read_idx_pair(name: str, directory: pathlib.Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 784)`` and labels ``(N,)`` (read-only uint8) of the
    ``"train"`` or ``"test"`` (t10k) files of ``directory``."""
    expected = [stem for pair in _IDX_FILES.values() for stem in pair]
    paths = []
    for stem in _IDX_FILES[part]:
        path = _find_file(directory, stem)
        if path is None:
            raise _missing_file_error(name, directory, stem, expected)
        paths.append(path)
    image_path, label_path = paths
    images = _read_idx(*_file_key(image_path), images=True)
    labels = _read_idx(*_file_key(label_path), images=False)
    if len(images) != len(labels):
        raise DataError(f"{label_path}: has {len(labels)} labels but {image_path} has {len(images)} images")
    return images, labels


def _load_idx_dataset(name: str, split: str, root: pathlib.Path, binarize: str, seed: int) -> Dataset:
    images, labels = _read_idx_pair(name, root / name, "test" if split == "test" else "train")
    if split != "test":
        num_valid = len(images) // 6
        rows = slice(len(images) - num_valid, None) if split == "valid" else slice(0, len(images) - num_valid)
        images, labels = images[rows], labels[rows]
    fields = _binarize(images, _MNIST_MAX_GREY, _MNIST_THRESHOLD, binarize, split, seed)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(name, split, y=y, image_shape=(_MNIST_SIDE, _MNIST_SIDE), **fields)


# ---------------------------------------------------------------------------
# binarized MNIST text files

_NEWLINE, _SPACE, _CR, _ZERO, _ONE = (ord(c) for c in "\n \r01")


def _invalid_amat_chars(data: np.ndarray) -> np.ndarray:
    """Mask ``(B,)`` of the bytes of ``data`` (uint8 ``(B,)``) other than
    ``'0'``, ``'1'``, space, newline and carriage return."""
    whitespace = (data == _SPACE) | (data == _NEWLINE) | (data == _CR)
    return (data > _ONE) | ((data < _ZERO) & ~whitespace)


def _line_of(data: np.ndarray, position: int) -> int:
    """1-based line number of byte ``position`` of ``data``."""
    return int(np.count_nonzero(data[:position] == _NEWLINE)) + 1


@functools.lru_cache(maxsize=4)
def _read_amat(path: str, size: int, mtime_ns: int) -> np.ndarray:
    """Parse a binarized-MNIST ``.amat`` text file into a read-only uint8
    array ``(N, 784)`` of 0/1. ``size`` and ``mtime_ns`` only key the cache.

    Vectorised with numpy, no per-line Python loop (about 1 s for the
    gzipped 50,000-line training file). Values are single ``0``/``1`` characters
    separated by spaces; CR LF line ends are accepted and blank lines at
    the end of the file are ignored.
    """
    data = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    invalid = _invalid_amat_chars(data)
    if invalid.any():
        pos = int(np.argmax(invalid))
        raise DataError(
            f"{path}, line {_line_of(data, pos)}: invalid character {chr(data[pos])!r}; "
            f"only '0', '1', spaces and newlines may occur"
        )
    is_value = data >= _ZERO  # only '0' and '1' are left above the whitespace
    glued = np.flatnonzero(is_value[:-1] & is_value[1:])
    if glued.size:
        raise DataError(
            f"{path}, line {_line_of(data, int(glued[0]))}: values must be single '0'/'1' "
            f"characters separated by spaces"
        )
    counts = _values_per_line(data, is_value)
    nonblank = np.flatnonzero(counts)
    if not nonblank.size:
        raise DataError(f"{path}: contains no images")
    counts = counts[: nonblank[-1] + 1]  # drop trailing blank lines
    wrong = np.flatnonzero(counts != _AMAT_PIXELS)
    if wrong.size:
        line = int(wrong[0])
        raise DataError(f"{path}, line {line + 1}: {counts[line]} values, expected {_AMAT_PIXELS}")
    pixels = (data[is_value] - np.uint8(_ZERO)).reshape(len(counts), _AMAT_PIXELS)
    pixels.flags.writeable = False
    return pixels


def _values_per_line(data: np.ndarray, is_value: np.ndarray) -> np.ndarray:
    """Number of values on each line of the text ``data`` (uint8 ``(B,)``),
    given the mask ``is_value`` (bool ``(B,)``). Returns int64 ``(lines,)``;
    a last line without a newline counts as a line."""
    line_ends = np.flatnonzero(data == _NEWLINE)
    if data.size and data[-1] != _NEWLINE:
        line_ends = np.append(line_ends, data.size - 1)
    if not line_ends.size:
        return np.zeros(0, dtype=np.int64)
    lengths = np.diff(line_ends, prepend=-1)
    if (lengths == lengths[0]).all():  # the usual case: a (lines, length) grid
        return np.count_nonzero(is_value.reshape(-1, lengths[0]), axis=1).astype(np.int64)
    value_positions = np.flatnonzero(is_value)
    return np.diff(np.searchsorted(value_positions, line_ends + 1), prepend=0)


def _load_binarized_mnist(split: str, root: pathlib.Path) -> Dataset:
    directory = root / "binarized_mnist"
    stem = f"binarized_mnist_{split}.amat"
    path = _find_file(directory, stem)
    if path is None:
        expected = [f"binarized_mnist_{s}.amat" for s in SPLITS]
        raise _missing_file_error("binarized_mnist", directory, stem, expected)
    pixels = _read_amat(*_file_key(path))
    x = torch.from_numpy(pixels.astype(np.float32))
    return Dataset("binarized_mnist", split, x, None, image_shape=(_MNIST_SIDE, _MNIST_SIDE))
