"""experiments.train: the post-training evaluation levels (config key ``eval``, ``zoo train --eval``)."""
import json

import pytest

from experiments.cli import main
from experiments.train import CONFIG, train_and_evaluate


@pytest.mark.parametrize("level, keys", [("none", set()), ("nll", {"valid", "test"})])  # "all": test_gan
def test_eval_levels(tmp_path, level, keys):
    metrics = train_and_evaluate(dict(model="fvsbn", steps=3, progress=False, eval=level), tmp_path)
    assert metrics["eval"] == level
    assert {"valid", "test", "sample_quality"} & set(metrics) == keys
    assert json.loads((tmp_path / "metrics.json").read_text())["eval"] == level
    if "test" in keys:
        assert metrics["test"]["num_examples"] == 300 and metrics["test"]["nll"] > 0


def test_eval_level_is_checked_and_resumes_with_another(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown eval 'some'"):
        train_and_evaluate(dict(model="fvsbn", steps=3, progress=False, eval="some"), tmp_path)
    assert main(["train", "fvsbn", "--steps", "3", "--eval", "none", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    # the same run scored afterwards: another eval level is no other configuration
    assert main(["train", "fvsbn", "--steps", "3", "--eval", "nll", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    assert "test nll" in capsys.readouterr().out


def test_the_default_scores_everything():
    assert CONFIG["eval"] == "all"
