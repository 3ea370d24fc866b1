"""Autoencoder vs VAE: same networks, same data, same engine; only one is a generative model.

Both are trained by :func:`inference.fit` on the same training split with the same encoder
and decoder widths. The autoencoder (``zoo.autoencoder``) has a point-estimate code and no
prior on it; the VAE (``zoo.vae``) has z ~ N(0, I) and a Gaussian guide q(z | x).

Writes to ``workdir``:

=========================  ==================================================================
``table.md``               reconstruction error (test, and train beside it), ELBO and
                           importance-sampled NLL (K stated);
                           the autoencoder's NLL cell says why there is none
``reconstructions.png``    rows: test images, autoencoder reconstructions, VAE reconstructions
                           (pixel probabilities; the VAE decodes the guide's mean)
``vae_samples.png``        x ~ p(x): z ~ N(0, I), then Bernoulli pixels
``prior_decodes.png``      the same draws z ~ N(0, I) decoded by the VAE (top rows) and by the
                           autoencoder (bottom rows): N(0, I) is the VAE's prior and only a
                           stand-in for the autoencoder, whose codes follow no distribution
``latent_map.png``         (``latent_dim = 2``) test codes coloured by digit: autoencoder
                           codes e(x) and VAE guide means mu(x), with N(0, I)'s 1/2/3 sd circles
``loss_autoencoder.png``,  training curves
``loss_vae.png``
``results.json``           every number above, and the settings
=========================  ==================================================================
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import torch

import inference
import zoo
from experiments import plots, progress
from experiments.optimal_discriminator import torch_threads

CONFIG = dict(
    data="digits",
    data_dir=None,
    latent_dim=2,
    hidden=[256],
    objective="elbo",
    epochs=500,
    lr=3e-3,
    batch_size=100,
    num_samples=1000,  # K of the importance-sampled NLL
    num_images=16,
    seed=0,    threads=1,  # torch threads while it runs (None: leave as is); small MLPs are fastest on one
)

TINY = dict(epochs=3, num_samples=20, num_images=6)

NO_NLL = "none: the autoencoder defines no density over x"


def train(name: str, config: dict, train_data) -> tuple[zoo.ZooModel, inference.FitResult]:
    """Fit the model called ``name`` (``vae`` or ``autoencoder``) with the config's networks."""
    pyro.set_rng_seed(config["seed"])
    model = zoo.create(name, data_dim=train_data.dim, latent_dim=config["latent_dim"], hidden=tuple(config["hidden"]))
    result = inference.fit(
        model, train_data, objective=config["objective"], epochs=config["epochs"], lr=config["lr"],
        batch_size=config["batch_size"], seed=config["seed"], progress=False,
    )
    return model, result


def reconstruction_error(model, x: torch.Tensor) -> dict:
    """Cross-entropy of x under the reconstruction's pixel probabilities, and pixel errors."""
    probs = model.reconstruct(x).clamp(1e-6, 1 - 1e-6)
    bce = -torch.distributions.Bernoulli(probs=probs).log_prob(x).sum(-1).mean().item()
    errors = ((probs > 0.5).float() != x).float().mean().item()
    return {"reconstruction_nats": bce, "pixel_error_rate": errors}


def latent_map(ae, vae, test, path) -> Path:
    """Scatter of test codes (autoencoder) and guide means (VAE), coloured by label."""
    with torch.no_grad():
        codes = {"autoencoder: codes e(x)": ae.encode(test.x), "VAE: guide means mu(x)": vae.encode(test.x)[0]}
    fig, axes = plots.plt.subplots(1, 3, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.05]})
    for ax, (title, z) in zip(axes[:2], codes.items()):
        sc = ax.scatter(z[:, 0], z[:, 1], c=test.y.numpy() if test.y is not None else None, cmap="tab10", s=8, vmin=-0.5, vmax=9.5)
        t = torch.linspace(0, 2 * math.pi, 200)
        for r in (1, 2, 3):
            ax.plot(r * t.cos(), r * t.sin(), "k-", lw=0.6, alpha=0.5)
        ax.set_title(title)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="datalim")
    if test.y is not None:
        fig.colorbar(sc, cax=axes[2], ticks=range(10), label="digit")
    else:
        axes[2].set_axis_off()
    fig.suptitle("test codes; circles: 1, 2, 3 sd of N(0, I), the VAE's prior")
    return plots._save(fig, path)


def run(config: dict, workdir) -> dict:
    with torch_threads(config.get("threads")):
        return _run(config, workdir)


def _run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = lambda split: zoo.load(config["data"], split, root=config["data_dir"], seed=config["seed"])  # noqa: E731
    train_data, test = load("train"), load("test")
    shape = train_data.image_shape

    models, fits = {}, {}
    bar = progress(("autoencoder", "vae"), "ae_vs_vae: fits", unit="model")
    for name in bar:
        bar.set_postfix_str(name)
        models[name], fits[name] = train(name, config, train_data)
        plots.loss_curve(fits[name].history, workdir / f"loss_{name}.png", title=f"{name} on {config['data']}")
    ae, vae = models["autoencoder"], models["vae"]

    K = int(config["num_samples"])
    rows = {}
    bar = progress(models.items(), f"ae_vs_vae: metrics (VAE: IS-NLL, K = {K})", unit="model")
    for name, model in bar:
        bar.set_postfix_str(name)
        pyro.set_rng_seed(config["seed"] + 1)
        metrics = inference.evaluate(model, test, num_samples=K) if name == "vae" else inference.evaluate(model, test)
        train_error = reconstruction_error(model, train_data.x)
        rows[name] = {
            **reconstruction_error(model, test.x),
            "train_reconstruction_nats": train_error["reconstruction_nats"],
            "elbo": metrics.get("elbo"),
            "nll": metrics["nll"],
            "nll_note": metrics.get("nll_note"),
            "num_parameters": model.num_parameters(),
            "train_seconds": round(fits[name].seconds, 2),
            "final_train_loss": fits[name].losses[-1],
        }

    # codes: the VAE's aggregate posterior is near N(0, I) by construction, the AE's anything
    with torch.no_grad():
        ae_codes, vae_means = ae.encode(test.x), vae.encode(test.x)[0]
    rows["autoencoder"]["code_mean_norm"] = ae_codes.mean(0).norm().item()
    rows["autoencoder"]["code_sd"] = ae_codes.std(0).tolist()
    rows["vae"]["code_mean_norm"] = vae_means.mean(0).norm().item()
    rows["vae"]["code_sd"] = vae_means.std(0).tolist()

    n = int(config["num_images"])
    x = test.x[:n]
    plots.image_grid(torch.cat([x, ae.reconstruct(x), vae.reconstruct(x)]), shape, workdir / "reconstructions.png",
                     ncol=n, title="test images / autoencoder / VAE reconstructions")
    pyro.set_rng_seed(config["seed"] + 2)
    plots.image_grid(vae.sample(n * 2), shape, workdir / "vae_samples.png", ncol=n, title="VAE samples x ~ p(x)")
    z = torch.randn(n * 2, config["latent_dim"])
    with torch.no_grad():
        decodes = torch.cat([torch.sigmoid(vae.decode(z)), ae.decode(z)])
    plots.image_grid(decodes, shape, workdir / "prior_decodes.png", ncol=n,
                     title="z ~ N(0, I) decoded: VAE (top), autoencoder (bottom)")
    if config["latent_dim"] == 2:
        latent_map(ae, vae, test, workdir / "latent_map.png")

    table = _table(rows, K, config)
    (workdir / "table.md").write_text(table)
    results = {"config": dict(config), "test": rows, "num_test": len(test)}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _table(rows: dict, K: int, config: dict) -> str:
    head = (
        f"Test split of `{config['data']}` ({config['objective']}, latent_dim {config['latent_dim']}, "
        f"hidden {config['hidden']}, {config['epochs']} epochs). Nats per image. Reconstructions: "
        "cross-entropy of x under the decoded pixel probabilities (VAE: decoding the guide mean).\n\n"
        f"| model | reconstruction cross-entropy (train) | pixel error rate | ELBO | NLL (importance-sampled, K = {K}) |\n"
        "|---|---|---|---|---|\n"
    )
    body = ""
    for name, r in rows.items():
        elbo = f"{r['elbo']:.2f}" if r["elbo"] is not None else "none: no prior or guide density (Delta guide, flat code)"
        nll = f"{r['nll']:.2f}" if r["nll"] is not None else NO_NLL
        body += f"| {name} | {r['reconstruction_nats']:.2f} ({r['train_reconstruction_nats']:.2f}) | {100 * r['pixel_error_rate']:.2f}% | {elbo} | {nll} |\n"
    return head + body
