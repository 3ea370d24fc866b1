"""Model comparison (LOO, held-out log score) and the ``zoo compare`` report on run folders."""
import json
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from experiments.cli import main
from inference.compare import compare_models, compare_runs, held_out_log_score


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PointBernoulli(zoo.ZooModel):
    """Independent Bernoulli pixels with point-estimate probabilities (no latent sites)."""

    def __init__(self, data_dim=3):
        super().__init__()
        self.data_dim = data_dim
        self.logits = torch.nn.Parameter(torch.zeros(data_dim))

    def model(self, x=None, num_data=None):
        with zoo.data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def num_parameters(self):
        return self.data_dim


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.tensor([0.1, 0.5, 0.85]).expand(n, -1), generator=g)


def set_to_exact(model, x):
    """Put the conjugate guide at the exact posterior."""
    b = model.exact_posterior(x)["p"].base_dist
    model.q_mean_unconstrained.data = torch.logit(b.mean)
    model.q_concentration_unconstrained.data = torch.log(b.concentration1 + b.concentration0)


def test_compare_models_loo_and_point_estimates():
    x, test = data(40, 0), data(500, 1)
    good = zoo.create("bernoulli", data_dim=3)
    bad = zoo.create("bernoulli", data_dim=3, prior=(300.0, 300.0))  # pins every p near 0.5
    set_to_exact(good, x)
    set_to_exact(bad, x)
    point = PointBernoulli()
    point.logits.data = torch.logit((x.sum(0) + 0.5) / (len(x) + 1))
    result = compare_models({"uniform prior": good, "tight prior": bad, "point": point}, x, held_out=test)
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["point"]["kind"] == "point estimate" and "elpd_loo" not in rows["point"]
    assert "point estimates" in rows["point"]["note"]
    for name in ("uniform prior", "tight prior"):
        assert rows[name]["kind"] == "posterior (LOO)" and math.isfinite(rows[name]["elpd_loo"])
    # the data are far from 0.5 in two pixels: the uniform prior predicts them better
    assert rows["uniform prior"]["elpd_loo"] > rows["tight prior"]["elpd_loo"] + 5
    assert rows["uniform prior"]["weight"] > 0.9 and rows["uniform prior"]["rank"] == 0
    assert rows["uniform prior"]["held_out_log_score"] > rows["tight prior"]["held_out_log_score"]
    assert 2 < rows["uniform prior"]["p_loo"] < 4
    table = result["loo"]
    assert list(table.index) == ["uniform prior", "tight prior"]
    assert "| point | point estimate |" in result["markdown"]


def test_held_out_log_score_is_posterior_predictive():
    """With independent pixels, the posterior predictive of a new x is Bernoulli(E[p]) per pixel,
    which is what log_prob computes at the posterior mean."""
    x, test = data(40, 0), data(300, 1)
    model = zoo.create("bernoulli", data_dim=3)
    set_to_exact(model, x)
    idata = inference.to_inference_data(model, x, num_draws=2000, num_chains=4)
    by_draws = held_out_log_score(model, test, idata)
    exact = float(model.log_prob(test).mean())
    assert by_draws == pytest.approx(exact, abs=0.01)
    assert held_out_log_score(model, test) == pytest.approx(exact)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    from experiments.train import train_and_evaluate

    root = tmp_path_factory.mktemp("runs")
    for name, options in (("uniform", {}), ("tight", {"prior": [20.0, 20.0]})):
        train_and_evaluate(dict(model="bernoulli", steps=60, options=options, progress=False), root / name)
    return root / "uniform", root / "tight"


def test_compare_runs_writes_table_figures_and_report(run_dirs, tmp_path):
    out = tmp_path / "report"
    result = compare_runs(run_dirs, out, max_coords=4, num_draws=100, num_chains=2, max_loo_points=300)
    rows = {r["run"]: r for r in result["rows"]}
    assert set(rows) == {"uniform", "tight"}
    for r in rows.values():
        metrics = json.loads((run_dirs[0].parent / r["run"] / "metrics.json").read_text())
        assert r["test_nll"] == metrics["test"]["nll"] and r["steps"] == 60
        assert r["inference"] == "posterior (guide)" and math.isfinite(r["khat"])
        assert math.isfinite(r["elpd_loo_per_example"])
    table = (out / "table.md").read_text()
    assert table.count("\n") == 4 and "| uniform |" in table and "| tight |" in table
    for name in ("loss_curves", "forest", "densities"):
        path = out / f"{name}.png"
        assert result["figures"][name] == path and path.stat().st_size > 5_000
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 3
    assert not re.search(r"src='(?!data:)", html)  # self-contained: every image embedded
    md = (out / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file()
    assert json.loads((out / "comparison.json").read_text())["rows"][0]["run"] == "uniform"


def test_zoo_compare_command(run_dirs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["compare", *map(str, run_dirs), "--out", str(out), "--names", "A", "B"]) == 0
    printed = capsys.readouterr().out
    assert "| A |" in printed and "| B |" in printed and "report.html" in printed
    assert (out / "report.html").is_file() and (out / "forest.png").is_file()
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
