"""Importing the zoo and the engine changes nothing in the user's process."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, random, sys
    import numpy as np, pyro, torch
    import matplotlib
    matplotlib.use("svg")  # the user's choice of backend, which nothing may switch

    def state():
        return {
            "pyro": {k: repr(v) for k, v in sorted(pyro.settings.get().items())},
            "torch": torch.get_rng_state().tolist()[:64] + [int(torch.initial_seed())],
            "numpy": np.random.get_state()[1][:8].tolist(),
            "python": random.getstate()[1][:8],
            "backend": str(matplotlib.rcParams._get_backend_or_none()),
            "validation": pyro.poutine.util.is_validation_enabled(),
            "param_store": len(pyro.get_param_store()),
            "threads": torch.get_num_threads(),
        }

    before = state()
    for name in sys.argv[1:]:
        __import__(name)
    after = state()
    print(json.dumps({k: (before[k], after[k]) for k in before if before[k] != after[k]}))
    """
)


def changed_by(*modules):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *modules], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_zoo_and_inference_changes_no_global_state():
    assert changed_by("zoo") == "{}"
    assert changed_by("inference") == "{}"
    assert changed_by("zoo", "inference", "inference.svi", "inference.loop", "inference.callbacks",
                      "inference.checkpoint", "inference.traced", "experiments.run_folder") == "{}"


def test_a_zoo_model_switches_module_local_params_only_inside_its_methods():
    import pyro

    import zoo

    assert pyro.settings.get("module_local_params") is False
    seen = []
    model = zoo.create("bernoulli", data_dim=3)
    real = type(model).__dict__["model"].__wrapped__

    def spy(self, *args, **kwargs):
        seen.append(pyro.settings.get("module_local_params"))
        return real(self, *args, **kwargs)

    import torch
    from zoo.base import local_params

    type(model).model = local_params(spy)
    try:
        model.log_prob(torch.ones(2, 3))
    finally:
        type(model).model = local_params(real)
    assert seen == [True] and pyro.settings.get("module_local_params") is False
    assert len(pyro.get_param_store()) == 0
