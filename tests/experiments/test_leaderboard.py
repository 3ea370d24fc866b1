"""The leaderboard on a tiny binarized-MNIST file written here: the table, the caps, resumption."""
import csv
import json

import numpy as np
import pytest
import torch

import inference
import zoo
from experiments import leaderboard as LB
from experiments.cli import _flags


def write_binarized_mnist(root, sizes=(("train", 60), ("valid", 20), ("test", 20)), seed=0):
    """Tiny amat files of 784 random pixels (brighter in the middle, like digits)."""
    rng = np.random.RandomState(seed)
    probs = np.clip(np.exp(-((np.arange(784) % 28 - 13.5) ** 2 + (np.arange(784) // 28 - 13.5) ** 2) / 60), 0.02, 0.9)
    folder = root / "binarized_mnist"
    folder.mkdir(parents=True)
    for split, n in sizes:
        rows = (rng.rand(n, 784) < probs).astype(int)
        (folder / f"binarized_mnist_{split}.amat").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    return root


@pytest.fixture
def data_dir(tmp_path):
    return write_binarized_mnist(tmp_path / "data")


def config(data_dir, **overrides):
    recipes = {
        "fvsbn": dict(fit=dict(epochs=2, batch_size=20, lr=1e-2, early_stopping=None)),
        "made-32-masks": dict(options=dict(hidden_sizes=[16], num_masks=3), fit=dict(epochs=2, batch_size=20, early_stopping=None)),
        "vae": dict(options=dict(hidden=[16], latent_dim=2), fit=dict(epochs=2, batch_size=20), eval_options=dict(num_samples=16)),
    }
    return {**LB.CONFIG, "data_dir": str(data_dir), "models": list(recipes), "recipes": recipes, "progress": False, **overrides}


def test_tiny_leaderboard_writes_the_table(data_dir, tmp_path):
    out = tmp_path / "lb"
    result = LB.run(config(data_dir), out)
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["fvsbn", "made-32-masks", "vae"]
    for r in rows.values():
        assert not r["partial"] and r["epochs_run"] == 2 and r["recipe_epochs"] == 2
        assert 0 < r["ours"] < 784 * np.log(2) * 2 and r["device"].startswith("cpu")
        assert r["binarization"].startswith("fixed")
    assert rows["fvsbn"]["published"] == 97.45 and "Larochelle" in rows["fvsbn"]["citation"]
    assert rows["fvsbn"]["difference"] == pytest.approx(rows["fvsbn"]["ours"] - 97.45)
    assert rows["fvsbn"]["parameters"] == 784 * 785 // 2 + 784 or rows["fvsbn"]["parameters"] > 0
    assert rows["vae"]["estimator"] == "IS, K=16"
    assert rows["made-32-masks"]["estimator"] == "exact, 3-mask ensemble (log-mean-exp)"
    # the scores are the run folders' checkpoints scored by the rows' estimators
    model, _ = LB.load_run(out / "binarized-mnist" / "fvsbn")
    test = LB.zoo.load("binarized_mnist", "test", root=data_dir)
    assert rows["fvsbn"]["ours"] == pytest.approx(inference.evaluate(model, test, progress=False)["nll"], rel=1e-6)
    md = (out / "leaderboard-binarized-mnist.md").read_text()
    header = md.splitlines()[2]
    for _, title in LB.COLUMNS:
        assert title in header
    assert "97.45 (Larochelle & Murray 2011, Table 2)" in md
    with open(out / "leaderboard-binarized-mnist.csv") as f:
        assert [r["label"] for r in csv.DictReader(f)] == list(rows)
    assert json.loads((out / "leaderboard-binarized-mnist.json").read_text())["rows"][0]["label"] == "fvsbn"
    assert (out / "leaderboard-binarized-mnist.png").read_bytes()[:4] == b"\x89PNG"


def test_an_epoch_cap_leaves_a_partial_row_that_resumes_to_the_uninterrupted_run(data_dir, tmp_path):
    recipes = {"fvsbn": dict(fit=dict(epochs=4, batch_size=20, lr=1e-2, early_stopping=None))}
    capped = config(data_dir, models=["fvsbn"], recipes=recipes, epochs=2)
    (row,) = LB.run(capped, tmp_path / "a")["rows"]
    assert row["partial"] and row["epochs_run"] == 2 and row["recipe_epochs"] == 4
    assert "(partial)" in (tmp_path / "a" / "leaderboard-binarized-mnist.md").read_text()
    assert row["budget_left_seconds"] is not None
    (row,) = LB.run({**capped, "epochs": None}, tmp_path / "a")["rows"]
    assert not row["partial"] and row["epochs_run"] == 4
    (whole,) = LB.run({**capped, "epochs": None}, tmp_path / "b")["rows"]
    resumed = inference.load_checkpoint(tmp_path / "a" / "binarized-mnist" / "fvsbn" / "checkpoint.pt")["modules"]["model"]
    straight = inference.load_checkpoint(tmp_path / "b" / "binarized-mnist" / "fvsbn" / "checkpoint.pt")["modules"]["model"]
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    assert row["ours"] == pytest.approx(whole["ours"], rel=1e-9)


def test_a_spent_time_budget_stops_after_one_step_and_the_score_is_cached(data_dir, tmp_path):
    cfg = config(data_dir, models=["fvsbn"], budget_minutes=0)
    (row,) = LB.run(cfg, tmp_path)["rows"]
    per_epoch = 60 // 20
    assert row["partial"] and row["epochs_run"] == pytest.approx(1 / per_epoch, abs=0.01)
    status = json.loads((tmp_path / "binarized-mnist" / "fvsbn" / "leaderboard_status.json").read_text())
    assert status["score"]["key"]["step"] == 1 and len(status["sessions"]) == 1
    (again,) = LB.run({**cfg, "train": False}, tmp_path)["rows"]
    assert again["ours"] == row["ours"] and again["epochs_run"] == row["epochs_run"]


def test_rows_come_from_the_recipes_and_a_class_paper(monkeypatch):
    rows = {r["label"]: r for r in LB.resolve_rows(LB.CONFIG)}
    assert rows["made-2-layers-32-masks"]["options"]["hidden_sizes"] == [8000, 8000]
    assert rows["made"]["options"] == zoo.get("made").paper["options"] == {"hidden_sizes": [8000], "ordering": "random", "direct": True}
    assert rows["vae"]["eval_options"] == {"num_samples": 5000} and LB.estimator(rows["vae"]) == "IS, K=5000"
    assert LB.estimator(rows["fvsbn"]) == "exact"
    assert LB.estimator(rows["made-2-layers-32-masks"]) == "exact, 32-mask ensemble (log-mean-exp)"
    paper = dict(recipe=dict(epochs=7, lr=0.5), options=dict(hidden_size=3), published=dict(fixed=80.0), citation="Someone 2030")
    monkeypatch.setattr(LB.zoo.get("nade"), "paper", paper, raising=False)
    rows = {r["label"]: r for r in LB.resolve_rows(LB.CONFIG)}
    assert rows["nade"]["fit"] == dict(epochs=7, lr=0.5) and rows["nade"]["options"] == dict(hidden_size=3)
    assert rows["nade"]["published"] == {"fixed": (80.0, "Someone 2030")}


def test_a_new_label_names_its_model_in_the_recipes():
    """``--set "recipes={'fvsbn-wd': {'model': 'fvsbn', ...}}"`` adds a row of a registered model
    under a new label (a variant to compare), trained by that model with the given settings."""
    cfg = {**LB.CONFIG, "models": ["fvsbn-wd"], "recipes": {"fvsbn-wd": dict(model="fvsbn", fit=dict(weight_decay=2.0))}}
    (row,) = LB.resolve_rows(cfg)
    assert row["label"] == "fvsbn-wd" and row["model"] == "fvsbn" and row["fit"] == dict(weight_decay=2.0)


def test_experiment_flags_become_config_entries():
    assert _flags(["--data", "mnist", "--binarize=dynamic", "--budget-minutes", "5", "--epochs", "3"]) == dict(
        data="mnist", binarize="dynamic", budget_minutes=5, epochs=3)
    with pytest.raises(ValueError, match="needs a value"):
        _flags(["--epochs"])


def test_a_row_whose_model_is_not_registered_keeps_its_published_figure(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(LB.RECIPES, "future-model", dict(model="no_such_model", published=dict(fixed=(80.5, "Someone 2030"))))
    (row,) = LB.run(config(data_dir, models=["future-model"]), tmp_path)["rows"]
    assert row["published"] == 80.5 and row.get("ours") is None
    assert "not registered" in row["note"]
    md = (tmp_path / "leaderboard-binarized-mnist.md").read_text()
    assert "80.50 (Someone 2030)" in md and "not registered" in md


def test_a_row_without_options_gets_its_models_paper_architecture():
    """The 2-stochastic-layer VAE row names no options: it trains the paper's sizes (the
    model's ``paper["options"]``), not the model's small defaults."""
    import zoo
    from experiments.leaderboard import CONFIG, resolve_rows

    (row,) = resolve_rows({**CONFIG, "models": ["vae-2-stochastic-layers"]})
    assert row["options"] == zoo.get("vae2").paper["options"]
    (made,) = resolve_rows({**CONFIG, "models": ["made-32-masks"]})
    assert made["options"]["num_masks"] == 32  # a row's own options stay


def test_an_earlier_tables_rows_are_kept_where_this_run_has_none(data_dir, tmp_path):
    first = LB.run(config(data_dir, models=["fvsbn", "vae"]), tmp_path / "a")
    earlier = tmp_path / "a" / "leaderboard-binarized-mnist.json"
    second = LB.run(config(data_dir, models=["made-32-masks", "fvsbn"], keep_rows=str(earlier)), tmp_path / "b")
    rows = {r["label"]: r for r in second["rows"]}
    assert list(rows) == ["fvsbn", "made-32-masks", "vae"]  # the recipes' order
    vae = {r["label"]: r for r in first["rows"]}["vae"]
    assert rows["vae"]["ours"] == vae["ours"] and rows["vae"]["note"].startswith("kept from leaderboard-binarized-mnist.json")
    assert not rows["fvsbn"]["note"].startswith("kept")  # rerun here: this run's row
    md = (tmp_path / "b" / "leaderboard-binarized-mnist.md").read_text()
    assert "**vae**: kept from" in md
    # a row listed but not run here (no run folder, --train False) gives way to the kept one
    listed = {r["label"]: r for r in LB.run(config(data_dir, train=False, keep_rows=str(earlier)), tmp_path / "c")["rows"]}
    before = {r["label"]: r for r in first["rows"]}
    assert list(listed) == ["fvsbn", "made-32-masks", "vae"]
    assert listed["fvsbn"]["ours"] == before["fvsbn"]["ours"] and listed["vae"]["ours"] == before["vae"]["ours"]
    assert listed["made-32-masks"]["ours"] is None and not listed["made-32-masks"]["run"]
    # kept again from the merged table: the provenance is said once
    third = LB.kept([], config(data_dir, keep_rows=str(tmp_path / "b" / "leaderboard-binarized-mnist.json")))
    assert [r["label"] for r in third] == ["fvsbn", "made-32-masks", "vae"]
    assert all(r["note"].count("kept from") == 1 for r in third)
    # a row whose label now has another recipe is not kept: its number belongs to that other recipe
    changed = config(data_dir, keep_rows=str(earlier))
    changed["recipes"]["vae"]["options"] = dict(hidden=[8], latent_dim=2)
    assert [r["label"] for r in LB.kept([], changed)] == ["fvsbn"]
    # but fused (the same update, rounded otherwise) is an implementation, not another recipe
    fused = config(data_dir, keep_rows=str(earlier))
    fused["recipes"]["vae"]["fit"] = dict(fused["recipes"]["vae"]["fit"], fused=True)
    assert [r["label"] for r in LB.kept([], fused)] == [r["label"] for r in LB.kept([], config(data_dir, keep_rows=str(earlier)))]
    assert "vae" in [r["label"] for r in LB.kept([], fused)]
    # nor is a row whose label no longer has a recipe (its JSON records none, like the label)
    table = json.loads(earlier.read_text())
    table["rows"].append(dict(table["rows"][0], label="made-weight-decay", recipe=None))
    earlier.write_text(json.dumps(table))
    assert "made-weight-decay" not in [r["label"] for r in LB.kept([], config(data_dir, keep_rows=str(earlier)))]
    with pytest.raises(ValueError, match="is a table of binarized-mnist .seed 0., not of mnist-dynamic"):
        LB.kept([], {**LB.CONFIG, "data": "mnist", "binarize": "dynamic", "keep_rows": str(earlier)})
    with pytest.raises(ValueError, match="not a leaderboard table"):
        LB.kept([], {**LB.CONFIG, "keep_rows": str(tmp_path / "missing.json")})


def test_a_partial_row_with_early_stopping_is_scored_at_its_best_validation_epoch(data_dir, tmp_path):
    """FVSBN's 307k weights overfit 60 rows at once: the validation loss is best early, and the
    capped (partial) row is scored at that epoch's parameters, as the finished run would be."""
    recipes = {"fvsbn": dict(fit=dict(epochs=30, batch_size=20, lr=0.05, early_stopping=25, weight_decay=0.0))}
    cfg = config(data_dir, models=["fvsbn"], recipes=recipes, epochs=8)
    (row,) = LB.run(cfg, tmp_path)["rows"]
    folder = tmp_path / "binarized-mnist" / "fvsbn"
    state = inference.load_checkpoint(folder / "checkpoint.pt")
    assert row["partial"] and state["step"] == 8 * 3
    assert state["best"]["step"] < state["step"], "the validation loss did not rise: no test of the selection"
    model, _ = LB.load_run(folder)
    test = LB.zoo.load("binarized_mnist", "test", root=data_dir)
    last = inference.evaluate(model, test, progress=False)["nll"]
    model.load_state_dict(state["best"]["state"]["model"])
    best = inference.evaluate(model, test, progress=False)["nll"]
    assert row["ours"] == pytest.approx(best, rel=1e-6) and row["ours"] != pytest.approx(last, rel=1e-6)
    assert row["scored_epoch"] == state["best"]["step"] / 3
    assert f"scored at its best validation epoch, {row['scored_epoch']:g}" in row["note"]
    # what is left is the look-ahead after the best epoch (25 epochs), not the recipe's 30
    left = min(30, row["scored_epoch"] + 25) - 8
    assert row["budget_left_seconds"] == round(row["seconds_per_epoch"] * left)
    if left < 30 - 8:  # better epochs may still come: at most the whole recipe
        assert row["budget_max_seconds"] == round(row["seconds_per_epoch"] * (30 - 8))
        assert "at most" in LB.notes_markdown([row])


def test_ctrl_c_in_a_row_keeps_the_sessions_record(data_dir, tmp_path, monkeypatch):
    cfg = config(data_dir, models=["fvsbn"], epochs=1)
    LB.run(cfg, tmp_path)  # one epoch: a checkpoint and one session
    status = tmp_path / "binarized-mnist" / "fvsbn" / LB.STATUS

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LB, "train_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LB.run({**cfg, "epochs": 2}, tmp_path)
    sessions = json.loads(status.read_text())["sessions"]
    assert [(s["from_step"], s["to_step"]) for s in sessions] == [(0, 3), (3, 3)]


def test_the_note_bounds_an_early_stopped_rows_budget_both_ways():
    """A partial row scored at its best epoch needs at least the look-ahead and at most the
    whole recipe: the note gives both, the table's seconds as hours."""
    row = dict(label="made", seconds_per_epoch=60.0, budget_left_seconds=1800, budget_max_seconds=36000,
               recipe_epochs=200, scored_epoch=2)
    note = LB.notes_markdown([row])
    assert "at least 0.5 h more" in note and "at most 10.0 h (all 200 epochs)" in note
    del row["budget_max_seconds"]
    assert "at most" not in LB.notes_markdown([row]) and "0.5 h more" in LB.notes_markdown([row])


def test_a_partial_rows_note_gives_its_validation_trend(data_dir, tmp_path):
    """Whether more epochs would still help: a partial row records its validation objective at
    the middle of the logged run and at its end (from its metrics.jsonl), and its note says so;
    a finished row does not."""
    cfg = config(data_dir, models=["fvsbn"], epochs=4,
                 recipes={"fvsbn": dict(fit=dict(epochs=6, batch_size=20, lr=1e-2, early_stopping=6))})
    (row,) = LB.run(cfg, tmp_path)["rows"]
    logged = [json.loads(line) for line in (tmp_path / "binarized-mnist" / "fvsbn" / "metrics.jsonl").read_text().splitlines()]
    points = [(r["epoch"], r["val_loss"]) for r in logged if r.get("val_loss") is not None]
    assert row["partial"] and len(points) >= 2 and points[-1][0] == 4
    assert row["validation"]["to"] == list(points[-1]) and row["validation"]["from"] == list(points[1])
    assert row["validation"]["best"][1] == min(v for _, v in points)
    assert f"went from {points[1][1]:.2f} (epoch 2) to {points[-1][1]:.2f} (epoch 4)" in LB.notes_markdown([row])
    (done,) = LB.run({**cfg, "epochs": None}, tmp_path)["rows"]
    assert not done["partial"] and "validation" not in done
