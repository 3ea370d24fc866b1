"""Data-parallel training: 2 CPU processes under torchrun (gloo) follow the 1-process run.

The model is fully observed (no guide draws), so the only difference between one process
on the global batch and two processes on its halves is the order of float summation:
the parameters must agree to float tolerance. Each rank must see its own half of every
global batch, rank 0 alone writes the run folder, and a run killed on all ranks resumes
from rank 0's checkpoint to the same parameters as the uninterrupted 2-process run.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from inference.checkpoint import CHECKPOINT, METRICS
from inference.loop import batch_indices

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is needed"
)

WORKER = textwrap.dedent(
    '''
    """Fit a small fully observed sigmoid belief net; run directly or under torchrun."""
    import json, os, sys
    import pyro, pyro.distributions as dist, torch
    from pyro.nn import PyroParam
    import inference, zoo
    from inference import loop
    from zoo.base import ZooModel, data_plate

    N, D, STEPS, BATCH = 96, 5, 20, 32


    class Logistic(ZooModel):
        """x_d ~ Bernoulli(sigmoid(b_d + sum_{j<d} W_dj x_j)): no latent variables."""

        def __init__(self):
            super().__init__()
            self.data_dim = D
            self.W = PyroParam(0.1 * torch.randn(D, D))
            self.b = PyroParam(torch.zeros(D))
            self.register_buffer("mask", torch.ones(D, D).tril(-1))
            self.seen = []

        def model(self, x=None, num_data=None):
            if torch.is_grad_enabled():  # training steps (not the engine's structure probe)
                self.seen.append(x.clone())
            with data_plate(x, num_data):
                logits = self.b + x @ (self.W * self.mask).T
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

        def num_parameters(self):
            return D * (D + 1) // 2


    def data():
        g = torch.Generator().manual_seed(1)
        x = torch.bernoulli(torch.linspace(0.2, 0.8, D).expand(N, -1), generator=g)
        x[:, 1] = x[:, 0]
        return x


    def run(run_dir=None, crash_at=None):
        pyro.set_rng_seed(0)
        model = Logistic()
        if crash_at is not None:
            real = loop.lr_at

            def lr_at(step, *args):
                if step == crash_at:
                    raise RuntimeError("killed")
                return real(step, *args)

            loop.lr_at = lr_at
        result = inference.fit(model, data(), steps=STEPS, batch_size=BATCH, lr=0.05, seed=0,
                               run_dir=run_dir, checkpoint_every=5, progress=False)
        return model, result


    if __name__ == "__main__":
        out, run_dir, crash = sys.argv[1], sys.argv[2], sys.argv[3]
        model, result = run(run_dir, int(crash) if crash != "none" else None)
        rank = int(os.environ.get("RANK", 0))
        torch.save({"state": model.state_dict(), "losses": result.losses,
                    "seen": torch.stack(model.seen), "world_size": result.world_size,
                    "resumed_from": result.resumed_from},
                   os.path.join(out, f"rank{rank}.pt"))
    '''
)


def torchrun(tmp_path, name, crash="none"):
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(out), str(tmp_path / "run"), crash]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    return proc, out


def load(path):
    return torch.load(path, weights_only=True)


def test_two_processes_follow_one_and_resume_from_rank_0s_checkpoint(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    namespace = {"__name__": "worker"}
    exec(compile(WORKER, str(tmp_path / "worker.py"), "exec"), namespace)
    single, single_result = namespace["run"]()
    x = namespace["data"]()

    # killed on both ranks at step 13: rank 0's checkpoint of step 10 remains
    proc, _ = torchrun(tmp_path, "killed", crash="13")
    assert proc.returncode != 0 and "killed" in proc.stderr + proc.stdout
    from inference import load_checkpoint

    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert saved["step"] == 10 and len(saved["rng_ranks"]) == 2

    proc, out = torchrun(tmp_path, "resumed")
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [load(out / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 and r["resumed_from"] == 10 for r in ranks)

    # each rank took its half of the same global batch, step by step
    for i, step in enumerate(range(10, 20)):
        halves = torch.cat([r["seen"][i] for r in ranks])
        assert halves.shape == (32, 5)
        assert torch.equal(halves, x[batch_indices(step, len(x), 32, 0)])

    # the ranks agree exactly, and with one process on the global batch to float tolerance
    for k, v in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        assert torch.allclose(ranks[0]["state"][k], v, rtol=1e-5, atol=1e-6), (k, ranks[0]["state"][k], v)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the all-reduced global-batch loss
    assert ranks[0]["losses"] == pytest.approx(single_result.losses, rel=1e-5)
    torch.manual_seed(0)
    initial = namespace["Logistic"]().state_dict()
    assert not any(initial[k].equal(v) for k, v in single.state_dict().items() if k != "mask")  # trained

    # rank 0 alone wrote the run folder: one metric line per logged epoch, no duplicates
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["step"] == 20
