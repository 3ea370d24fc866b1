"""Is the amortised posterior right? The VAE's guide q(z | x) against the true p(z | x).

A VAE with ``latent_dim = 2`` is trained on ``digits``. For several test images x, the
true posterior of the *trained decoder*, p(z | x) proportional to p(x | z) N(z; 0, I), is
computed two independent ways:

* **NUTS** (``pyro.infer.MCMC(NUTS(potential_fn=...))``, several chains from dispersed
  starts) on the potential -log p(x, z) = -:meth:`zoo.vae.VAE.log_joint` (which
  ``tests/zoo/test_vae.py`` checks equals the model's trace), all chosen images in one
  run: their posteriors are independent, so the joint target is their product and each
  image's marginal is its own posterior. ``arviz`` gives r_hat and bulk/tail ESS per
  coordinate, and the divergences are counted.
* **Quadrature** on a 2-D grid: a coarse grid over [-limit, limit]^2 finds where the mass
  is, a fine grid over that box gives the normalised density, its mean and covariance and
  the evidence log p(x) = log sum_grid p(x, z) dA.

Both and the guide are written as ``arviz.InferenceData`` (``nuts.nc``, ``guide.nc``), and
the trained VAE's weights as ``vae.pt`` (a state dict).
For each image the table gives the PSIS k-hat of q used as an importance proposal for
p(z | x) (Yao, Vehtari, Simpson & Gelman 2018: k < 0.5 good, 0.5-0.7 usable, > 0.7
unreliable), KL(q || p(z | x)) = log p(x) - ELBO (from the grid evidence), the
importance-sampled log p(x) beside the grid's, and the means and standard deviations of
q, NUTS and the grid. ``posteriors.png`` overlays, per image, the grid density (filled),
q (red contours at the same mass levels) and NUTS draws (dots).

References:
    1. Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
       Variational Inference. ICML 2018.
    2. C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational
       Autoencoders. ICML 2018.
    3. M. D. Hoffman, A. Gelman. The No-U-Turn Sampler. JMLR 2014.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

import inference
import zoo
from experiments import plots
from experiments.optimal_discriminator import torch_threads

with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

CONFIG = dict(
    data="digits",
    data_dir=None,
    hidden=[256],
    epochs=500,
    lr=3e-3,
    batch_size=100,
    objective="elbo",
    num_images=6,
    num_chains=4,
    num_warmup=500,
    num_draws=1000,
    max_tree_depth=10,
    grid_size=201,  # points per axis, coarse and fine grid
    grid_limit=6.0,  # the coarse grid covers [-limit, limit]^2
    num_q_samples=4000,  # guide draws for k-hat, ELBO and the IS estimate
    seed=0,    threads=1,  # torch threads while it runs (None: leave as is); small MLPs are fastest on one
)

TINY = dict(epochs=2, num_images=2, num_chains=2, num_warmup=20, num_draws=20, max_tree_depth=4, grid_size=41, num_q_samples=200)

LATENT_DIM = 2


# ----- references ------------------------------------------------------------------
@torch.no_grad()
def _log_joint_on(vae, x, z1, z2) -> torch.Tensor:
    """log p(x_m, z) for every grid point (z1_i, z2_j): shape (len(z1), len(z2), M), float64."""
    zz = torch.stack(torch.meshgrid(z1, z2, indexing="ij"), -1).reshape(-1, 1, 2)
    x = x.to(torch.float64)
    out = [vae.log_joint(x, chunk.expand(-1, len(x), 2)) for chunk in zz.split(max(2**16 // len(x), 1))]
    return torch.cat(out).reshape(len(z1), len(z2), len(x))


def grid_posterior(vae, x: torch.Tensor, *, size: int = 201, limit: float = 6.0) -> list[dict]:
    """p(z | x_m) by quadrature for each row x_m (the model must have ``latent_dim = 2``).

    Returns per image: ``z1``, ``z2`` (fine-grid axes), ``log_density`` (size x size,
    normalised so that sum(exp) * dA = 1), ``log_evidence`` (log p(x_m)), ``mean`` (2,),
    ``cov`` (2, 2), ``max_log_joint`` (the peak of log p(x, z)) and ``mass_outside_box``
    (the coarse grid's posterior mass outside the fine box), all float64 tensors.
    """
    if vae.latent_dim != LATENT_DIM:
        raise ValueError(f"grid_posterior needs latent_dim = 2, got {vae.latent_dim}")
    vae = _float64(vae)
    axis = torch.linspace(-limit, limit, size, dtype=torch.float64)
    step = axis[1] - axis[0]
    coarse = _log_joint_on(vae, x, axis, axis)
    out = []
    for m in range(len(x)):
        lj = coarse[..., m]
        # the box holding all cells within e^-25 of the peak, one coarse cell wider
        i, j = torch.nonzero(lj > lj.max() - 25, as_tuple=True)
        lo1, hi1 = axis[i.min()] - step, axis[i.max()] + step
        lo2, hi2 = axis[j.min()] - step, axis[j.max()] + step
        z1 = torch.linspace(float(lo1), float(hi1), size, dtype=torch.float64)
        z2 = torch.linspace(float(lo2), float(hi2), size, dtype=torch.float64)
        inside = torch.zeros_like(lj, dtype=torch.bool)
        inside[i.min() : i.max() + 1, j.min() : j.max() + 1] = True
        coarse_mass = torch.softmax(lj.flatten(), 0).reshape(lj.shape)
        fine = _log_joint_on(vae, x[m : m + 1], z1, z2)[..., 0]
        log_area = math.log(float((z1[1] - z1[0]) * (z2[1] - z2[0])))
        log_evidence = torch.logsumexp(fine.flatten(), 0) + log_area
        log_density = fine - log_evidence
        w = (log_density + log_area).exp()  # cell masses, sum to 1
        zz = torch.stack(torch.meshgrid(z1, z2, indexing="ij"), -1)
        mean = (w[..., None] * zz).sum((0, 1))
        centred = zz - mean
        cov = (w[..., None, None] * centred[..., :, None] * centred[..., None, :]).sum((0, 1))
        out.append(dict(z1=z1, z2=z2, log_density=log_density, log_evidence=log_evidence, mean=mean, cov=cov,
                        max_log_joint=fine.max(), mass_outside_box=coarse_mass[~inside].sum()))
    return out


def nuts_posterior(vae, x: torch.Tensor, *, num_chains: int, num_warmup: int, num_draws: int, seed: int = 0,
                   max_tree_depth: int = 10):
    """Draws of z from p(z | x_m) for all rows at once by NUTS: ``(chains, draws, M, 2)``.

    Chains run one after another (no worker processes), each from a dispersed start
    z ~ N(0, 2^2 I). Returns (draws, divergences per chain).
    """
    params = [p for p in vae.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # gradients w.r.t. z only

    def potential(values):
        return -vae.log_joint(x, values["z"]).sum()

    chains, divergences = [], []
    try:
        for c in range(num_chains):
            pyro.set_rng_seed(seed + c)
            init = {"z": 2.0 * torch.randn(len(x), LATENT_DIM)}
            mcmc = MCMC(
                NUTS(potential_fn=potential, max_tree_depth=max_tree_depth),
                num_samples=num_draws, warmup_steps=num_warmup, initial_params=init, disable_progbar=True,
            )
            mcmc.run()
            chains.append(mcmc.get_samples()["z"])
            divergences.append(len(mcmc.diagnostics()["divergences"]["chain 0"]))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return torch.stack(chains), divergences


@torch.no_grad()
def guide_check(vae, x: torch.Tensor, num_samples: int, log_evidence: torch.Tensor | None = None) -> dict:
    """q(z | x_m) as an importance proposal for p(z | x_m): draws, k-hat, ELBO, IS log p(x).

    ``log_evidence`` (M,) (e.g. from the grid) adds KL(q || p(z | x)) = log p(x) - ELBO.
    """
    loc, scale = vae.encode(x)
    q = torch.distributions.Normal(loc, scale)
    z = q.sample((num_samples,))  # (S, M, 2)
    log_w = vae.log_joint(x, z) - q.log_prob(z).sum(-1)  # (S, M)
    _, khat = az.psislw(log_w.T.double().numpy())
    out = {
        "draws": z,
        "khat": torch.as_tensor(np.atleast_1d(khat)),
        "elbo": log_w.mean(0),
        "is_log_evidence": torch.logsumexp(log_w, 0) - math.log(num_samples),
        "loc": loc,
        "scale": scale,
    }
    if log_evidence is not None:
        out["kl"] = log_evidence.to(log_w.dtype) - out["elbo"]
    return out


def khat_reading(k: float) -> str:
    return "good" if k < 0.5 else "usable" if k < 0.7 else "unreliable"


def to_idata(draws: torch.Tensor, labels) -> az.InferenceData:
    """``InferenceData`` of draws ``(chains, draws, M, 2)`` with named image/latent dims."""
    return az.convert_to_inference_data(
        {"z": draws.double().numpy()},
        coords={"image": [f"{i}: digit {y}" for i, y in enumerate(labels)], "latent": ["z1", "z2"]},
        dims={"z": ["image", "latent"]},
    )


# ----- the experiment ----------------------------------------------------------------
def _float64(vae):
    import copy

    return copy.deepcopy(vae).double()


def pick_images(test, n: int) -> torch.Tensor:
    """Indices of n test images, of distinct digits while there are any left."""
    chosen, seen = [], set()
    labels = test.y.tolist() if test.y is not None else [None] * len(test)
    for i, y in enumerate(labels):
        if y not in seen:
            chosen.append(i)
            seen.add(y)
        if len(chosen) == n:
            break
    for i in range(len(test)):
        if len(chosen) == n:
            break
        if i not in chosen:
            chosen.append(i)
    return torch.tensor(chosen)


def run(config: dict, workdir) -> dict:
    with torch_threads(config.get("threads")):
        return _run(config, workdir)


def _run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = lambda split: zoo.load(config["data"], split, root=config["data_dir"], seed=config["seed"])  # noqa: E731
    train, test = load("train"), load("test")

    pyro.set_rng_seed(config["seed"])
    vae = zoo.create("vae", data_dim=train.dim, latent_dim=LATENT_DIM, hidden=tuple(config["hidden"]))
    fit = inference.fit(vae, train, objective=config["objective"], epochs=config["epochs"], lr=config["lr"],
                        batch_size=config["batch_size"], seed=config["seed"], progress=False)
    plots.loss_curve(fit.history, workdir / "loss.png", title="VAE (latent_dim 2)")

    index = pick_images(test, int(config["num_images"]))
    x = test.x[index]
    labels = test.y[index].tolist() if test.y is not None else [None] * len(index)

    grids = grid_posterior(vae, x, size=int(config["grid_size"]), limit=float(config["grid_limit"]))
    log_evidence = torch.stack([g["log_evidence"] for g in grids])
    pyro.set_rng_seed(config["seed"] + 1)
    q = guide_check(vae, x, int(config["num_q_samples"]), log_evidence)
    draws, divergences = nuts_posterior(vae, x, num_chains=int(config["num_chains"]), num_warmup=int(config["num_warmup"]),
                                        num_draws=int(config["num_draws"]), seed=config["seed"] + 2,
                                        max_tree_depth=int(config["max_tree_depth"]))

    nuts_idata = to_idata(draws, labels)
    chains = int(config["num_chains"])
    q_draws = q["draws"][: (len(q["draws"]) // chains) * chains]
    guide_idata = to_idata(q_draws.reshape(chains, -1, *q_draws.shape[1:]), labels)
    saved = _save_idata({"nuts": nuts_idata, "guide": guide_idata}, workdir)
    rhat = az.rhat(nuts_idata)["z"].values  # (M, 2)
    ess_bulk = az.ess(nuts_idata, method="bulk")["z"].values
    ess_tail = az.ess(nuts_idata, method="tail")["z"].values

    flat = draws.reshape(-1, *draws.shape[2:]).double()  # (chains * draws, M, 2)
    with torch.no_grad():
        chain_log_joint = vae.log_joint(x, draws).mean(1)  # (chains, M): mean log p(x, z) per chain
        chain_means = draws.mean(1)  # (chains, M, 2)
    torch.save(vae.state_dict(), workdir / "vae.pt")
    rows = []
    for m, g in enumerate(grids):
        grid_sd = g["cov"].diagonal().sqrt()
        nuts_mean, nuts_sd = flat[:, m].mean(0), flat[:, m].std(0)
        q_mean, q_sd = q["loc"][m].double(), q["scale"][m].double()
        rows.append({
            "test_index": int(index[m]),
            "digit": labels[m],
            "khat": float(q["khat"][m]),
            "khat_reading": khat_reading(float(q["khat"][m])),
            "log_evidence_grid": float(g["log_evidence"]),
            "log_evidence_is": float(q["is_log_evidence"][m]),
            "elbo": float(q["elbo"][m]),
            "kl_q_to_posterior": float(q["kl"][m]),
            "grid_mean": g["mean"].tolist(),
            "grid_sd": grid_sd.tolist(),
            "grid_corr": float(g["cov"][0, 1] / (grid_sd[0] * grid_sd[1])),
            "nuts_mean": nuts_mean.tolist(),
            "nuts_sd": nuts_sd.tolist(),
            "q_mean": q_mean.tolist(),
            "q_sd": q_sd.tolist(),
            # agreement of the two references, and the guide's error, in posterior sds
            "nuts_vs_grid_mean_error_sd": float(((nuts_mean - g["mean"]) / grid_sd).abs().max()),
            "q_vs_grid_mean_error_sd": float(((q_mean - g["mean"]) / grid_sd).abs().max()),
            "q_to_grid_sd_ratio": (q_sd / grid_sd).tolist(),
            "grid_mass_outside_box": float(g["mass_outside_box"]),
            "grid_max_log_joint": float(g["max_log_joint"]),
            "nuts_chain_means": chain_means[:, m].tolist(),
            "nuts_chain_mean_log_joint": chain_log_joint[:, m].tolist(),
            "rhat_max": float(rhat[m].max()),
            "ess_bulk_min": float(ess_bulk[m].min()),
            "ess_tail_min": float(ess_tail[m].min()),
        })

    posterior_figure(grids, q, draws, x, labels, rows, test.image_shape, workdir / "posteriors.png")
    (workdir / "table.md").write_text(_table(rows, config, divergences))
    results = {
        "config": dict(config),
        "train_seconds": round(fit.seconds, 2),
        "images": rows,
        "nuts_divergences_per_chain": divergences,
        "inference_data": saved,
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _save_idata(idatas: dict, workdir: Path) -> dict:
    """Write each InferenceData as NetCDF where xarray has an engine for it."""
    saved = {}
    for name, idata in idatas.items():
        try:
            saved[name] = str(idata.to_netcdf(str(workdir / f"{name}.nc")))
        except Exception as e:  # no NetCDF engine installed: say so, keep going
            saved[name] = f"not written ({type(e).__name__}: {e})"
    return saved


def _levels(log_density: torch.Tensor, log_area: float, masses=(0.99, 0.9, 0.5)) -> list[float]:
    """Density levels whose superlevel sets hold the given probability masses."""
    d = log_density.flatten().exp()
    order = d.sort(descending=True).values
    cum = (order * math.exp(log_area)).cumsum(0)
    return sorted({float(order[min(int((cum < m).sum()), len(order) - 1)]) for m in masses})


def posterior_figure(grids, q, draws, x, labels, rows, image_shape, path) -> Path:
    m_count = len(grids)
    ncol = min(m_count, 3)
    nrow = math.ceil(m_count / ncol)
    fig, axes = plots.plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4.0 * nrow), squeeze=False)
    for m, g in enumerate(grids):
        ax = axes[m // ncol][m % ncol]
        z1, z2 = g["z1"].numpy(), g["z2"].numpy()
        log_area = math.log(float((g["z1"][1] - g["z1"][0]) * (g["z2"][1] - g["z2"][0])))
        dens = g["log_density"].exp().numpy().T  # contour wants (y, x)
        ax.contourf(z1, z2, dens, levels=_levels(g["log_density"], log_area) + [float(dens.max()) * 1.01], cmap="Blues", alpha=0.8)
        loc, scale = q["loc"][m].double(), q["scale"][m].double()
        zz = torch.stack(torch.meshgrid(g["z1"], g["z2"], indexing="ij"), -1)
        q_log = torch.distributions.Normal(loc, scale).log_prob(zz).sum(-1)
        ax.contour(z1, z2, q_log.exp().numpy().T, levels=_levels(q_log, log_area), colors="red", linewidths=1.0)
        pts = draws[:, :, m].reshape(-1, 2)
        pts = pts[torch.linspace(0, len(pts) - 1, min(len(pts), 400)).long()]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="k", alpha=0.5)
        r = rows[m]
        ax.set_title(f"digit {labels[m]}: k-hat {r['khat']:.2f}, KL(q||p) {r['kl_q_to_posterior']:.2f}", fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        inset = ax.inset_axes([0.78, 0.78, 0.2, 0.2])
        inset.imshow(x[m].reshape(image_shape).numpy(), cmap="gray_r", vmin=0, vmax=1)
        inset.set_axis_off()
    for k in range(m_count, nrow * ncol):
        axes[k // ncol][k % ncol].set_axis_off()
    fig.suptitle("p(z|x) by quadrature (blue: 50/90/99% mass), guide q(z|x) (red, same masses), NUTS draws (dots)", fontsize=9)
    return plots._save(fig, path)


def _table(rows: list[dict], config: dict, divergences: list[int]) -> str:
    def pair(v):
        return f"({v[0]:.2f}, {v[1]:.2f})"

    head = (
        f"VAE latent_dim 2, hidden {config['hidden']}, {config['epochs']} epochs on `{config['data']}`. "
        f"NUTS: {config['num_chains']} chains x {config['num_draws']} draws after {config['num_warmup']} warm-up "
        f"(divergences per chain: {divergences}). Guide: {config['num_q_samples']} draws per image. "
        f"Grid: {config['grid_size']}^2 points over the posterior's box.\n\n"
        "| test image | digit | PSIS k-hat of q | KL(q ‖ p(z|x)) | log p(x) grid | log p(x) IS | ELBO | "
        "mean: grid / NUTS / q | sd: grid / NUTS / q | r_hat max | ESS bulk min | ESS tail min |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['test_index']} | {r['digit']} | {r['khat']:.2f} ({r['khat_reading']}) | {r['kl_q_to_posterior']:.3f} | "
        f"{r['log_evidence_grid']:.3f} | {r['log_evidence_is']:.3f} | {r['elbo']:.3f} | "
        f"{pair(r['grid_mean'])} / {pair(r['nuts_mean'])} / {pair(r['q_mean'])} | "
        f"{pair(r['grid_sd'])} / {pair(r['nuts_sd'])} / {pair(r['q_sd'])} | "
        f"{r['rhat_max']:.3f} | {r['ess_bulk_min']:.0f} | {r['ess_tail_min']:.0f} |\n"
        for r in rows
    )
    notes = ""
    for r in rows:
        if r["rhat_max"] > 1.01:
            means = ", ".join(pair(v) for v in r["nuts_chain_means"])
            lj = ", ".join(f"{v:.1f}" for v in r["nuts_chain_mean_log_joint"])
            notes += (
                f"\n- Test image {r['test_index']}: r_hat {r['rhat_max']:.2f} flags the NUTS chains as disagreeing. "
                f"Chain means {means}; mean log p(x, z) per chain {lj} (the peak of log p(x, z) on the grid: "
                f"{r['grid_max_log_joint']:.1f}). The coarse grid over the whole square puts mass "
                f"{r['grid_mass_outside_box']:.1e} outside the box the fine grid covers.\n"
            )
    return head + body + notes
