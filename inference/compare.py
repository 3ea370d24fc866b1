"""Model comparison: LOO across fitted zoo models, and the ``zoo compare RUN_DIR...`` report.

* :func:`compare_models`: fitted models on the same data. Models with a posterior (the
  conjugate ones: draws from their guide) get PSIS-LOO through ``az.compare`` (expected
  log pointwise predictive density, its standard error, the effective number of
  parameters, Pareto k of the LOO weights, stacking weights). Models whose parameters are
  point estimates (``independent``, ``markov``, ``mixture``, the neural models) have one
  "draw", over which LOO degenerates to the in-sample fit; they are scored instead by the
  log-likelihood of held-out data, and the table says so. Every model gets that held-out
  log score (for a posterior: the log posterior-predictive density, averaged over draws),
  so it is the one column on which all rows compare.
* :func:`compare_runs`: run folders of ``zoo train`` side by side: one table of their
  metrics (``metrics.json``) and diagnostics (PSIS k-hat of the guide, LOO), figures
  (ArviZ forest plot of the parameters the runs share, their posterior densities overlaid,
  the loss curves of ``metrics.jsonl`` overlaid) and one self-contained HTML report (PNG
  figures embedded as base64) plus a Markdown one beside the figures.
"""
from __future__ import annotations

import base64
import html
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from inference.diagnostics import (
    az,
    diagnose,
    latent_sites,
    pointwise_log_likelihood,
    to_inference_data,
)
from inference.svi import as_tensor

__all__ = ["compare_models", "compare_runs", "held_out_log_score", "markdown_table"]


# ----------------------------------------------------------------------------------------
# fitted models
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def held_out_log_score(model, held_out, idata=None) -> float:
    """Mean log predictive density of ``held_out`` per example, in nats.

    With ``idata`` (a posterior): ``log mean_s p(x_n | theta_s)``, the posterior predictive;
    without: ``model.log_prob`` at the point estimate.
    """
    x = as_tensor(held_out)
    if idata is None or "posterior" not in idata.groups():
        return float(model.log_prob(x).double().mean())
    draws = {k: torch.as_tensor(v.values).reshape((-1,) + v.shape[2:]).to(torch.get_default_dtype())
             for k, v in idata.posterior.data_vars.items()}
    lp = pointwise_log_likelihood(model, x, draws).double()  # (S, N)
    return float((torch.logsumexp(lp, 0) - math.log(lp.shape[0])).mean())


def compare_models(models: dict, data, *, held_out=None, num_draws: int = 250, num_chains: int = 4, seed: int = 0) -> dict:
    """Compare fitted zoo models on the same ``data``.

    :param models: ``{name: fitted model}`` (or ``{name: (model, guide)}`` for a separate guide).
    :param data: the training data the models were fitted to (LOO is computed on it).
    :param held_out: data none of them saw (e.g. the test split), for the held-out log score.
    :returns: ``{"rows": [...], "loo": DataFrame or None, "markdown": str}``. Each row has
        ``name``, ``kind`` (``"posterior (LOO)"`` or ``"point estimate"``), ``elpd_loo``,
        ``elpd_loo_se``, ``p_loo``, ``pareto_k_max``, ``weight`` (stacking; Bayesian rows),
        ``held_out_log_score`` (nats per example) and ``note``. ``loo`` is ``az.compare``'s
        table over the Bayesian models (None if there are none).
    """
    if not models:
        raise ValueError("no models to compare")
    x = as_tensor(data)
    rows, bayes = [], {}
    for name, entry in models.items():
        model, guide = entry if isinstance(entry, tuple) else (entry, None)
        has_posterior = bool(latent_sites(model, x))
        idata = to_inference_data(model, x, guide=guide, num_draws=num_draws, num_chains=num_chains, seed=seed)
        row = dict(name=name, model=type(model).__name__, num_parameters=model.num_parameters())
        if has_posterior:
            bayes[name] = idata
            row["kind"] = "posterior (LOO)"
            row["note"] = ""
        else:
            row["kind"] = "point estimate"
            row["note"] = "parameters are point estimates: LOO over one draw degenerates; compare held-out log score"
        if held_out is not None:
            row["held_out_log_score"] = held_out_log_score(model, held_out, idata if has_posterior else None)
        rows.append(row)
    table = None
    if bayes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = az.compare(bayes, ic="loo") if len(bayes) > 1 else None
            for name, idata in bayes.items():
                loo = az.loo(idata, pointwise=True)
                row = next(r for r in rows if r["name"] == name)
                row.update(
                    elpd_loo=float(loo.elpd_loo),
                    elpd_loo_se=float(loo.se),
                    p_loo=float(loo.p_loo),
                    pareto_k_max=float(np.max(loo.pareto_k.values)),
                )
                if table is not None:
                    row["weight"] = float(table.loc[name, "weight"])
                    row["rank"] = int(table.loc[name, "rank"])
    columns = ["name", "kind", "num_parameters", "elpd_loo", "elpd_loo_se", "p_loo", "pareto_k_max", "weight", "held_out_log_score", "note"]
    return {"rows": rows, "loo": table, "markdown": markdown_table(rows, columns)}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (missing entries shown as ``-``)."""
    columns = [c for c in columns if any(c in r for r in rows)]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            if math.isnan(v):
                return "nan"
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# run folders
# ----------------------------------------------------------------------------------------
def _read_run(run_dir: Path) -> dict:
    """config, metrics, metric history and the model (with its checkpoint) of a run folder."""
    import zoo
    from inference.checkpoint import load_checkpoint
    from inference.loop import CHECKPOINT, METRICS

    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        history = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()] \
            if (run_dir / METRICS).is_file() else []
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir}: corrupt JSON ({e})") from None
    model = None
    if (run_dir / CHECKPOINT).is_file():
        model = zoo.create(config["model"], **config.get("options", {}))
        state = load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(state["modules"]["model"])
        model.eval()
    return dict(dir=run_dir, config=config, metrics=metrics, history=history, model=model)


def _train_data(config: dict):
    import zoo

    return zoo.load(config["data"], "train", root=config.get("data_dir"), binarize=config.get("binarize", "threshold"),
                    seed=config.get("seed", 0))


def compare_runs(run_dirs, out_dir, *, names=None, num_draws: int = 200, num_chains: int = 2,
                 max_coords: int = 8, max_loo_points: int = 2000, seed: int = 0) -> dict:
    """Write the comparison of ``run_dirs`` into ``out_dir``.

    :param names: labels of the runs (default: the folder names, made unique).
    :param max_coords: how many components of a shared parameter the forest and density
        plots show (the first ones: pixels 0..max_coords-1).
    :param max_loo_points: LOO on at most this many training points (the first ones).
    :returns: ``{"rows", "table", "figures", "report_html", "report_md", "json"}`` (paths).
        Writes ``table.md``, ``comparison.json``, ``loss_curves.png``, ``forest.png`` and
        ``densities.png`` for a posterior parameter that two or more runs share (``forest_SITE.png``
        etc. when there are several), ``report.md`` and the self-contained ``report.html``.
    :raises FileNotFoundError: a folder is not a run folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("give at least one run folder")
    runs = [_read_run(d) for d in run_dirs]
    labels = list(names) if names else _unique([d.name or str(d) for d in run_dirs])
    if len(labels) != len(runs):
        raise ValueError("one name per run folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows, idatas = [], {}
    for label, run in zip(labels, runs):
        m, c = run["metrics"], run["config"]
        test, valid = m.get("test") or {}, m.get("valid") or {}
        row = dict(
            run=label, model=c.get("model"), data=c.get("data"), objective=c.get("objective") or "default",
            num_parameters=m.get("num_parameters"), steps=m.get("steps"), train_seconds=m.get("train_seconds"),
            test_nll=test.get("nll"), test_bits_per_dim=test.get("bits_per_dim"), valid_nll=valid.get("nll"),
            final_loss=run["history"][-1].get("loss") if run["history"] else None,
        )
        model = run["model"]
        if model is None:
            row["inference"] = "no checkpoint"
        else:
            try:
                x = as_tensor(_train_data(c))[:max_loo_points]
            except (FileNotFoundError, ValueError) as e:
                row["inference"] = f"data unavailable ({e})"
                x = None
            if x is not None:
                if latent_sites(model, x):
                    idata = to_inference_data(model, x, num_draws=num_draws, num_chains=num_chains, seed=seed)
                    idatas[label] = idata
                    d = diagnose(model, x, num_samples=num_draws * num_chains, seed=seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        loo = az.loo(idata)
                    row.update(inference="posterior (guide)", khat=d["khat"], khat_reading=d["khat_reading"],
                               elpd_loo_per_example=float(loo.elpd_loo) / x.shape[0],
                               loo_pareto_k_max=float(np.max(loo.pareto_k.values)))
                else:
                    row["inference"] = "point estimate (no posterior: no k-hat or LOO)"
        rows.append(row)

    columns = ["run", "model", "data", "objective", "num_parameters", "steps", "train_seconds", "final_loss",
               "valid_nll", "test_nll", "test_bits_per_dim", "inference", "khat", "khat_reading",
               "elpd_loo_per_example", "loo_pareto_k_max"]
    table = markdown_table(rows, columns)
    (out / "table.md").write_text(table)
    (out / "comparison.json").write_text(json.dumps({"runs": [str(d) for d in run_dirs], "rows": rows}, indent=2, default=str) + "\n")

    figures = {"loss_curves": _loss_curves(plt, runs, labels, out / "loss_curves.png")}
    shared = _shared_sites(idatas)
    for site, members in shared.items():
        group = {k: idatas[k] for k in members}
        suffix = "" if len(shared) == 1 else f"_{site}"
        figures[f"forest{suffix}"] = _forest(plt, group, [site], max_coords, out / f"forest{suffix}.png")
        figures[f"densities{suffix}"] = _densities(plt, group, [site], max_coords, out / f"densities{suffix}.png")
    figures = {k: v for k, v in figures.items() if v is not None}
    note = (
        "Shared posterior parameters: "
        + "; ".join(f"{site} ({', '.join(m)})" for site, m in shared.items())
        + f". Forest and density plots show their first {max_coords} components."
        if shared else "No posterior parameter is shared by two runs: no forest or density plot."
    )
    md = _report_md(rows, table, figures, note, run_dirs)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_report_html(table, figures, note, run_dirs))
    return dict(rows=rows, table=out / "table.md", figures=figures, report_html=out / "report.html",
                report_md=out / "report.md", json=out / "comparison.json")


def _unique(names: list[str]) -> list[str]:
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _shared_sites(idatas: dict) -> dict[str, list[str]]:
    """``{site: [runs]}`` for each posterior site (same name and shape) that two or more runs
    have (or every site of a single run)."""
    have = {}
    for label, idata in idatas.items():
        for k, v in idata.posterior.data_vars.items():
            have.setdefault((k, tuple(v.shape[2:])), []).append(label)
    minimum = 1 if len(idatas) == 1 else 2
    out = {}
    for (site, _), members in sorted(have.items()):
        if len(members) >= minimum and site not in out:
            out[site] = members
    return out


def _first_coords(idata, site: str, k: int) -> dict:
    v = idata.posterior[site]
    return {d: v[d].values[:k] for d in v.dims[2:]}


def _forest(plt, idatas, shared, max_coords, path):
    first = next(iter(idatas.values()))
    coords = {}
    for s in shared:
        coords.update(_first_coords(first, s, max_coords))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_forest(list(idatas.values()), model_names=list(idatas), var_names=shared, coords=coords,
                              combined=True, hdi_prob=0.94, figsize=(7, 1.2 + 0.35 * max_coords * len(shared) * len(idatas) ** 0.5))
    fig = np.ravel(axes)[0].figure
    fig.suptitle("posterior 94% HDI (forest)")
    return _save(plt, fig, path)


def _densities(plt, idatas, shared, max_coords, path):
    first = next(iter(idatas.values()))
    coords = {}
    for s in shared:
        coords.update(_first_coords(first, s, max_coords))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subsets = [i.posterior[shared].sel(coords) for i in idatas.values()]  # no coords= in 0.2x
        axes = az.plot_density(subsets, data_labels=list(idatas), var_names=shared, hdi_prob=0.99, shade=0.1)
    fig = np.ravel(axes)[0].figure
    return _save(plt, fig, path)


def _loss_curves(plt, runs, labels, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    any_line = False
    for label, run in zip(labels, runs):
        h = [r for r in run["history"] if "loss" in r]
        if h:
            line, = ax.plot([r["step"] for r in h], [r["loss"] for r in h], label=f"{label}: train")
            any_line = True
            v = [r for r in h if "val_loss" in r]
            if v:
                ax.plot([r["step"] for r in v], [r["val_loss"] for r in v], "--", color=line.get_color(), label=f"{label}: valid")
    if not any_line:
        plt.close(fig)
        return None
    values = [r[k] for run in runs for r in run["history"][len(run["history"]) // 10:] for k in ("loss", "val_loss") if k in r]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per example)")
    ax.set_title("loss curves (metrics.jsonl)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _report_md(rows, table, figures, note, run_dirs) -> str:
    parts = ["# Comparison of runs", "", "Runs: " + ", ".join(f"`{d}`" for d in run_dirs), "", table, note, ""]
    for name, path in figures.items():
        parts += [f"## {name.replace('_', ' ')}", "", f"![{name}]({Path(path).name})", ""]
    parts += ["k-hat: PSIS diagnostic of the guide as a proposal for the posterior (< 0.5 good, 0.5-0.7 ok, > 0.7 unreliable). "
              "elpd_loo_per_example: PSIS-LOO expected log predictive density per training example (higher is better).", ""]
    return "\n".join(parts)


def _report_html(table_md, figures, note, run_dirs) -> str:
    lines = [ln for ln in table_md.strip().splitlines() if ln.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
             + f"</tr></thead><tbody>{rows}</tbody></table>")
    imgs = ""
    for name, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        imgs += f"<h2>{html.escape(name.replace('_', ' '))}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
    runs = ", ".join(f"<code>{html.escape(str(d))}</code>" for d in run_dirs)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:0.85em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>zoo compare</title><style>{style}</style></head>"
            f"<body><h1>Comparison of runs</h1><p>Runs: {runs}</p>{table}<p>{html.escape(note)}</p>{imgs}"
            "<p>k-hat: PSIS diagnostic of the guide as a proposal for the posterior (&lt; 0.5 good, 0.5-0.7 ok, "
            "&gt; 0.7 unreliable). elpd_loo_per_example: PSIS-LOO expected log predictive density per training "
            "example (higher is better).</p></body></html>\n")
