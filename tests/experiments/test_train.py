"""experiments.train: the post-training evaluation levels (config key ``eval``, ``zoo train --eval``)."""
import json

import torch

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


def test_a_run_written_before_a_config_key_existed_resumes(tmp_path):
    """A key added to CONFIG later (here: logger, guide) takes its default when an older run
    folder's config.json lacks it: same run, resumed, not refused as another configuration."""
    settings = dict(model="fvsbn", steps=4, progress=False, eval="none")
    train_and_evaluate(settings, tmp_path)
    path = tmp_path / "config.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("logger", "guide")}
    path.write_text(json.dumps(old))
    assert train_and_evaluate({**settings, "steps": 4}, tmp_path)["steps"] == 4  # resumed, nothing new to do
    with pytest.raises(ValueError, match="another configuration"):
        train_and_evaluate({**settings, "model": "fvsbn", "lr": 0.5}, tmp_path)


def test_a_run_with_tuple_settings_resumes(tmp_path):
    """Settings given as tuples (the leaderboard's VAE recipes pass Adam's betas so) come back
    from config.json as lists: the same run, resumed from its checkpoint, not refused as
    another configuration."""
    settings = dict(model="fvsbn", steps=4, progress=False, eval="none", betas=(0.9, 0.99))
    train_and_evaluate(settings, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["betas"] == [0.9, 0.99]
    checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    assert train_and_evaluate(settings, tmp_path)["steps"] == 4  # resumed: nothing new to do
    assert (tmp_path / "checkpoint.pt").read_bytes() == checkpoint  # not trained again from step 0
    with pytest.raises(ValueError, match="another configuration"):
        train_and_evaluate({**settings, "betas": (0.9, 0.999)}, tmp_path)


def test_a_run_with_an_autoguide_is_scored_under_it_and_rescored_alike(tmp_path):
    """``zoo train --guide auto_normal``: the test NLL is the posterior predictive under the
    trained AutoGuide (near the exact one of the conjugate model), and ``zoo evaluate`` of the
    run folder, which reloads the guide's parameters, gives the same number."""
    import zoo
    from experiments.train import evaluate_run, load_run, load_split

    metrics = train_and_evaluate(dict(model="bernoulli", guide="auto_normal", steps=1000,
                                      progress=False, eval="nll"), tmp_path)
    model, config = load_run(tmp_path)
    train, test = load_split(config, "train").x, load_split(config, "test").x
    post = model.exact_posterior(train)["p"].base_dist
    mean = post.concentration1 / (post.concentration1 + post.concentration0)
    exact = -float(torch.distributions.Bernoulli(probs=mean).log_prob(test).sum(-1).double().mean())
    assert abs(metrics["test"]["nll"] - exact) < 0.1, (metrics["test"]["nll"], exact)
    assert evaluate_run(tmp_path)["nll"] == pytest.approx(metrics["test"]["nll"], rel=1e-9)
    assert (tmp_path / "samples.png").is_file()
    assert isinstance(model, zoo.ZooModel)
