"""Shared fixtures: a clean Pyro state and seeded RNGs for every test."""
from pathlib import Path

import pyro
import pytest
import torch

import zoo  # noqa: F401  (module-local parameters)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def zoo_cache(tmp_path_factory):
    """Keep cached classifiers (sample-quality metrics) out of the user's home folder."""
    import os

    old = os.environ.get("ZOO_CACHE_DIR")
    os.environ["ZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("zoo-cache"))
    yield
    if old is None:
        os.environ.pop("ZOO_CACHE_DIR", None)
    else:
        os.environ["ZOO_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def clean_pyro():
    """Pyro's parameter store is global: clear it and seed before every test.

    The tests' tensors are small: one torch thread is faster than two, and on a loaded
    2-core machine two threads can be ~80x slower (measured on this project's machines).
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pyro.validation_enabled(True):
        yield
    torch.set_num_threads(threads)
    pyro.clear_param_store()


@pytest.fixture
def shared_data():
    """The real data sets beside the repository (../shared/data), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not present at {SHARED_DATA}")
    return SHARED_DATA
