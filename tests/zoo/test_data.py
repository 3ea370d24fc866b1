"""Tests of ``zoo.data``: tiny IDX and amat files written into ``tmp_path``,
the embedded digits, and (when present) the real files in ``../shared/data``.
Nothing here uses the network."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from zoo import data as zd
from zoo.data import DataError, check_binary, data_root, load

SHARED_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No user data root and no parsed files leak into or out of a test."""
    monkeypatch.delenv(zd.DATA_DIR_ENV, raising=False)
    zd.clear_cache()
    yield
    zd.clear_cache()


# ---------------------------------------------------------------------------
# file writers


def _write(path: pathlib.Path, payload: bytes, gz: bool) -> pathlib.Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def idx_images_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    """IDX payload of uint8 ``images`` of shape ``(N, H, W)``."""
    header = np.array([magic, *images.shape], dtype=">u4").tobytes()
    return header + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray, magic: int = 0x00000801) -> bytes:
    """IDX payload of uint8 ``labels`` of shape ``(N,)``."""
    return np.array([magic, len(labels)], dtype=">u4").tobytes() + labels.astype(np.uint8).tobytes()


def write_idx_set(directory: pathlib.Path, num_train: int = 12, num_test: int = 5, gz: bool = True, seed: int = 0):
    """Write the four IDX files of random grey images; return their arrays."""
    rng = np.random.RandomState(seed)
    arrays = {}
    for part, n in (("train", num_train), ("t10k", num_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        images[:, 0, 0], images[:, 0, 1] = 0, 255  # known pixels for the dynamic test
        labels = rng.randint(0, 10, size=n).astype(np.uint8)
        _write(directory / f"{part}-images-idx3-ubyte", idx_images_bytes(images), gz)
        _write(directory / f"{part}-labels-idx1-ubyte", idx_labels_bytes(labels), gz)
        arrays[part] = images.reshape(n, 784), labels
    return arrays


def amat_bytes(images: np.ndarray, newline: str = "\n") -> bytes:
    """Text payload of a binarized-MNIST file of 0/1 ``images`` of shape ``(N, 784)``."""
    lines = (" ".join(str(int(v)) for v in row) for row in images)
    return "".join(line + newline for line in lines).encode()


def random_binary(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(n, 784) < 0.3).astype(np.uint8)


# ---------------------------------------------------------------------------
# arguments, helpers


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(name="cifar10"), "'cifar10'"),
        (dict(name="digits", split="validation"), "'validation'"),
        (dict(name="digits", binarize="stochastic"), "'stochastic'"),
    ],
)
def test_unknown_arguments(kwargs, bad):
    with pytest.raises(DataError, match="valid choices") as info:
        load(**kwargs)
    assert bad in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_name_lists_all_datasets():
    with pytest.raises(DataError) as info:
        load("MNIST")
    for name in zd.DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["binarized_mnist", "digits_labels"])
def test_dynamic_rejected_where_meaningless(name, tmp_path):
    with pytest.raises(DataError, match="'threshold'"):
        load(name, binarize="dynamic", root=tmp_path)


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "zoo" / "data"
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root(str(tmp_path)) == tmp_path


def test_env_var_is_used_by_load(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    assert len(load("mnist", "test")) == 5


def test_check_binary():
    check_binary(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    check_binary(torch.tensor([0, 1, 1]))
    check_binary(torch.zeros(0, 3))
    with pytest.raises(DataError, match=r"my_x .*3 of 4 values"):
        check_binary(torch.tensor([0.5, 1.0, 2.0, float("nan")]), name="my_x")


# ---------------------------------------------------------------------------
# digits


def test_digits_splits_are_fixed_disjoint_and_cover_everything():
    indices = {split: zd._digits_indices(split) for split in zd.SPLITS}
    assert {s: len(i) for s, i in indices.items()} == {"train": 1197, "valid": 300, "test": 300}
    everything = np.concatenate(list(indices.values()))
    assert np.array_equal(np.sort(everything), np.arange(1797))  # disjoint and complete
    np.testing.assert_array_equal(indices["train"], np.random.RandomState(0).permutation(1797)[:1197])

    digits = load_digits()
    for split, idx in indices.items():
        ds = load("digits", split, seed=123)  # the split does not depend on seed
        assert (ds.name, ds.split, len(ds), ds.dim) == ("digits", split, len(idx), 64)
        assert ds.x.dtype == torch.float32 and ds.x.shape == (len(idx), 64)
        assert ds.y.dtype == torch.int64
        assert ds.image_shape == (8, 8) and ds.num_categories is None and ds.support == "binary"
        np.testing.assert_array_equal(ds.y.numpy(), digits.target[idx])
        np.testing.assert_array_equal(ds.x.numpy(), (digits.data[idx] >= 8).astype(np.float32))


def test_digits_dynamic_binarisation():
    a = load("digits", "train", binarize="dynamic", seed=1)
    b = load("digits", "train", binarize="dynamic", seed=1)
    c = load("digits", "train", binarize="dynamic", seed=2)
    check_binary(a.x)
    assert a.x.dtype == torch.float32 and a.x.shape == (1197, 64)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert torch.equal(a.y, c.y)
    grey = load_digits().data[zd._digits_indices("train")]
    assert abs(a.x.mean().item() - grey.mean() / 16) < 0.01
    assert not a.x[:, grey.max(axis=0) == 0].any()  # grey 0 never turns on


def test_digits_labels():
    ds = load("digits_labels", "valid")
    assert ds.x.dtype == torch.int64 and ds.x.shape == (300,)
    assert 0 <= ds.x.min() and ds.x.max() <= 9
    assert ds.y is None and ds.image_shape is None
    assert (ds.num_categories, ds.support, ds.dim, len(ds)) == (10, "categorical", 1, 300)
    assert torch.equal(ds.x, load("digits", "valid").y)


def test_returned_tensors_are_fresh():
    first = load("digits", "test")
    first.x.fill_(7.0)
    first.y.fill_(7)
    second = load("digits", "test")
    check_binary(second.x)
    assert not (second.y == 7).all()


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_load(tmp_path, name, gz):
    arrays = write_idx_set(tmp_path / name, num_train=12, num_test=5, gz=gz)
    train_images, train_labels = arrays["train"]
    # valid = last 1/6 of the training file (10,000 of 60,000 on real data)
    expected = {
        "train": (train_images[:10], train_labels[:10]),
        "valid": (train_images[10:], train_labels[10:]),
        "test": arrays["t10k"],
    }
    for split, (images, labels) in expected.items():
        ds = load(name, split, root=tmp_path)
        assert (ds.name, ds.split, ds.image_shape, ds.dim, ds.support) == (name, split, (28, 28), 784, "binary")
        assert ds.x.dtype == torch.float32 and ds.x.shape == (len(images), 784)
        assert ds.y.dtype == torch.int64
        np.testing.assert_array_equal(ds.x.numpy(), (images >= 128).astype(np.float32))
        np.testing.assert_array_equal(ds.y.numpy(), labels)


def test_idx_dynamic_binarisation(tmp_path):
    write_idx_set(tmp_path / "mnist", num_train=60)
    a = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=0)
    b = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=0)
    c = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=1)
    check_binary(a.x)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert (a.x[:, 0] == 0).all() and (a.x[:, 1] == 1).all()  # grey 0 and 255
    assert abs(a.x.mean().item() - 0.5) < 0.02  # uniform grey levels (sd of the mean ~0.0023)


# ---------------------------------------------------------------------------
# dynamic binarisation: a fresh draw per epoch for training, one fixed draw held out


def test_dynamic_train_draws_afresh_every_epoch(tmp_path):
    arrays = write_idx_set(tmp_path / "mnist", num_train=60)
    ds = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=3)
    assert ds.dynamic and ds.grey.dtype == torch.uint8
    np.testing.assert_array_equal(ds.grey.numpy(), arrays["train"][0][:50])  # rows in order
    epochs = [ds.for_epoch(e) for e in range(4)]
    assert torch.equal(epochs[0], ds.x)  # x is the epoch-0 draw
    for x in epochs:
        check_binary(x)
        assert x.dtype == torch.float32 and x.shape == (50, 784)
        assert (x[:, 0] == 0).all() and (x[:, 1] == 1).all()  # grey 0 never, 255 always on
    for i in range(4):
        for j in range(i + 1, 4):  # ~ 2/9 of 39,200 pixels differ between two draws
            assert (epochs[i] != epochs[j]).float().mean() > 0.1
    # the same (seed, epoch) gives the same draw: in a new process-state, after other draws
    again = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=3)
    torch.manual_seed(123)
    assert torch.equal(again.for_epoch(2), epochs[2]) and torch.equal(ds.for_epoch(2), epochs[2])
    other_seed = load("mnist", "train", root=tmp_path, binarize="dynamic", seed=4)
    assert (other_seed.for_epoch(2) != epochs[2]).float().mean() > 0.1


def test_dynamic_draws_match_the_grey_levels():
    ds = load("digits", "train", binarize="dynamic", seed=0)
    probs = ds.grey.double() / 16
    draws = torch.stack([ds.for_epoch(e).double() for e in range(200)])  # (200, 1197, 64)
    # per pixel: the frequency over 200 epochs has sd <= 0.5 / sqrt(200) = 0.035
    assert (draws.mean(0) - probs).abs().max() < 0.035 * 6
    # overall: 200 x 76,608 draws, sd of the mean < 1.3e-4
    assert abs(float(draws.mean() - probs.mean())) < 2e-3
    assert not draws[:, probs == 0].any() and draws[:, probs == 1].all()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_dynamic_held_out_splits_are_one_fixed_draw(tmp_path, split):
    write_idx_set(tmp_path / "mnist", num_train=60)
    a = load("mnist", split, root=tmp_path, binarize="dynamic", seed=0)
    b = load("mnist", split, root=tmp_path, binarize="dynamic", seed=11)  # the seed is not used
    check_binary(a.x)
    assert torch.equal(a.x, b.x)
    assert not a.dynamic and a.for_epoch(5) is a.x
    # the documented fixed seed: the draw of epoch 0 of a training split with that seed
    grey = torch.from_numpy(np.array(zd._read_idx_pair("mnist", tmp_path / "mnist", "test" if split == "test" else "train")[0]))
    grey = grey if split == "test" else grey[50:]
    expected = zd._bernoulli_draw(grey, 255, zd.EVAL_BINARIZATION_SEEDS[split], 0)
    assert torch.equal(a.x, expected)


def test_static_data_for_epoch_is_x():
    ds = load("digits", "train")
    assert not ds.dynamic and ds.for_epoch(0) is ds.x and ds.for_epoch(7) is ds.x


def test_dynamic_draw_is_blockwise_invariant():
    grey = torch.randint(0, 256, (100, 30), dtype=torch.uint8)
    whole = zd._bernoulli_draw(grey, 255, 5, 2, chunk=1000)
    assert torch.equal(zd._bernoulli_draw(grey, 255, 5, 2, chunk=7), whole)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_dynamic_bad_epoch_or_seed(bad):
    ds = load("digits", "train", binarize="dynamic")
    with pytest.raises(DataError, match="epoch"):
        ds.for_epoch(bad)
    with pytest.raises(DataError, match="seed"):
        load("digits", "train", binarize="dynamic", seed=bad)


def test_idx_cache_and_rewrite(tmp_path):
    write_idx_set(tmp_path / "mnist", num_test=5)
    assert len(load("mnist", "test", root=tmp_path)) == 5
    hits = zd._read_idx.cache_info().hits
    assert len(load("mnist", "test", root=tmp_path)) == 5
    assert zd._read_idx.cache_info().hits == hits + 2  # images and labels
    write_idx_set(tmp_path / "mnist", num_test=7)  # a rewritten file is parsed again
    assert len(load("mnist", "test", root=tmp_path)) == 7


def test_idx_missing_files(tmp_path):
    with pytest.raises(DataError) as info:
        load("fashion_mnist", "test", root=tmp_path)
    message = str(info.value)
    for stem in IDX_NAMES:
        assert stem in message
    assert str(tmp_path / "fashion_mnist") in message
    assert "root=" in message and "ZOO_DATA_DIR" in message


def test_idx_missing_labels_only(tmp_path):
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load("mnist", "train", root=tmp_path)) == 10  # only the needed files are read
    with pytest.raises(DataError, match="'t10k-labels-idx1-ubyte'"):
        load("mnist", "test", root=tmp_path)


def _corrupt_images(images: np.ndarray) -> dict[str, tuple[bytes, str]]:
    good = idx_images_bytes(images)
    return {
        "bad magic": (idx_images_bytes(images, magic=0x00000801), "magic"),
        "truncated": (good[:-10], "truncated"),
        "trailing data": (good + b"\0", "trailing"),
        "wrong dims": (idx_images_bytes(images.reshape(len(images), 784, 1)), "784x1"),
        "header only": (good[:7], "truncated"),
    }


@pytest.mark.parametrize("case", ["bad magic", "truncated", "trailing data", "wrong dims", "header only"])
def test_idx_corrupt_images(tmp_path, case):
    arrays = write_idx_set(tmp_path / "mnist", num_test=3)
    payload, pattern = _corrupt_images(arrays["t10k"][0].reshape(3, 28, 28))[case]
    path = _write(tmp_path / "mnist" / "t10k-images-idx3-ubyte", payload, gz=True)
    with pytest.raises(DataError, match=pattern) as info:
        load("mnist", "test", root=tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["bad magic", "wrong count", "label out of range", "truncated"])
def test_idx_corrupt_labels(tmp_path, case):
    write_idx_set(tmp_path / "mnist", num_test=3, gz=False)
    payload = {
        "bad magic": idx_labels_bytes(np.zeros(3), magic=0x00000803),
        "wrong count": idx_labels_bytes(np.zeros(4)),
        "label out of range": idx_labels_bytes(np.array([0, 10, 1])),
        "truncated": idx_labels_bytes(np.zeros(3))[:-1],
    }[case]
    path = _write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", payload, gz=False)
    with pytest.raises(DataError) as info:
        load("mnist", "test", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_corrupt_gzip(tmp_path):
    write_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="cannot read") as info:
        load("mnist", "valid", root=tmp_path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------
# binarized MNIST text files


def _amat_path(root: pathlib.Path, split: str) -> pathlib.Path:
    return root / "binarized_mnist" / f"binarized_mnist_{split}.amat"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_amat_load(tmp_path, gz, newline):
    images = random_binary(4)
    _write(_amat_path(tmp_path, "valid"), amat_bytes(images, newline), gz)
    ds = load("binarized_mnist", "valid", root=tmp_path)
    assert (ds.name, ds.split, ds.image_shape, ds.y, ds.dim) == ("binarized_mnist", "valid", (28, 28), None, 784)
    assert ds.x.dtype == torch.float32 and ds.x.shape == (4, 784)
    np.testing.assert_array_equal(ds.x.numpy(), images)


@pytest.mark.parametrize("ending", ["no final newline", "trailing blank lines"])
def test_amat_line_endings(tmp_path, ending):
    images = random_binary(3)
    payload = amat_bytes(images)
    payload = payload[:-1] if ending == "no final newline" else payload + b"\n \n"
    _write(_amat_path(tmp_path, "test"), payload, gz=False)
    np.testing.assert_array_equal(load("binarized_mnist", "test", root=tmp_path).x.numpy(), images)


def test_amat_ragged_whitespace(tmp_path):
    images = random_binary(3)
    lines = amat_bytes(images).split(b"\n")
    lines[1] = lines[1] + b" "  # line lengths differ: the general counting path
    _write(_amat_path(tmp_path, "train"), b"\n".join(lines), gz=False)
    np.testing.assert_array_equal(load("binarized_mnist", root=tmp_path).x.numpy(), images)


def _corrupt_amat(images: np.ndarray) -> dict[str, tuple[bytes, str]]:
    lines = amat_bytes(images).split(b"\n")
    two = list(lines)
    two[1] = two[1][:-1] + b"2"
    short = list(lines)
    short[2] = short[2][:-2]
    long = list(lines)
    long[0] = long[0] + b" 1"
    glued = list(lines)
    glued[1] = glued[1][:-2] + b"1"  # "0 1" -> "01"
    comma = list(lines)
    comma[2] = comma[2].replace(b" ", b",", 1)
    return {
        "digit 2": (b"\n".join(two), r"line 2: invalid character '2'"),
        "783 values": (b"\n".join(short), "line 3: 783 values, expected 784"),
        "785 values": (b"\n".join(long), "line 1: 785 values"),
        "glued values": (b"\n".join(glued), "line 2: values must be single"),
        "comma": (b"\n".join(comma), "line 3: invalid character ','"),
        "blank line inside": (b"\n".join(lines[:1] + [b""] + lines[1:]), "line 2: 0 values"),
        "empty": (b"", "no images"),
    }


@pytest.mark.parametrize(
    "case", ["digit 2", "783 values", "785 values", "glued values", "comma", "blank line inside", "empty"]
)
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_amat_corrupt(tmp_path, case, gz):
    payload, pattern = _corrupt_amat(random_binary(3))[case]
    path = _write(_amat_path(tmp_path, "train"), payload, gz)
    with pytest.raises(DataError, match=pattern) as info:
        load("binarized_mnist", "train", root=tmp_path)
    assert str(path) in str(info.value)


def test_amat_missing_files(tmp_path):
    _write(_amat_path(tmp_path, "train"), amat_bytes(random_binary(2)), gz=True)
    assert len(load("binarized_mnist", "train", root=tmp_path)) == 2
    with pytest.raises(DataError) as info:
        load("binarized_mnist", "test", root=tmp_path)
    message = str(info.value)
    for split in zd.SPLITS:
        assert f"binarized_mnist_{split}.amat" in message
    assert str(tmp_path / "binarized_mnist") in message
    assert "root=" in message and "ZOO_DATA_DIR" in message


def test_amat_plain_file_preferred_and_fresh_tensors(tmp_path):
    plain, packed = random_binary(2, seed=1), random_binary(2, seed=2)
    _write(_amat_path(tmp_path, "valid"), amat_bytes(plain), gz=False)
    _write(_amat_path(tmp_path, "valid"), amat_bytes(packed), gz=True)
    ds = load("binarized_mnist", "valid", root=tmp_path)
    np.testing.assert_array_equal(ds.x.numpy(), plain)
    ds.x.zero_()
    np.testing.assert_array_equal(load("binarized_mnist", "valid", root=tmp_path).x.numpy(), plain)


# ---------------------------------------------------------------------------
# real files (development machines only)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data sets not available at {SHARED_DATA}")
def test_real_files():
    ds = load("binarized_mnist", "valid", root=SHARED_DATA)
    assert ds.x.shape == (10000, 784) and ds.y is None
    assert abs(ds.x.mean().item() - 0.1311) < 5e-4  # per ../shared/data/README.md
    check_binary(ds.x)

    ds = load("mnist", "test", root=SHARED_DATA)
    assert ds.x.shape == (10000, 784) and ds.y.shape == (10000,)
    assert torch.equal(torch.bincount(ds.y, minlength=10) > 0, torch.ones(10, dtype=torch.bool))
    check_binary(ds.x)
    assert 0.1 < ds.x.mean().item() < 0.2
