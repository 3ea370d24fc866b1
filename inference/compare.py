"""Model comparison: LOO across fitted models, and the ``zoo compare RUN_DIR...`` report.

* :func:`compare_models`: fitted models (zoo models, or plain Pyro programs as ``(model,
  guide)`` pairs) on the same data. Models with a posterior (draws from their guide) get
  PSIS-LOO through ``az.compare`` (expected log pointwise predictive density, its standard
  error, the effective number of parameters, Pareto k of the LOO weights, stacking weights).
  Models whose parameters are point estimates (``independent``, ``markov``, ``mixture`` with
  its component summed out, the neural models) have one "draw", over which LOO degenerates to
  the in-sample fit; they are scored instead by the log-likelihood of held-out data, and the
  table says so. Every model gets that held-out log score.
* :func:`compare_runs`: training runs (records of ``zoo train``'s run folders, read by
  :mod:`experiments.compare`) side by side, whatever the model family:
  one table of their metrics (``metrics.json``: NLL, the VAE's ELBO, the sample-quality
  metrics every run has, a GAN's included) and diagnostics (PSIS k-hat of the guide, LOO);
  a metric that does not apply to a run is a dash with a footnote saying why. Figures: ArviZ
  forest plot and overlaid densities of the posterior parameters that runs share (one colour
  per run in both), the loss curves of ``metrics.jsonl``, and each run's sample grid; one
  self-contained HTML report (PNG figures embedded as base64) and a Markdown one.
"""
from __future__ import annotations

import base64
import html
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from inference.diagnostics import az, diagnose, pointwise_log_likelihoods, to_inference_data
from inference.traces import Program, data_tensor, structure

__all__ = ["RunRecord", "compare_models", "compare_runs", "held_out_log_score", "markdown_table"]

KHAT_NOTE = ("k-hat: PSIS diagnostic of the guide as an importance proposal for the posterior (Yao et al. 2018): "
             "< 0.5 good, 0.5-0.7 ok, > 0.7 unreliable, inf for a point estimate (no spread); for per-data-point "
             "latents (a VAE) the largest k-hat over the data points. elpd_loo_per_example: PSIS-LOO expected log "
             "predictive density per training example (higher is better); loo_pareto_k_max: the largest Pareto k "
             "of the LOO weights (> 0.7: that point's LOO estimate is unreliable).")


# ----------------------------------------------------------------------------------------
# fitted models
# ----------------------------------------------------------------------------------------
def _split(entry):
    return entry if isinstance(entry, tuple) else (entry, None)


@torch.no_grad()
def held_out_log_score(model, held_out, idata=None, *, guide=None) -> float:
    """Mean log predictive density of ``held_out`` per example, in nats.

    With ``idata`` (a posterior): ``log mean_s p(x_n | theta_s)``, the posterior predictive;
    without: a zoo model's ``log_prob`` (its point estimate), or for a plain program without latent
    sites its log-likelihood (enumerated sites summed out).
    """
    prog = Program.of(model, held_out, guide)
    if prog.zoo is not None and (idata is None or "posterior" not in idata.groups()):
        return float(prog.zoo.log_prob(prog.args[0]).double().mean())  # the zoo model's point estimate
    draws = {}
    if idata is not None and "posterior" in idata.groups():
        sampled = structure(prog).sampled
        draws = {k: torch.as_tensor(v.values).reshape((-1,) + v.shape[2:]).to(torch.get_default_dtype())
                 for k, v in idata.posterior.data_vars.items() if k in sampled}
    ll, _ = pointwise_log_likelihoods(model, held_out, draws, guide=guide)
    lp = sum(v.double().reshape(v.shape[0], -1) for v in ll.values())  # (S, N)
    return float((torch.logsumexp(lp, 0) - math.log(lp.shape[0])).mean())


def compare_models(models: dict, data, *, held_out=None, num_draws: int = 250, num_chains: int = 4, seed: int = 0) -> dict:
    """Compare fitted models on the same ``data``.

    :param models: ``{name: fitted zoo model}`` or ``{name: (model, guide)}`` (a separate guide, or a
        plain Pyro program with its guide).
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
    rows, bayes = [], {}
    for name, entry in models.items():
        model, guide = _split(entry)
        prog = Program.of(model, data, guide)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            idata = to_inference_data(model, data, guide=guide, num_draws=num_draws, num_chains=num_chains, seed=seed)
        row = dict(name=name, model=prog.name)
        if hasattr(model, "num_parameters"):
            row["num_parameters"] = model.num_parameters()
        has_posterior = "log_likelihood" in idata.groups() and not idata.attrs.get("point_estimate")
        if has_posterior:
            bayes[name] = idata
            row.update(kind="posterior (LOO)", note="")
        else:
            row.update(kind="point estimate",
                       note="parameters are point estimates: LOO over one draw degenerates; compare held-out log score")
        if held_out is not None:
            row["held_out_log_score"] = held_out_log_score(model, held_out, idata if has_posterior else None, guide=guide)
        rows.append(row)
    table = None
    if bayes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = az.compare(bayes, ic="loo") if len(bayes) > 1 else None
            for name, idata in bayes.items():
                loo = az.loo(idata, pointwise=True, var_name=_ll_var(idata))
                row = next(r for r in rows if r["name"] == name)
                row.update(elpd_loo=float(loo.elpd_loo), elpd_loo_se=float(loo.se), p_loo=float(loo.p_loo),
                           pareto_k_max=float(np.max(loo.pareto_k.values)))
                if table is not None:
                    row["weight"] = float(table.loc[name, "weight"])
                    row["rank"] = int(table.loc[name, "rank"])
    columns = ["name", "kind", "num_parameters", "elpd_loo", "elpd_loo_se", "p_loo", "pareto_k_max", "weight",
               "held_out_log_score", "note"]
    return {"rows": rows, "loo": table, "markdown": markdown_table(rows, columns)}


def _ll_var(idata) -> str | None:
    names = list(idata.log_likelihood.data_vars)
    return names[0] if len(names) == 1 else None


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def _cells(rows: list[dict], columns: list[str]):
    """(columns shown, cell strings per row, footnotes): a missing entry with a reason in the row's
    ``_why`` is a dash with a footnote number; equal reasons share one footnote."""
    columns = [c for c in columns if any(r.get(c) is not None or c in r.get("_why", {}) for r in rows)]
    notes, body = {}, []
    for r in rows:
        cells = []
        for c in columns:
            why = r.get("_why", {}).get(c)
            if r.get(c) is None and why:
                key = why
                notes.setdefault(key, len(notes) + 1)
                cells.append(f"- [{notes[key]}]")
            else:
                cells.append(_fmt(r.get(c)))
        body.append(cells)
    return columns, body, [f"[{n}] {why}" for why, n in notes.items()]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (missing entries shown as ``-``, with a footnote where the row
    says why in ``row["_why"][column]``)."""
    columns, body, notes = _cells(rows, columns)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(f"{n}  " for n in notes) + "\n"
    return out


# ----------------------------------------------------------------------------------------
# run folders
# ----------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One training run, as :func:`compare_runs` needs it (``experiments.compare.read_run`` reads
    one from a run folder: the engine itself reads no run folders).

    :ivar dir: where the run's files are (its ``samples.png`` is shown in the report).
    :ivar config: the run's configuration (model, options, data, binarize, ...).
    :ivar metrics: its final metrics (``metrics.json``), or ``{}``.
    :ivar history: its metric log (``metrics.jsonl`` records).
    :ivar model: the trained model, or None (then ``why`` says why).
    :ivar train: a callable returning the training data (for k-hat and LOO), or None.
    """

    dir: Path
    config: dict
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    model: object = None
    why: str | None = None
    train: Callable | None = None

    def __getitem__(self, key):
        return getattr(self, key)


#: columns of the run table, in order (those no run has are dropped)
RUN_COLUMNS = ["run", "model", "data", "objective", "num_parameters", "steps", "train_seconds", "final_loss",
               "valid_nll", "test_nll", "test_bits_per_dim", "test_elbo", "fd", "mmd2", "classes_covered",
               "inference", "khat", "khat_reading", "elpd_loo_per_example", "loo_pareto_k_max"]


def _metric_row(label: str, run: dict) -> dict:
    """The row of ``metrics.json`` entries, with a reason for each one the run lacks."""
    m, c = run["metrics"], run["config"]
    test, valid, quality = m.get("test") or {}, m.get("valid") or {}, m.get("sample_quality") or {}
    row = dict(run=label, model=c.get("model"), data=c.get("data"), objective=c.get("objective") or "default",
               num_parameters=m.get("num_parameters"), steps=m.get("steps"), train_seconds=m.get("train_seconds"),
               test_nll=test.get("nll"), test_bits_per_dim=test.get("bits_per_dim"), valid_nll=valid.get("nll"),
               test_elbo=test.get("elbo"), fd=quality.get("fd"), mmd2=quality.get("mmd2"),
               classes_covered=quality.get("classes_covered"),
               final_loss=next((r["loss"] for r in reversed(run["history"]) if "loss" in r), None))
    why = {}
    note = test.get("nll_note") or valid.get("nll_note")
    for k in ("test_nll", "test_bits_per_dim", "valid_nll"):
        if row[k] is None:
            why[k] = f"{row['model']}: {_short(note)}" if note else f"{row['model']}: not in metrics.json"
    if row["test_elbo"] is None:
        why["test_elbo"] = "no ELBO in metrics.json (models with per-data-point latents report one, e.g. the VAE)"
    for k in ("fd", "mmd2", "classes_covered"):
        if row[k] is None:
            why[k] = f"{row['model']}: no sample-quality metrics in metrics.json"
    if row["final_loss"] is None:
        keys = sorted({k for r in run["history"] for k in r if k not in ("step", "epoch")})
        why["final_loss"] = f"{row['model']}: no 'loss' in metrics.jsonl" + (f" (it logs {', '.join(keys)})" if keys else "")
    row["_why"] = why
    return row


def _short(reason: str) -> str:
    """The first clause of a reason ("a GAN defines no tractable density: its samples ..." -> its head)."""
    reason = reason.replace("not applicable: ", "not applicable (", 1) + ")" if reason.startswith("not applicable: ") \
        else reason
    head = reason.split(": ")[0].split("; ")[0]
    return head + (")" if head.count("(") > head.count(")") else "")


def _diagnostics_into(row: dict, run: dict, num_draws, num_chains, max_loo_points, seed):
    """Add k-hat and LOO to ``row`` where they apply (with the reason where not); returns the
    InferenceData (or None)."""
    why = row["_why"]
    reason = run["why"]
    x = None
    if run["model"] is not None:
        try:
            if run["train"] is None:
                raise ValueError("no training data given")
            x = data_tensor(run["train"]())[:max_loo_points]
        except (FileNotFoundError, ValueError) as e:
            reason = f"data unavailable ({e})"
    if x is None:
        row["inference"] = reason
        for k in ("khat", "khat_reading", "elpd_loo_per_example", "loo_pareto_k_max"):
            why[k] = f"{row['run']}: {_short(reason)}"
        return None
    model = run["model"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        idata = to_inference_data(model, x, num_draws=num_draws, num_chains=num_chains, seed=seed, num_particles=100)
        d = diagnose(model, x, num_samples=num_draws * num_chains, seed=seed)
    st = structure(Program.of(model, x))
    local = st.local and not set(st.sampled) - set(st.local)
    no_density = "log_likelihood" not in idata.groups() and d["khat"] is None
    row["inference"] = ("no density (sample metrics only)" if no_density else "per-data-point latents (guide)" if local
                        else "posterior (guide)" if st.sampled
                        else "point estimate" + (" (enumerated latents summed out)" if st.enumerated else ""))
    if d["khat"] is None:
        why["khat"] = why["khat_reading"] = f"k-hat {_short(d['khat_reading'])}"
    else:
        row.update(khat=d["khat"], khat_reading=d["khat_reading"])
    if "log_likelihood" not in idata.groups():
        msg = next((str(w.message) for w in caught if "log_likelihood" in str(w.message)), "no log-likelihood")
        why["elpd_loo_per_example"] = why["loo_pareto_k_max"] = f"no LOO: {_short(msg.split('group: ')[-1])}"
    elif idata.attrs.get("point_estimate"):
        what = ("log p(x_n) is importance-sampled at the point estimate of the decoder" if local
                else "parameters are point estimates")
        why["elpd_loo_per_example"] = why["loo_pareto_k_max"] = (
            f"no LOO: {what}; LOO over one draw degenerates to the in-sample fit (compare test_nll)")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loo = az.loo(idata, var_name=_ll_var(idata))
        row.update(elpd_loo_per_example=float(loo.elpd_loo) / x.shape[0],
                   loo_pareto_k_max=float(np.max(loo.pareto_k.values)))
    global_sites = [k for k, v in st.sampled.items() if not v["local"]]
    return idata if global_sites and "posterior" in idata.groups() else None


def _data_warning(runs, labels) -> str | None:
    """A sentence when the runs are on different data sets (their NLLs do not compare)."""
    kinds = {}
    for label, run in zip(labels, runs):
        c = run["config"]
        opts = c.get("options") or {}
        key = (c.get("data"), opts.get("data_dim") or opts.get("num_categories"), c.get("binarize"))
        kinds.setdefault(key, []).append(label)
    if len(kinds) < 2:
        return None
    parts = "; ".join(f"{k[0]} ({k[1]}-dim): {', '.join(v)}" for k, v in kinds.items())
    return (f"The runs are on different data sets ({parts}): NLL, bits/dim, ELBO and sample metrics compare only "
            "between runs on the same data set.")


def compare_runs(runs, out_dir, *, names=None, num_draws: int = 200, num_chains: int = 2,
                 max_coords: int = 8, max_loo_points: int = 2000, seed: int = 0) -> dict:
    """Write the comparison of ``runs`` (:class:`RunRecord`, any model families) into ``out_dir``.

    ``zoo compare RUN_DIR...`` is ``experiments.compare.compare_runs``: it reads the run folders
    into records and calls this.

    :param names: labels of the runs (default: the folder names, made unique).
    :param max_coords: how many components of a shared parameter the forest and density
        plots show (the first ones: pixels 0..max_coords-1).
    :param max_loo_points: LOO and k-hat on at most this many training points (the first ones).
    :returns: ``{"rows", "table", "figures", "report_html", "report_md", "json", "warnings"}``.
        Writes ``table.md``, ``comparison.json``, ``loss_curves.png``, ``forest.png`` and
        ``densities.png`` for a posterior parameter that two or more runs share (``forest_SITE.png``
        etc. when there are several), ``report.md`` and the self-contained ``report.html`` (which
        also shows each run's ``samples.png``). Runs on different data sets get a warning (also
        at the top of the report).
    """
    import matplotlib.pyplot as plt  # (headless, matplotlib falls back to Agg by itself)

    runs = list(runs)
    if not runs:
        raise ValueError("give at least one run")
    run_dirs = [Path(run["dir"]) for run in runs]
    labels = list(names) if names else _unique([d.name or str(d) for d in run_dirs])
    if len(labels) != len(runs):
        raise ValueError("one name per run folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mixed = _data_warning(runs, labels)
    if mixed:
        warnings.warn(mixed, UserWarning, stacklevel=2)

    rows, idatas = [], {}
    for label, run in zip(labels, runs):
        row = _metric_row(label, run)
        idata = _diagnostics_into(row, run, num_draws, num_chains, max_loo_points, seed)
        if idata is not None:
            idatas[label] = idata
        rows.append(row)
    table = markdown_table(rows, RUN_COLUMNS)
    (out / "table.md").write_text(table)
    plain = [{k: v for k, v in r.items() if k != "_why"} | {"notes": r["_why"]} for r in rows]
    (out / "comparison.json").write_text(json.dumps({"runs": [str(d) for d in run_dirs], "rows": plain,
                                                     "warnings": [mixed] if mixed else []}, indent=2, default=str) + "\n")
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    figures = {"loss_curves": _loss_curves(plt, runs, labels, colors, out / "loss_curves.png")}
    shared = _shared_sites(idatas)
    for site, members in shared.items():
        group = {k: idatas[k] for k in members}
        suffix = "" if len(shared) == 1 else f"_{site}"
        figures[f"forest{suffix}"] = forest_plot(group, site, max_coords, out / f"forest{suffix}.png",
                                                 colors=[colors[k] for k in group], title=f"{site}: posterior 94% HDI by run")
        figures[f"densities{suffix}"] = density_plot(group, site, max_coords, out / f"densities{suffix}.png",
                                                     colors=[colors[k] for k in group],
                                                     title=f"{site}: marginal posterior densities by run")
    figures = {k: v for k, v in figures.items() if v is not None}
    samples = {label: d / "samples.png" for label, d in zip(labels, run_dirs) if (d / "samples.png").is_file()}
    note = (
        "Posterior parameters in the forest and density plots (the runs that have each): "
        + "; ".join(f"{site} ({', '.join(m)})" for site, m in shared.items())
        + f". Their first {max_coords} components are shown."
        if shared else "No global posterior parameter is shared by two runs: no forest or density plot."
    )
    report = dict(rows=rows, table=table, figures=figures, samples=samples, note=note, run_dirs=run_dirs, warning=mixed)
    (out / "report.md").write_text(_report_md(report, out))
    (out / "report.html").write_text(_report_html(report))
    return dict(rows=rows, table=out / "table.md", figures=figures, report_html=out / "report.html",
                report_md=out / "report.md", json=out / "comparison.json", warnings=[mixed] if mixed else [])


def _unique(names: list[str]) -> list[str]:
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _shared_sites(idatas: dict) -> dict[str, list[str]]:
    """``{site: [runs that have it]}`` for each posterior site (same name and shape) of two or more
    runs (or every site of a single run)."""
    have = {}
    for label, idata in idatas.items():
        for k, v in idata.posterior.data_vars.items():
            if "obs" not in v.dims:  # per-data-point latents are no shared parameter
                have.setdefault((k, tuple(v.shape[2:])), []).append(label)
    minimum = 1 if len(idatas) == 1 else 2
    out = {}
    for (site, _), members in sorted(have.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(members) >= minimum and site not in out:
            out[site] = members
    return out


# ----------------------------------------------------------------------------------------
# figures (shared with experiments/compare_inference.py)
# ----------------------------------------------------------------------------------------
def _first_coords(idata, site: str, k: int) -> dict:
    v = idata.posterior[site]
    return {d: v[d].values[:k] for d in v.dims[2:]}


def forest_plot(idatas: dict, site: str, max_coords: int, path, *, colors: list[str], title: str):
    """ArviZ forest plot (94% HDI) of ``site`` in every InferenceData, one colour per entry, one title."""
    import matplotlib.pyplot as plt

    coords = _first_coords(next(iter(idatas.values())), site, max_coords)
    n = int(np.prod([len(v) for v in coords.values()])) if coords else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_forest(list(idatas.values()), model_names=list(idatas), var_names=[site], coords=coords,
                              combined=True, hdi_prob=0.94, colors=colors, figsize=(7, 1.4 + 0.3 * n * len(idatas)))
    fig = np.ravel(axes)[0].figure
    for ax in np.ravel(axes):
        ax.set_title("")
    fig.suptitle(title)
    return _save(plt, fig, path)


def density_plot(idatas: dict, site: str, max_coords: int, path, *, colors: list[str], title: str):
    """Overlaid marginal densities of ``site`` (first components), one colour per entry with a legend;
    entries whose draws do not vary (a point estimate) are left out and the legend says so."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    coords = _first_coords(next(iter(idatas.values())), site, max_coords)
    keep = {k: i for k, i in idatas.items() if float(np.asarray(i.posterior[site].values).std(axis=(0, 1)).min()) > 0}
    if not keep:
        return None
    cols = [c for k, c in zip(idatas, colors) if k in keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subsets = [i.posterior[[site]].sel(coords) for i in keep.values()]  # no coords= in arviz 0.2x
        axes = az.plot_density(subsets, data_labels=list(keep), var_names=[site], hdi_prob=0.99, shade=0.1,
                               colors=cols)
    flat = np.ravel(axes)
    fig = flat[0].figure
    for ax in flat:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles = [Line2D([], [], color=c, lw=2, label=k) for k, c in zip(keep, cols)]
    dropped = [k for k in idatas if k not in keep]
    if dropped:
        handles.append(Line2D([], [], color="none", label="not shown (a point):\n" + "\n".join(dropped)))
    fig.suptitle(title, x=0.02, ha="left", fontsize=16)
    fig.tight_layout(rect=(0, 0, 0.84, 0.93))  # the legend in the right margin, clear of the panels
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.85, 0.9), fontsize=14, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _loss_curves(plt, runs, labels, colors, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    any_line = False
    for label, run in zip(labels, runs):
        h = [r for r in run["history"] if "loss" in r]
        if h:
            ax.plot([r["step"] for r in h], [r["loss"] for r in h], color=colors[label], label=f"{label}: train")
            any_line = True
            v = [r for r in h if "val_loss" in r]
            if v:
                ax.plot([r["step"] for r in v], [r["val_loss"] for r in v], "--", color=colors[label],
                        label=f"{label}: valid")
    if not any_line:
        plt.close(fig)
        return None
    values = [r[k] for run in runs for r in run["history"][len(run["history"]) // 10:] for k in ("loss", "val_loss")
              if k in r and r[k] is not None and math.isfinite(r[k])]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per example; a GAN's: its own objective)")
    ax.set_title("loss curves (metrics.jsonl)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------
def _report_md(report, out: Path) -> str:
    parts = ["# Comparison of runs", "", "Runs: " + ", ".join(f"`{d}`" for d in report["run_dirs"]), ""]
    if report["warning"]:
        parts += [f"**Warning:** {report['warning']}", ""]
    parts += [report["table"], KHAT_NOTE, "", report["note"], ""]
    for name, path in report["figures"].items():
        parts += [f"## {name.replace('_', ' ')}", "", f"![{name}]({Path(path).name})", ""]
    if report["samples"]:
        parts += ["## samples", ""]
        for label, path in report["samples"].items():
            parts += [f"![samples: {label}]({Path(path).resolve()})", ""]
    return "\n".join(parts)


def _img(path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _report_html(report) -> str:
    columns, body, notes = _cells(report["rows"], RUN_COLUMNS)
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    text = {"inference", "khat_reading"}  # long words wrap there; numbers and names never break
    rows = "".join("<tr>" + "".join(f"<td{' class=text' if col in text else ''}>{html.escape(c)}</td>"
                                    for col, c in zip(columns, r)) + "</tr>" for r in body)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    foot = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    imgs = "".join(f"<h2>{html.escape(name.replace('_', ' '))}</h2>{_img(path, name)}"
                   for name, path in report["figures"].items())
    if report["samples"]:
        imgs += "<h2>samples</h2><div class='grid'>" + "".join(
            f"<figure>{_img(p, 'samples: ' + label)}<figcaption>{html.escape(label)}</figcaption></figure>"
            for label, p in report["samples"].items()) + "</div>"
    runs = ", ".join(f"<code>{html.escape(str(d))}</code>" for d in report["run_dirs"])
    warning = f"<p class='warn'><b>Warning:</b> {html.escape(report['warning'])}</p>" if report["warning"] else ""
    style = ("*{box-sizing:border-box}body{font-family:sans-serif;margin:0 auto;padding:1em;max-width:1240px}"
             "table{border-collapse:collapse;font-size:0.78em;width:100%}"
             "td,th{border:1px solid #ccc;padding:3px 4px;text-align:right}td{white-space:nowrap}"
             "th{overflow-wrap:anywhere}td.text{white-space:normal;text-align:left;min-width:9em}"
             "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%;height:auto}code{overflow-wrap:anywhere}.note{font-size:0.85em;color:#333}"
             ".warn{background:#fff3cd;padding:0.5em}.grid{display:flex;flex-wrap:wrap;gap:1em}"
             ".grid figure{margin:0;width:280px}.grid figcaption{text-align:center;font-size:0.85em}"
             "ol.foot{font-size:0.8em;color:#333;padding-left:0;list-style:none}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>zoo compare</title><style>{style}</style></head>"
            f"<body><h1>Comparison of runs</h1><p>Runs: {runs}</p>{warning}{table}<ol class='foot'>{foot}</ol>"
            f"<p class='note'>{html.escape(KHAT_NOTE)}</p><p class='note'>{html.escape(report['note'])}</p>{imgs}"
            "</body></html>\n")
