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
    assert main(["evaluate", str(out)]) == 0
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
        (["train", "bernoulli", "-o", "colour=red", "--steps", "1"], "bad option"),
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
