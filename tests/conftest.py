"""Shared fixtures: a clean Pyro state and seeded RNGs for every test."""
from pathlib import Path

import pyro
import pytest
import torch

import zoo  # noqa: F401  (module-local parameters)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def clean_pyro():
    """Pyro's parameter store is global: clear it and seed before every test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture
def shared_data():
    """The real data sets beside the repository (../shared/data), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not present at {SHARED_DATA}")
    return SHARED_DATA
