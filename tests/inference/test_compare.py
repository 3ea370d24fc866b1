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
from experiments.compare import compare_runs
from inference.compare import compare_models, held_out_log_score


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
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 4
    assert "| uniform |" in table and "| tight |" in table
    for name in ("loss_curves", "forest", "densities"):
        path = out / f"{name}.png"
        assert result["figures"][name] == path and path.stat().st_size > 5_000
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 3 + 2  # figures and each run's sample grid
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


class UserPixels(zoo.ZooModel):
    """A user's own model class (registered by the test): independent pixels with logits theta."""

    support = "binary"
    fit_defaults = dict(lr=0.05)

    def __init__(self, data_dim=64):
        super().__init__()
        self.data_dim = data_dim
        self.logits = torch.nn.Parameter(torch.zeros(data_dim))

    def model(self, x=None, num_data=None):
        with zoo.data_plate(x, num_data):
            return pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def num_parameters(self):
        return self.data_dim


FAMILIES = {"bernoulli": {}, "mixture": {"num_components": 3}, "vae": {"latent_dim": 2, "hidden": [16]},
            "made": {"hidden_sizes": [16]}, "gan": {}, "test_user_pixels": {}}


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    from experiments.train import train_and_evaluate

    if "test_user_pixels" not in zoo.available():
        zoo.register("test_user_pixels", UserPixels)
    root = tmp_path_factory.mktemp("families")
    for name, options in FAMILIES.items():
        train_and_evaluate(dict(model=name, steps=15, options=options, progress=False), root / name)
    return [root / name for name in FAMILIES]


def test_compare_runs_every_family(family_runs, tmp_path):
    """One table with a row per run whatever its family: a GAN by its sample metrics, a VAE by IS-NLL
    and ELBO, the mixture with its component summed out; every dash has a footnote; the report renders."""
    out = tmp_path / "families"
    result = compare_runs(family_runs, out, num_draws=20, num_chains=2, max_loo_points=100, max_coords=3)
    rows = {r["run"]: r for r in result["rows"]}
    assert list(rows) == list(FAMILIES)
    assert rows["gan"]["test_nll"] is None and "density" in rows["gan"]["_why"]["test_nll"]
    assert math.isfinite(rows["gan"]["fd"]) and rows["gan"]["inference"].startswith("no density")
    assert math.isfinite(rows["vae"]["test_nll"]) and math.isfinite(rows["vae"]["test_elbo"])
    assert rows["vae"]["test_elbo"] <= rows["vae"]["test_nll"] * -1 + 1.0  # ELBO <= log p(x) (up to IS noise)
    assert rows["vae"]["inference"].startswith("per-data-point") and math.isfinite(rows["vae"]["khat"])
    assert "enumerated" in rows["mixture"]["inference"] and math.isfinite(rows["mixture"]["test_nll"])
    assert rows["bernoulli"]["inference"] == "posterior (guide)" and math.isfinite(rows["bernoulli"]["elpd_loo_per_example"])
    assert math.isfinite(rows["test_user_pixels"]["test_nll"])
    table = (out / "table.md").read_text()
    body = [ln for ln in table.splitlines() if ln.startswith("| ")][2:]
    assert len(body) == len(FAMILIES)  # one table, a row per run
    # every dash carries a footnote, and each footnote is listed below the table
    cells = [c.strip() for ln in body for c in ln.strip("|").split("|")]
    marks = {c for c in cells if c.startswith("- [")}
    assert "-" not in cells and marks
    for m in marks:
        assert f"\n{m[2:]} " in "\n" + table
    html = (out / "report.html").read_text()
    assert html.count("<figcaption>") == len(FAMILIES)  # every run's sample grid (the GAN's too)
    assert (out / "forest.png").is_file() and (out / "densities.png").is_file() and (out / "loss_curves.png").is_file()


def test_compare_runs_on_different_data_warns(run_dirs, tmp_path):
    import shutil

    other = tmp_path / "mnist_run"
    shutil.copytree(run_dirs[0], other)
    config = json.loads((other / "config.json").read_text())
    config.update(data="mnist", options={**config.get("options", {}), "data_dim": 784})
    (other / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="different data sets"):
        result = compare_runs([run_dirs[0], other], tmp_path / "mixed", num_draws=20, num_chains=2, max_loo_points=50)
    assert "different data sets" in (tmp_path / "mixed" / "report.html").read_text()
    row = result["rows"][1]
    assert row["inference"].startswith("model not loaded")  # a 784-pixel model cannot load a 64-pixel checkpoint
    assert row.get("khat") is None and row["_why"]["khat"]


CHROMIUM = "/usr/bin/chromium"
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const wide = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).length;
  document.body.setAttribute('data-probe', JSON.stringify({scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth, images: imgs.length, broken: bad, wide: wide}));
});</script>"""


@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason="headless Chromium not installed")
def test_report_fits_1280_px_and_every_image_loads(family_runs, tmp_path):
    import subprocess

    out = tmp_path / "render"
    compare_runs(family_runs, out, num_draws=20, num_chains=2, max_loo_points=100, max_coords=3)
    page = out / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="([^"]+)"', dom)
    assert found, dom[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["inner"] == 1280 and probe["scroll"] <= probe["inner"], probe
    assert probe["wide"] == 0 and probe["broken"] == 0 and probe["images"] >= 3 + len(FAMILIES), probe
