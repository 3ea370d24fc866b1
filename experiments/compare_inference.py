"""Variational inference against the truth: guides and objectives vs NUTS vs the exact posterior.

On the two conjugate models with real data - Beta-Bernoulli on the pixels of ``digits``
(one Beta posterior per pixel-on rate) and Dirichlet-Categorical on the ``digits_labels``
class frequencies - every method's posterior is compared with the exact one:

===================  ===========================================================================
``exact``            the closed-form posterior's draws: the Monte Carlo floor of the error columns
``conjugate``        the hand-written guide of the exact posterior's family (Beta / Dirichlet), ELBO
``conjugate_iwae``   the same guide trained with the IWAE bound (``num_particles`` = K)
``AutoDelta``        MAP point estimate (no spread: sd error 100%, no proposal, k-hat = inf)
``AutoNormal``       mean-field Normal in the unconstrained space (logit / stick-breaking)
``AutoMVN``          ``AutoMultivariateNormal``: full-covariance Normal in that space
``NUTS``             ``inference.mcmc``: several chains, r_hat and bulk ESS reported
===================  ===========================================================================

Per method: the largest and mean absolute error of the posterior means, the largest and mean
relative error of the posterior standard deviations, the mean 1-Wasserstein distance of the
marginals (all from ``num_draws`` draws of each method), KL(q || exact) where closed-form,
the PSIS k-hat of the method as an importance proposal for the exact posterior (guides only;
Yao et al. 2018), r_hat / ESS (NUTS) and the wall time of fitting or sampling.

Writes to ``workdir``: ``table.md`` (one table per model), ``results.json``,
``forest_<model>.png`` (ArviZ forest plot of every method on the first ``plot_coords``
components) and ``density_<model>.png`` (ArviZ densities of the methods overlaid).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

import inference
import zoo
from inference.mcmc import NUM_SAMPLES, WARMUP_STEPS
from inference.compare import density_plot, forest_plot, markdown_table
from inference.diagnostics import az, diagnose, guide_from_distributions, posterior_distances, to_inference_data

CONFIG = dict(
    data_dir=None,
    models=["bernoulli", "categorical"],
    methods=["exact", "conjugate", "conjugate_iwae", "AutoDelta", "AutoNormal", "AutoMVN", "NUTS"],
    num_pixels=64,  # the first pixels of digits for the Beta-Bernoulli model (64: all)
    max_train=None,  # use the first N training examples (None: all 1197)
    steps=3000,  # SVI steps of every guide (the conjugate models' fit_defaults)
    conjugate_lr=None,  # None: the model's fit_defaults lr (0.3)
    autoguide_lr=0.05,
    num_particles=4,  # ELBO particles; K of IWAE
    num_draws=2000,  # posterior draws per method for the errors and k-hat
    nuts_samples=None,  # None: inference.mcmc's defaults (1000 draws per chain after 500 warm-up steps)
    nuts_warmup=None,
    nuts_chains=4,
    plot_coords=6,
    seed=0,
)

TINY = dict(num_pixels=5, max_train=300, steps=100, num_draws=200, nuts_samples=40, nuts_warmup=40, nuts_chains=2,
            plot_coords=3)

GUIDES = {"AutoDelta": AutoDelta, "AutoNormal": AutoNormal, "AutoMVN": AutoMultivariateNormal}


def load_data(name: str, config: dict) -> tuple[zoo.ZooModel, torch.Tensor]:
    """The model and its training data (``digits`` pixels or ``digits_labels``)."""
    if name == "bernoulli":
        x = zoo.load("digits", "train", root=config["data_dir"]).x[:, : int(config["num_pixels"])]
        make = lambda: zoo.create("bernoulli", data_dim=x.shape[1])  # noqa: E731
    elif name == "categorical":
        data = zoo.load("digits_labels", "train", root=config["data_dir"])
        x = data.x
        make = lambda: zoo.create("categorical", num_categories=data.num_categories)  # noqa: E731
    else:
        raise ValueError(f"compare_inference knows the conjugate models 'bernoulli' and 'categorical', not {name!r}")
    if config["max_train"]:
        x = x[: int(config["max_train"])]
    return make, x


def run_method(method: str, make, x: torch.Tensor, config: dict) -> dict:
    """Fit or sample one method; returns its draws, timings and diagnostics."""
    pyro.set_rng_seed(config["seed"])
    model = make()
    exact = model.exact_posterior(x)
    S = int(config["num_draws"])
    out = {"method": method}
    start = time.perf_counter()
    if method == "exact":
        draws = _draws(exact, S, config["seed"])
        seconds = time.perf_counter() - start
        d = diagnose(model, x, guide=guide_from_distributions(exact), num_samples=S, seed=config["seed"])
        out.update(seconds=seconds, draws=draws, q=exact, khat=d["khat"])
    elif method == "NUTS":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", inference.ConvergenceWarning)
            lengths = {k: v for k, v in (("num_samples", config["nuts_samples"]), ("warmup_steps", config["nuts_warmup"]))
                       if v is not None}
            run = inference.mcmc(model, x, num_chains=config["nuts_chains"], seed=config["seed"], **lengths)
        conv = run.convergence
        grouped = {k: v for k, v in run.get_samples(group_by_chain=True).items() if k in exact}
        out.update(seconds=run.seconds, draws={k: v.reshape((-1,) + v.shape[2:]) for k, v in grouped.items()},
                   grouped=grouped, r_hat=conv["r_hat_max"], ess_bulk=conv["ess_bulk_min"],
                   divergences=conv["divergences"], warnings=[str(w.message) for w in caught])
    else:
        objective, guide, lr = "elbo", None, config["conjugate_lr"]
        if method == "conjugate_iwae":
            objective = "iwae"
        elif method in GUIDES:
            # an AutoGuide keeps its parameters in Pyro's global store (as under pyro.infer.SVI):
            # start each from a clear store, or it would take over the previous model's values
            pyro.clear_param_store()
            guide, lr = GUIDES[method](model.model), config["autoguide_lr"]
        elif method != "conjugate":
            raise ValueError(f"unknown method {method!r}; known: {CONFIG['methods']}")
        fit = inference.fit(model, x, guide=guide, objective=objective, steps=config["steps"], lr=lr,
                            num_particles=config["num_particles"], seed=config["seed"], progress=False)
        seconds = time.perf_counter() - start
        d = diagnose(model, x, guide=guide, num_samples=S, seed=config["seed"])
        draws = inference.posterior(model, x, S, guide=guide)
        out.update(seconds=seconds, draws={k: v for k, v in draws.items() if k in exact}, khat=d["khat"],
                   final_loss=fit.losses[-1])
        if guide is None:  # the conjugate family: q as a distribution, for the closed-form KL
            out["q"] = _guide_distributions(model)
    return out


def _guide_distributions(model) -> dict:
    with torch.no_grad():
        if hasattr(model, "alpha"):
            beta = torch.distributions.Beta(model.alpha.detach(), model.beta.detach())
            return {"p": torch.distributions.Independent(beta, 1)}
        return {"probs": torch.distributions.Dirichlet(model.gamma.detach())}


def _draws(dists: dict, n: int, seed: int) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {k: d.sample((n,)) for k, d in dists.items()}


def run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra intra-op threads only add overhead
    try:
        results, sections = {}, []
        for name in config["models"]:
            make, x = load_data(name, config)
            model = make()
            exact = model.exact_posterior(x)
            rows, idatas = [], {}
            for method in config["methods"]:
                r = run_method(method, make, x, config)
                # every row from its draws (the exact row shows the Monte Carlo floor of num_draws
                # draws); KL in closed form where q is in the exact family
                dist_ = posterior_distances(r["draws"], exact)
                kl = posterior_distances(r["q"], exact)["kl"] if r.get("q") is not None else None
                row = dict(
                    method=method,
                    mean_err_max=dist_["mean_error_max"],
                    mean_err_avg=dist_["mean_error_mean"],
                    sd_rel_err_max=dist_["sd_rel_error_max"],
                    sd_rel_err_avg=dist_["sd_rel_error_mean"],
                    wasserstein=dist_["wasserstein_mean"],
                    kl=kl,
                    khat=r.get("khat"),
                    r_hat=r.get("r_hat"),
                    ess_bulk=r.get("ess_bulk"),
                    seconds=round(r["seconds"], 2),
                )
                rows.append(row)
                grouped = r.get("grouped") or {
                    k: v.reshape((2, v.shape[0] // 2) + v.shape[1:]) for k, v in r["draws"].items()
                }
                idatas[method] = to_inference_data(grouped, x, model=model, log_likelihood=False)
                if r.get("warnings"):
                    row["note"] = "; ".join(r["warnings"])
            n = x.shape[0]
            dims = model.data_dim if name == "bernoulli" else model.num_categories
            what = (f"Beta-Bernoulli on {dims} digits pixels" if name == "bernoulli"
                    else f"Dirichlet-Categorical on digits labels ({dims} classes)")
            title = f"{name}: {what}, N = {n}"
            columns = ["method", "mean_err_max", "mean_err_avg", "sd_rel_err_max", "sd_rel_err_avg", "wasserstein", "kl",
                       "khat", "r_hat", "ess_bulk", "seconds", "note"]
            sections.append(f"## {title}\n\n" + markdown_table(rows, columns))
            results[name] = {"num_data": n, "dims": dims, "rows": rows}
            _figures(idatas, exact, name, config, workdir)
        preamble = (
            "# compare_inference\n\n"
            "Errors against the exact conjugate posterior. mean_err: |E_q[theta] - E[theta | x]| (largest / average "
            "over components); sd_rel_err: |sd_q - sd| / sd; wasserstein: mean 1-Wasserstein distance of the marginals "
            "(from draws); kl: KL(q || exact), closed form where q is in the exact family; khat: PSIS k-hat of q as an "
            "importance proposal for the posterior (< 0.5 good, 0.5-0.7 ok, > 0.7 unreliable, inf for a point mass); "
            "r_hat / ess_bulk: NUTS convergence (largest r_hat, smallest bulk ESS); seconds: wall time of fitting / "
            "sampling (the exact row: drawing; diagnostics excluded everywhere). "
            f"{config['steps']} SVI steps per guide, {config['num_draws']} draws per method; NUTS "
            f"{config['nuts_chains']} chains x {config['nuts_samples'] or NUM_SAMPLES} draws after "
            f"{config['nuts_warmup'] or WARMUP_STEPS} warm-up.\n\n"
        )
        (workdir / "table.md").write_text(preamble + "\n".join(sections))
        out = _strict({"config": dict(config), "results": results})
        (workdir / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        return out
    finally:
        torch.set_num_threads(torch_threads)


def _strict(v):
    """Non-finite floats (k-hat = inf for a point mass) as strings, so results.json is strict JSON."""
    if isinstance(v, dict):
        return {k: _strict(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(u) for u in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _figures(idatas: dict, exact: dict, name: str, config: dict, workdir: Path) -> None:
    """Forest and density plots of every method, one colour per method in both, one title each."""
    site = next(iter(exact))
    colors = [f"C{i % 10}" for i in range(len(idatas))]
    k = int(config["plot_coords"])
    forest_plot(idatas, site, k, workdir / f"forest_{name}.png", colors=colors, title=f"{name}: 94% HDI of {site} by method")
    density_plot(idatas, site, k, workdir / f"density_{name}.png", colors=colors,
                 title=f"{name}: marginal posteriors of {site} by method")
