"""Fault injection: kills, torn and corrupt files, malicious pickles, two writers, a full
disk, SIGTERM, non-finite gradients, blow-ups. Each trial asserts that nothing was lost:
the run folder resumes to the numbers (and the metric log) of an uninterrupted run, or
the error is one clear line and the last good checkpoint is intact and finite."""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroParam

import inference
import zoo
from experiments import cli
from experiments.run_folder import RunFolder
from inference.checkpoint import CHECKPOINT, METRICS, Checkpointer, CheckpointError, FileLock
from zoo.base import ZooModel, data_plate

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(steps=40, batch_size=32, lr=0.05, checkpoint_every=10, progress=False)


def data(n=200, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.linspace(0.1, 0.9, d).expand(n, -1), generator=g)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def log_lines(folder):
    """The metric log without wall times (which differ between any two runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (Path(folder) / METRICS).read_text().splitlines()]


class KillAt(inference.Callback):
    def __init__(self, step, exc=RuntimeError("killed")):
        self.step, self.exc = step, exc

    def on_step_end(self, trainer):
        if trainer.done == self.step:
            raise self.exc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    pyro.set_rng_seed(0)
    model = zoo.create("bernoulli", data_dim=5)
    result = inference.fit(model, data(), run_dir=folder, **SETTINGS)
    return state(model), result, log_lines(folder)


# ----- kills at random steps -----------------------------------------------------------------
KILL_STEPS = sorted(torch.randperm(39, generator=torch.Generator().manual_seed(7))[:8].add(1).tolist())


@pytest.mark.parametrize("kill_at", KILL_STEPS)
def test_killed_at_a_random_step_resumes_to_the_uninterrupted_run(tmp_path, reference, kill_at):
    ref_state, ref_result, ref_log = reference
    pyro.set_rng_seed(0)
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, callbacks=[KillAt(kill_at)],
                      **SETTINGS)
    pyro.set_rng_seed(1)  # another initialisation: the checkpoint must override it
    model = zoo.create("bernoulli", data_dim=5)
    resumed = inference.fit(model, data(), run_dir=tmp_path, **SETTINGS)
    assert resumed.resumed_from == (kill_at // 10) * 10 or (kill_at < 10 and resumed.resumed_from is None)
    for k, v in ref_state.items():
        assert torch.equal(state(model)[k], v), k
    assert resumed.losses == ref_result.losses
    assert log_lines(tmp_path) == ref_log  # running averages included
    assert resumed.train_seconds >= resumed.seconds
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / (CHECKPOINT + ".lock")).exists()


# ----- kills while a checkpoint is written ------------------------------------------------------
@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference, monkeypatch, where):
    ref_state, _, ref_log = reference
    real = {"write": os.write, "fsync": os.fsync, "replace": os.replace}[where]
    calls = {"n": 0}

    def dies_on_second_checkpoint(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while writing")
        return real(*args)

    pyro.set_rng_seed(0)
    monkeypatch.setattr(os, where, dies_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    monkeypatch.setattr(os, where, real)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    model = zoo.create("bernoulli", data_dim=5)
    inference.fit(model, data(), run_dir=tmp_path, **SETTINGS)
    for k, v in ref_state.items():
        assert torch.equal(state(model)[k], v), k
    assert log_lines(tmp_path) == ref_log


# ----- corrupt files and malicious pickles --------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.target}",))


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "not_a_dict": lambda p: torch.save([1, 2, 3], p),
    "wrong_structure": lambda p: torch.save({"format": 1, "step": 3, "settings": {}}, p),
    "wrong_types": lambda p: torch.save({**torch.load(p, weights_only=True), "history": 5}, p),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_one_clear_line(tmp_path, kind):
    inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    CORRUPTIONS[kind](tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError) as e:
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    Payload.target = tmp_path / "pwned"
    torch.save({"format": 1, "step": 1, "evil": Payload()}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    with pytest.raises(CheckpointError):
        inference.load_checkpoint(tmp_path / CHECKPOINT)
    assert not Payload.target.exists()


@pytest.mark.parametrize("config", ['{"model": "bernoulli"}', "[1, 2]", '{"model": 3, "options": {}, "seed": 0}', "{bad json"])
def test_a_config_of_the_wrong_structure_is_one_clear_line(tmp_path, config):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError) as e:
        RunFolder(tmp_path).read_config()
    assert "\n" not in str(e.value)


def test_resuming_with_other_model_options_is_refused(tmp_path):
    inference.fit(zoo.create("bernoulli", data_dim=5, prior=(1, 1)), data(), run_dir=tmp_path, **SETTINGS)
    with pytest.raises(CheckpointError, match="model_options"):
        inference.fit(zoo.create("bernoulli", data_dim=5, prior=(50, 50)), data(), run_dir=tmp_path,
                      **{**SETTINGS, "steps": 50})


# ----- two writers ------------------------------------------------------------------------------------
def test_a_second_writer_gets_an_error_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / (CHECKPOINT + ".lock")).write_text(f"{holder.pid}\n")
        with pytest.raises(CheckpointError, match=f"pid {holder.pid}"):
            inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
        assert not (tmp_path / METRICS).exists() and not (tmp_path / CHECKPOINT).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its stale lock is taken over
    inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 40


def test_two_concurrent_processes_one_wins(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch, zoo, inference
        from experiments.run_folder import RunFolder
        folder = RunFolder({str(tmp_path)!r})
        try:
            folder.open()
        except inference.CheckpointError as e:
            print("REFUSED", e); sys.exit(3)
        print("HOLDING", flush=True)
        sys.stdin.readline()
        folder.close()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert first.stdout.readline().startswith("HOLDING")
        second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 3 and f"pid {first.pid}" in second.stdout
    finally:
        first.communicate("\n", timeout=60)
    assert first.returncode == 0 and not (tmp_path / (CHECKPOINT + ".lock")).exists()


# ----- a full disk ------------------------------------------------------------------------------------
def test_disk_full_while_checkpointing_names_the_folder_and_leaves_no_tmp(tmp_path, monkeypatch):
    real = os.write
    calls = {"n": 0}

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*No space left"):
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, **SETTINGS)
    monkeypatch.setattr(os, "write", real)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 10


# ----- SIGTERM and Ctrl-C ------------------------------------------------------------------------------
class SignalAt(inference.Callback):
    def __init__(self, step, signum, times=1):
        self.step, self.signum, self.times = step, signum, times

    def on_step_end(self, trainer):
        if trainer.done == self.step:
            for _ in range(self.times):
                signal.raise_signal(self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_checkpoint_and_name_step_and_checkpoint(tmp_path, reference, signum):
    ref_state, _, ref_log = reference
    pyro.set_rng_seed(0)
    with pytest.raises(inference.Interrupted) as e:
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path, callbacks=[SignalAt(17, signum)],
                      **SETTINGS)
    assert e.value.signum == signum and "step 17" in str(e.value) and str(tmp_path / CHECKPOINT) in str(e.value)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 17
    model = zoo.create("bernoulli", data_dim=5)
    inference.fit(model, data(), run_dir=tmp_path, **SETTINGS)
    for k, v in ref_state.items():
        assert torch.equal(state(model)[k], v), k
    assert log_lines(tmp_path) == ref_log


def test_a_double_ctrl_c_stops_at_once_with_a_message(tmp_path):
    with pytest.raises(inference.Interrupted) as e:
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path,
                      callbacks=[SignalAt(13, signal.SIGINT, times=2)], **SETTINGS)
    assert "interrupted twice" in str(e.value) and "step 10" in str(e.value)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 10


def test_sigterm_of_the_command_line_exits_143(tmp_path, monkeypatch, capsys):
    real_init = inference.loop.Trainer.__init__

    def with_signal(self, *args, callbacks=(), **kwargs):
        real_init(self, *args, callbacks=[*callbacks, SignalAt(5, signal.SIGTERM)], **kwargs)

    monkeypatch.setattr(inference.loop.Trainer, "__init__", with_signal)
    code = cli.main(["train", "bernoulli", "--data", "digits", "--steps", "40", "--out", str(tmp_path), "--no-progress"]
                    if "--no-progress" in cli._parser().format_help() else
                    ["train", "bernoulli", "--data", "digits", "--steps", "40", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 143 and "step 5" in err and "checkpoint" in err
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 5


# ----- non-finite gradients, blow-ups, NaN validation ----------------------------------------------------
class NaNGradient(ZooModel):
    """A finite loss whose gradient turns NaN after a number of training calls."""

    def __init__(self, after):
        super().__init__()
        self.data_dim, self.after, self.calls = 5, after, 0
        self.logits = PyroParam(torch.zeros(5))

    def model(self, x=None, num_data=None):
        self.calls += torch.is_grad_enabled()
        logits = self.logits
        if self.calls > self.after:  # sqrt at 0: value 0, gradient inf * 0 = nan
            logits = logits + 0.0 * torch.sqrt(self.logits - self.logits.detach())
        with data_plate(x, num_data):
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def num_parameters(self):
        return 5


def test_a_nan_gradient_with_a_finite_loss_stops_before_the_update(tmp_path):
    model = NaNGradient(after=20)
    with pytest.raises(inference.DivergenceError, match=r"non-finite gradient at step 20.*step 20"):
        inference.fit(model, data(), run_dir=tmp_path, **SETTINGS)
    saved = inference.load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["step"] == 20 and all(torch.isfinite(v).all() for v in saved["modules"]["model"].values())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())  # the update was skipped


class BlowsUp(ZooModel):
    """A finite loss that grows by orders of magnitude after a number of training calls."""

    def __init__(self, after):
        super().__init__()
        self.data_dim, self.after, self.calls = 5, after, 0
        self.logits = PyroParam(torch.zeros(5))

    def model(self, x=None, num_data=None):
        self.calls += torch.is_grad_enabled()
        scale = 1e6 if self.calls > self.after else 1.0
        with data_plate(x, num_data), pyro.poutine.scale(scale=scale):
            pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def num_parameters(self):
        return 5


def test_a_loss_that_blows_up_without_nan_stops(tmp_path):
    with pytest.raises(inference.DivergenceError, match="orders of magnitude"):
        inference.fit(BlowsUp(after=12), data(), run_dir=tmp_path, **{**SETTINGS, "batch_size": 200})
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] <= 20


def test_a_nan_validation_loss_stops_and_is_never_logged(tmp_path):
    model = zoo.create("bernoulli", data_dim=5)
    bad = data(seed=1)
    with pytest.raises(inference.DivergenceError, match="validation loss is nan"):
        with pyro.validation_enabled(False):
            inference.fit(model, data(), run_dir=tmp_path, val_data=bad, **SETTINGS,
                          callbacks=[_PoisonValidation(model)])
    text = (tmp_path / METRICS).read_text() if (tmp_path / METRICS).exists() else ""
    assert "NaN" not in text and "nan" not in text.lower()


class _PoisonValidation(inference.Callback):
    def __init__(self, model):
        self.model = model

    def on_start(self, trainer):
        real = trainer.val_fn
        trainer.val_fn = lambda: math.nan if real is not None else math.nan


# ----- invalid settings, refused up front ------------------------------------------------------------------
@pytest.mark.parametrize("settings, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-5), "batch_size"),
    (dict(steps=2.7), "steps"),
    (dict(steps=0), "steps"),
    (dict(epochs=1.5, steps=None), "epochs"),
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(early_stopping=3), "early_stopping needs val_data"),
    (dict(betas=(0.9, 1.5)), "betas"),
    (dict(num_particles=0), "num_particles"),
    (dict(lr_schedule="linear"), "lr_schedule"),
])
def test_invalid_settings_are_refused_before_any_work(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match) as e:
        inference.fit(zoo.create("bernoulli", data_dim=5), data(), run_dir=tmp_path,
                      **{**SETTINGS, **settings})
    assert "\n" not in str(e.value)
    assert not (tmp_path / CHECKPOINT).exists()


def test_an_enumerated_model_under_another_objective_is_refused():
    with pytest.raises(ValueError, match="objective='enum'"):
        inference.fit(zoo.create("mixture", data_dim=5), data(), objective="elbo", steps=1, progress=False)


def test_checkpoint_lock_is_reentrant_and_released(tmp_path):
    lock = FileLock(tmp_path / "x.lock")
    with lock, lock:
        assert (tmp_path / "x.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "x.lock").exists()
    ckpt = Checkpointer(tmp_path / "sub" / CHECKPOINT)
    ckpt.open()
    ckpt.close()
    assert (tmp_path / "sub").is_dir()


@pytest.mark.skipif(not os.environ.get("ZOO_SMALL_FS"), reason="set ZOO_SMALL_FS to a small mounted file system "
                    "(e.g. mount -t tmpfs -o size=200k tmpfs DIR) to run the real disk-full trial")
def test_a_really_full_disk_names_the_folder_and_leaves_no_tmp():
    folder = Path(os.environ["ZOO_SMALL_FS"]) / "run"
    x = torch.bernoulli(torch.full((64, 64), 0.3))
    with pytest.raises(CheckpointError, match=f"{folder}.*(No space|space)"):
        inference.fit(zoo.create("made", data_dim=64, hidden_sizes=[512]), x, run_dir=folder, **SETTINGS)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert not (folder / CHECKPOINT).exists() and not (folder / (CHECKPOINT + ".lock")).exists()
