"""The ``zoo`` command line: run folders, evaluation, sampling and one-line errors."""
import json
import subprocess
import sys

import pytest

import experiments
from experiments.cli import main

TRAIN = ["--steps", "30", "--no-progress"]


def run_folder_files(path):
    return {p.name for p in path.iterdir()}


def test_train_evaluate_sample_bernoulli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "bernoulli", "--data", "digits", "--out", str(out), *TRAIN]) == 0
    assert {"config.json", "metrics.jsonl", "metrics.json", "checkpoint.pt", "loss.png", "samples.png"} <= run_folder_files(out)
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["data_dim"] == 64 and config["image_shape"] == [8, 8]
    final = json.loads((out / "metrics.json").read_text())
    assert final["test"]["nll"] > 0 and final["num_parameters"] == 64
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nll"] == pytest.approx(final["test"]["nll"], rel=1e-6)
    assert main(["sample", str(out), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_train_categorical_on_digit_labels(tmp_path):
    out = tmp_path / "cat"
    assert main(["train", "categorical", "--data", "digits_labels", "--out", str(out), *TRAIN]) == 0
    final = json.loads((out / "metrics.json").read_text())
    assert final["num_parameters"] == 9
    assert (out / "samples.png").exists()


def test_rerun_resumes_and_other_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "bernoulli", "--out", str(out), *TRAIN]) == 0
    assert main(["train", "bernoulli", "--out", str(out), *TRAIN]) == 0  # complete: resumes at the end
    assert main(["train", "bernoulli", "--out", str(out), "--lr", "0.01", *TRAIN]) == 2
    assert "another configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "no_such_model"], "unknown model 'no_such_model'"),
        (["train", "bernoulli", "--data", "no_such_data"], "no_such_data"),
        (["train", "bernoulli", "--objective", "nope", "--steps", "1"], "unknown objective"),
        (["train", "bernoulli", "-o", "prior=(0, 1)", "--steps", "1"], "prior"),
        (["train", "bernoulli", "-o", "colour=red", "--steps", "1"], "valid options: data_dim, prior"),
        (["train", "bernoulli", "-o", "nokeyvalue", "--steps", "1"], "key=value"),
        (["train", "categorical", "--data", "digits", "--steps", "1"], "categorical data"),
        (["evaluate", "/no/such/run"], "not a run folder"),
        (["experiment", "no_such_experiment"], "unknown experiment"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, tmp_path, capsys):
    argv = [*argv, "--out", str(tmp_path / "x")] if argv[0] == "train" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained bernoulli run folder, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "bernoulli", "--out", str(out), *TRAIN]) == 0
    return out


def _one_line_error(capsys, message):
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:"), err
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size (batch_size) must be at least 1, got 0"),
        (["--batch-size", "-5"], "must be at least 1, got -5"),
        (["--steps", "0"], "--steps (steps) must be at least 1"),
        (["--epochs", "-1"], "--epochs (epochs) must be at least 1"),
        (["--num-particles", "0"], "--num-particles"),
        (["--early-stopping", "0"], "--early-stopping"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--seed", "-1"], "--seed"),
        (["--device", "nosuch"], "unknown --device 'nosuch'"),
        (["--device", "tpu"], "--device"),
        (["--data", "mnist", "--data-dir", "/no/such/folder"], "--data-dir"),
        (["--data", "no_such.npz"], "data file"),
        (["-o", "prior=(1,1)", "-o", "size=3"], "valid options: data_dim, prior"),
        (["--objective", "nope"], "unknown objective"),
    ],
)
def test_bad_train_setting_is_one_line_exit_2(extra, message, tmp_path, capsys):
    steps = [] if {"--steps", "--epochs"} & set(extra) else ["--steps", "5"]
    argv = ["train", "bernoulli", *steps, "--no-progress", *extra, "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    _one_line_error(capsys, message)


def test_cuda_device_when_unavailable(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "bernoulli", "--device", "cuda", "--out", str(tmp_path / "x"), *TRAIN]) == 2
    _one_line_error(capsys, "CUDA is not available")


def test_bad_out_folders(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["train", "bernoulli", "--out", str(a_file), *TRAIN]) == 2
    _one_line_error(capsys, "is a file, not a folder")
    assert main(["train", "bernoulli", "--out", str(a_file / "below"), *TRAIN]) == 2
    _one_line_error(capsys, "which is a file")
    assert a_file.read_text() == "x"


def test_read_only_out_folder(tmp_path, capsys):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse
            pytest.skip("running as root: a read-only folder is writable")
        assert main(["train", "bernoulli", "--out", str(locked / "run"), *TRAIN]) == 2
        _one_line_error(capsys, "cannot write to --out")
    finally:
        locked.chmod(0o700)


def test_disk_full_names_the_folder(tmp_path, capsys, monkeypatch):
    import errno

    import inference.checkpoint

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference.checkpoint.os, "write", full)  # every file the run writes
    out = tmp_path / "run"
    assert main(["train", "bernoulli", "--out", str(out), *TRAIN]) == 2
    _one_line_error(capsys, f"no space left on the device of {out}")


def test_iwae_particles_that_cannot_fit_in_memory(tmp_path, capsys):
    argv = ["train", "bernoulli", "--objective", "iwae", "--num-particles", str(10**12), "--out", str(tmp_path / "x"), *TRAIN]
    assert main(argv) == 2
    _one_line_error(capsys, "not enough memory")


def test_out_of_memory_names_the_setting(tmp_path, capsys, monkeypatch):
    from experiments import cli

    def oom(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB")

    monkeypatch.setitem(cli._COMMANDS, "train", oom)
    assert main(["train", "bernoulli", "--num-particles", "100000"]) == 2
    _one_line_error(capsys, "lower --num-particles (K = 100000)")


@pytest.mark.parametrize("n", ["0", "-1"])
def test_sample_n_must_be_positive(n, run_dir, capsys):
    assert main(["sample", str(run_dir), "-n", n]) == 2
    _one_line_error(capsys, f"-n must be at least 1, got {n}")


def test_sample_writes_a_new_file_by_default(run_dir, capsys):
    own = (run_dir / "samples.png").read_bytes()
    assert main(["sample", str(run_dir), "-n", "4"]) == 0
    assert main(["sample", str(run_dir), "-n", "4", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "samples-1.png" in out and "samples-2.png" in out
    assert (run_dir / "samples.png").read_bytes() == own
    for name in ("samples-1.png", "samples-2.png"):
        (run_dir / name).unlink()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is corrupt"),
        ("[]", "not a run configuration"),
        ("{}", "no 'model' entry"),
        ('{"model": "bernoulli", "options": {}, "data": "digits"}', "no 'seed' entry"),
        ('{"model": "bernoulli", "options": [], "data": "digits", "seed": 0}', "'options' must be dict"),
    ],
)
def test_bad_config_json_is_a_clear_error(content, message, run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "config.json").write_text(content)
    for command in (["evaluate", str(copy)], ["sample", str(copy), "--out", str(tmp_path / "s.png")]):
        assert main(command) == 2
        _one_line_error(capsys, message)


def test_wrong_structure_checkpoint_is_a_clear_error(run_dir, tmp_path, capsys):
    import shutil

    import inference

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    inference.save_checkpoint(copy / "checkpoint.pt", {"step": 3})
    assert main(["evaluate", str(copy)]) == 2
    _one_line_error(capsys, "no model parameters")
    assert main(["train", "bernoulli", "--out", str(copy), *TRAIN]) == 2
    _one_line_error(capsys, "not a checkpoint of this engine")
    assert main(["train", "bernoulli", "--out", str(copy), "--restart", *TRAIN]) == 0


@pytest.mark.parametrize("content", ['{"model": "bernoulli", "steps": 2.7}', 'model = "bernoulli"\nsteps = 2.7\n'])
def test_non_integer_steps_are_refused(content, tmp_path, capsys):
    path = tmp_path / ("c.json" if content.startswith("{") else "c.toml")
    path.write_text(content)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "x")]) == 2
    _one_line_error(capsys, "--steps (steps) must be a whole number, got 2.7")


def test_config_file_round_trip_and_flags_override(run_dir, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--out", str(out), "--steps", "12"]) == 0
    first, again = (json.loads((d / "config.json").read_text()) for d in (run_dir, out))
    assert again["steps"] == 12 and first["steps"] == 30
    assert {k: v for k, v in again.items() if k != "steps"} == {k: v for k, v in first.items() if k != "steps"}
    toml = tmp_path / "c.toml"
    toml.write_text('model = "bernoulli"\nsteps = 7\nprogress = false\n[options]\nprior = [2, 2]\n')
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "t"), "--seed", "3"]) == 0
    written = json.loads((tmp_path / "t" / "config.json").read_text())
    assert written["steps"] == 7 and written["seed"] == 3 and written["options"]["prior"] == [2, 2]
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "bernoulli", "stpes": 3}')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "unknown keys ['stpes']; valid keys:")


def test_typo_shows_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "bernoulli", "--stpes", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: zoo train") and "did you mean --steps?" in err


def test_bad_set_key_lists_the_valid_keys(capsys):
    assert main(["experiment", "parameter_counts", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config keys for parameter_counts: ['nope']; valid keys:" in err and "sizes" in err


def test_experiment_prints_its_table_and_folder_not_json(tmp_path, capsys):
    out = tmp_path / "pc"
    assert main(["experiment", "parameter_counts", "--tiny", "--set", "rgb=False", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "counts.md").read_text().strip() in printed
    assert printed.rstrip().endswith(f"outputs: {out}") and not printed.lstrip().startswith("{")


def test_every_option_has_help_text():
    from experiments.cli import _parser

    _, subs = _parser()
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"zoo {name} {action.option_strings or action.dest} has no help text"


def test_static_lists_match_the_packages():
    import inference
    import zoo
    from experiments import cli

    assert set(cli.OBJECTIVE_NAMES) == set(inference.OBJECTIVES)
    assert set(cli.DATA_NAMES) == set(zoo.DATASETS)
    assert set(cli.LR_SCHEDULES) == set(inference.loop.LR_SCHEDULES)
    assert set(cli._model_catalogue()) == set(zoo.available())


def test_help_and_list_do_not_import_torch():
    code = (
        "import sys\nfrom experiments.cli import main\n"
        "for argv in (['list'], ['train', 'no_such_model']):\n"
        "    main(argv)\n"
        "assert not {'torch', 'pyro', 'arviz'} & set(sys.modules), sorted(m for m in sys.modules if m in ('torch', 'pyro', 'arviz'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "unknown model 'no_such_model'" in done.stderr
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom experiments.cli import main\n"
                           "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_interrupt_message_is_never_empty(capsys, monkeypatch):
    from experiments import cli

    def interrupted(args):
        raise KeyboardInterrupt()

    monkeypatch.setitem(cli._COMMANDS, "list", interrupted)
    assert main(["list"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("zoo: interrupted; run the same command again to resume") and "zoo: ;" not in err


def test_info_describes_a_model(capsys):
    assert main(["info", "vae"]) == 0
    out = capsys.readouterr().out
    assert "latent_dim: default 8" in out and "support: binary" in out
    assert "parameter count:" in out and "(a + 1) * b" in out


USER_MODEL = '''
import pyro, pyro.distributions as dist, torch
from pyro.nn import PyroParam
from zoo import ZooModel, data_plate


class Logistic(ZooModel):
    """Independent pixels with logits theta. Parameters: n."""
    support = "binary"
    fit_defaults = dict(lr=0.05, steps=20)

    def __init__(self, data_dim, scale=1.0):
        super().__init__()
        self.data_dim = data_dim
        self.theta = PyroParam(torch.zeros(data_dim))

    def model(self, x=None, num_data=None):
        with data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=self.theta).to_event(1), obs=x)

    def num_parameters(self):
        return self.data_dim


class NoDim(ZooModel):
    """A model whose constructor takes no data_dim (a fixed 16-pixel model)."""
    support = "binary"
    fit_defaults = dict(lr=0.05, steps=20)

    def __init__(self):
        super().__init__()
        self.data_dim = 16
        self.theta = PyroParam(torch.zeros(16))

    def model(self, x=None, num_data=None):
        with data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=self.theta).to_event(1), obs=x)

    def num_parameters(self):
        return 16
'''


@pytest.fixture
def user_files(tmp_path):
    import numpy as np

    (tmp_path / "my_model.py").write_text(USER_MODEL)
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(USER_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "my.npz", x=(rng.random((200, 16)) < 0.3).astype(np.float32))
    np.save(tmp_path / "real.npy", rng.normal(size=(50, 16)))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16), dtype=np.float32))
    (tmp_path / "nan.csv").write_text("a,b\n0,1\nnan,1\n")
    (tmp_path / "labels.csv").write_text("\n".join(str(i % 3) for i in range(60)) + "\n")
    return tmp_path


def test_user_model_file_and_data_end_to_end(user_files, monkeypatch, tmp_path_factory, capsys):
    monkeypatch.chdir(user_files)
    assert main(["train", "my_model.py:Logistic", "--data", "my.npz", "--no-progress", "--out", "run"]) == 0
    config = json.loads((user_files / "run" / "config.json").read_text())
    assert config["model"] == f"{user_files / 'my_model.py'}:Logistic"
    assert config["data"] == str(user_files / "my.npz") and config["options"] == {"data_dim": 16}
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # the run folder works from any directory
    capsys.readouterr()
    assert main(["evaluate", str(user_files / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] > 0
    assert main(["sample", str(user_files / "run"), "-n", "4"]) == 0
    # zoo compare reads the user's model and data back through the run folder, from anywhere
    assert main(["train", "independent", "--data", str(user_files / "my.npz"), "--steps", "20", "--no-progress",
                 "--out", "builtin"]) == 0
    assert main(["compare", str(user_files / "run"), "builtin", "--out", "cmp"]) == 0
    rows = json.loads((elsewhere / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["model"] for r in rows] == [config["model"], "independent"]
    assert all(isinstance(r.get("test_nll"), float) and not str(r.get("inference", "")).startswith("model not loaded")
               for r in rows), rows
    assert (elsewhere / "cmp" / "report.html").is_file()


def test_user_module_and_constructor_without_data_dim(user_files, monkeypatch, tmp_path_factory, capsys):
    monkeypatch.chdir(user_files)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["train", "mypkg.models:NoDim", "--data", "my.npz", "--no-progress", "--out", "run"]) == 0
    config = json.loads((user_files / "run" / "config.json").read_text())
    assert config["options"] == {} and config["model_path"] == str(user_files)
    sys.modules.pop("mypkg.models", None)
    sys.modules.pop("mypkg", None)
    sys.path.remove(str(user_files))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert main(["evaluate", str(user_files / "run")]) == 0
    sys.modules.pop("mypkg.models", None)
    sys.modules.pop("mypkg", None)
    sys.path.remove(str(user_files))
    assert main(["info", "mypkg.models:NoDim"]) == 2  # not importable from here without the run folder
    _one_line_error(capsys, "cannot import module 'mypkg.models'")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "my_model.py:Logistic", "--data", "empty.npz"], "holds no data points"),
        (["train", "my_model.py:Logistic", "--data", "real.npy"], "needs binary data"),
        (["train", "my_model.py:Logistic", "--data", "nan.csv"], "NaN or infinite"),
        (["train", "my_model.py:Logistic", "--data", "labels.csv"], "needs binary data"),
        (["train", "categorical", "--data", "my.npz"], "needs categorical data"),
        (["train", "my_model.py:Nope", "--data", "my.npz"], "has no class 'Nope'; it defines Logistic, NoDim"),
        (["train", "missing.py:Model"], "model file"),
        (["train", "my_model.py:Logistic", "--data", "my.npz", "-o", "depth=3"], "valid options: data_dim, scale"),
        (["info", "my_model.py:Nope"], "has no class"),
    ],
)
def test_user_file_errors(argv, message, user_files, monkeypatch, capsys):
    monkeypatch.chdir(user_files)
    assert main([*argv, *(["--out", "x", "--no-progress"] if argv[0] == "train" else [])]) == 2
    _one_line_error(capsys, message)


def test_categorical_data_file(user_files, monkeypatch):
    monkeypatch.chdir(user_files)
    assert main(["train", "categorical", "--data", "labels.csv", "--out", "cat", *TRAIN]) == 0
    assert json.loads((user_files / "cat" / "config.json").read_text())["options"]["num_categories"] == 3


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "bernoulli", "--out", str(out), "--logger", "tensorboard", *TRAIN]) == 0
    assert (out / "metrics.jsonl").stat().st_size > 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in logged]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert "test/nll" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]


@pytest.mark.slow
def test_torchrun_every_rank_exits_0_and_only_rank_0_prints(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "experiments.cli", "train", "bernoulli", "--steps", "20", "--batch-size", "64",
         "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1 and done.stdout.count("test nll") == 1


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "bernoulli", "--out", str(out), *TRAIN])
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main(["evaluate", str(out)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_python_m_experiments_lists_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "experiments", "no_such"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("zoo: error: unknown experiment") and "Traceback" not in done.stderr


def test_every_experiment_has_a_config_and_tiny_settings():
    for name in experiments.available():
        module = experiments.get(name)
        assert set(module.TINY) <= set(module.CONFIG), name
        assert module.__doc__, f"{name} needs a docstring saying what it shows"
