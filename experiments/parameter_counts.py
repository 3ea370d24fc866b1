"""The lecture's parameter-count table, reproduced from the code.

For each image size n in ``sizes`` (784 = 28 x 28 and 64 = 8 x 8 by default) and each rung
of the ladder, the count by the closed-form formula next to the instantiated model's
``num_parameters()`` and the number of trainable scalars it stores (the full joint is
instantiated only where it fits: 2^784 - 1 is about 10^236). The RGB pixel opens the table:
256^3 - 1 = 16,777,215 for the joint colour distribution against 3 x 255 for independent
channels, and both are fitted to the real pixels of scikit-learn's sample photographs so
that the held-out NLL of each stands beside its count.

Writes to ``workdir``:

=====================  ======================================================================
``counts.md``          model, n, formula, count by formula, ``num_parameters()``, stored scalars
``counts.png``         the counts as a log-scale bar chart, one group per model
``rgb_pixel.md``       RGB pixel: parameters and held-out NLL (nats per pixel, bits per channel)
``results.json``       every number above, and the settings
=====================  ======================================================================
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import zoo
from experiments import plots, progress
from zoo.rgb_pixel import RGBPixel, sample_photo_pixels

__all__ = ["CONFIG", "TINY", "count_rows", "rgb_pixel_comparison", "run"]

CONFIG = dict(
    sizes=[784, 64],
    markov_order=1,
    nade_hidden=500,
    made_hidden=[500],
    mixture_components=10,
    rgb=True,  # fit the RGB pixel models to the sample photographs
    rgb_max_pixels=None,  # None: all 546,560 pixels of the two photographs
    rgb_test_fraction=0.2,
    rgb_pseudo_counts=[1.0, 0.1, 0.01, 0.001],  # Dirichlet smoothing, chosen on a validation split
    seed=0,
)

TINY = dict(sizes=[16], nade_hidden=8, made_hidden=[8], rgb_max_pixels=20_000)


def _rungs(config: dict) -> list[tuple[str, str, dict, callable, str]]:
    """(label, registered name, options, formula(n), formula text) for each rung."""
    k, H, K = int(config["markov_order"]), int(config["nade_hidden"]), int(config["mixture_components"])
    hidden = [int(h) for h in config["made_hidden"]]

    def made(n):
        sizes = [n, *hidden, n]
        return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))

    made_text = " + ".join(f"({a} + 1) {b}" for a, b in zip(["n", *map(str, hidden)], [*map(str, hidden), "n"]))
    markov_text = "2n - 1" if k == 1 else f"(2^{k} - 1) + (n - {k}) 2^{k}"
    return [
        ("independent", "independent", {}, lambda n: n, "n"),
        (f"markov (order {k})", "markov", {"order": k}, lambda n: (2**k - 1) + (n - k) * 2**k, markov_text),
        ("fvsbn", "fvsbn", {}, lambda n: n * (n + 1) // 2, "n(n + 1)/2"),
        (f"nade (H={H})", "nade", {"hidden_size": H}, lambda n: 2 * n * H + n, f"2nH + n, H = {H}"),
        (f"made ({'-'.join(map(str, hidden))})", "made", {"hidden_sizes": hidden}, made, made_text),
        (f"mixture (K={K})", "mixture", {"num_components": K}, lambda n: (K - 1) + K * n, f"(K - 1) + K n, K = {K}"),
        ("full joint", "full_joint", {}, lambda n: 2**n - 1, "2^n - 1"),
    ]


def count_rows(config: dict) -> list[dict]:
    """One row per (rung, n), plus the two RGB pixel factorisations first."""
    rows = []
    for label, factorization, text in (("rgb pixel: joint", "joint", "256^3 - 1"), ("rgb pixel: independent channels", "independent", "3 x (256 - 1)")):
        model = RGBPixel(factorization=factorization)
        formula = 256**3 - 1 if factorization == "joint" else 3 * 255
        rows.append(_row(label, 1, text, formula, model))
    for n in progress(config["sizes"], "parameter_counts: models built per size", unit="size"):
        for label, name, options, formula, text in _rungs(config):
            try:
                model = zoo.create(name, data_dim=int(n), **options)
            except ValueError as e:  # the full joint beyond what can be stored
                model, note = None, str(e).split(";")[0]
            else:
                note = ""
            rows.append(_row(label, int(n), text, formula(int(n)), model, note))
    return rows


def _row(label, n, text, formula, model, note=""):
    row = {"model": label, "n": n, "formula": text, "count": formula, "num_parameters": None, "stored_scalars": None, "note": note}
    if model is not None:
        row["num_parameters"] = model.num_parameters()
        row["stored_scalars"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if row["num_parameters"] != formula:
            raise AssertionError(f"{label} at n={n}: num_parameters() = {row['num_parameters']} but the formula gives {formula}")
        extra = row["stored_scalars"] - formula
        if extra > 0:  # a softmax over m outcomes stores m logits for m - 1 free parameters
            row["note"] = f"softmax logits: {extra} redundant stored scalar{'s' if extra > 1 else ''}"
    return row


def _count_text(value: int | None) -> str:
    if value is None:
        return "not stored"
    if value >= 10**21:
        return f"~ 10^{math.log10(value):.1f}"
    return f"{value:,}"


def counts_table(rows: list[dict]) -> str:
    lines = ["| model | n | formula | count (formula) | num_parameters() | stored scalars | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['formula']} | {_count_text(r['count'])} | "
            f"{_count_text(r['num_parameters'])} | {_count_text(r['stored_scalars'])} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def counts_chart(rows: list[dict], path) -> Path:
    """Log-scale bars, one group per model and one bar per n (one bar for the RGB pixel).

    Left: every model; right: without the full joint, whose 2^n - 1 flattens the rest.
    """
    from matplotlib.patches import Patch

    sizes = list(dict.fromkeys(r["n"] for r in rows if not r["model"].startswith("rgb")))
    colours = {n: f"C{j}" for j, n in enumerate(sizes)}
    everything = list(dict.fromkeys(r["model"] for r in rows))
    panels = [everything, [m for m in everything if m != "full joint"]]
    fig, axes = plots.plt.subplots(1, 2, figsize=(max(10.0, 1.6 * len(everything)), 5.2))
    for ax, labels in zip(axes, panels):
        for i, label in enumerate(labels):
            group = [r for r in rows if r["model"] == label]
            width = 0.8 / len(group)
            for j, r in enumerate(group):
                x = i + (j - (len(group) - 1) / 2) * width
                value = float(r["count"])
                ax.bar(x, value, width, bottom=0.5, color=colours.get(r["n"], "C7"))
                ax.annotate(f"{value:.2g}", (x, value), ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5, top=ax.get_ylim()[1] * 30)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("free parameters (log scale)")
    axes[0].set_title("free parameters of each model")
    axes[1].set_title("without the full joint")
    handles = [Patch(color=colours[n], label=f"n = {n} pixels") for n in sizes] + [Patch(color="C7", label="one RGB pixel")]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left")
    return plots._save(fig, path)


def rgb_pixel_comparison(config: dict) -> list[dict]:
    """Fit both RGB factorisations to photograph pixels; held-out NLL with smoothing chosen on validation."""
    train, test = sample_photo_pixels(config["rgb_test_fraction"], seed=config["seed"], max_pixels=config["rgb_max_pixels"])
    num_valid = len(train) // 10
    fit_part, valid = train[num_valid:], train[:num_valid]
    rows = []
    for factorization in progress(("joint", "independent"), "parameter_counts: RGB pixel fits", unit="model"):
        model = RGBPixel(factorization=factorization)
        fit_x, valid_x, train_x, test_x = (model.encode(t) for t in (fit_part, valid, train, test))
        scores = {a: -model.fit_counts(fit_x, a).log_prob(valid_x).mean().item() for a in config["rgb_pseudo_counts"]}
        alpha = min(scores, key=scores.get)
        model.fit_counts(train_x, alpha)
        nll = -model.log_prob(test_x).mean().item()
        rows.append({
            "factorization": factorization, "num_parameters": model.num_parameters(), "pseudo_count": alpha,
            "test_nll": nll, "bits_per_channel": nll / (3 * math.log(2)), "num_train": len(train), "num_test": len(test),
            "distinct_train_colours": int(torch.unique(train_x).numel()),
        })
    return rows


def rgb_table(rows: list[dict]) -> str:
    lines = [
        "| factorization | parameters | pseudo-count (chosen on validation) | held-out NLL (nats/pixel) | bits per channel |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['factorization']} | {r['num_parameters']:,} | {r['pseudo_count']:g} | {r['test_nll']:.3f} | {r['bits_per_channel']:.3f} |")
    r = rows[0]
    return (
        "\n".join(lines)
        + f"\n\n{r['num_train']:,} training / {r['num_test']:,} held-out pixels of scikit-learn's sample photographs "
        f"(china.jpg, flower.jpg), {r['distinct_train_colours']:,} distinct colours in training. "
        "Fitted in closed form: smoothed counts, the posterior predictive under a symmetric Dirichlet prior.\n"
    )


def run(config: dict, workdir) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = count_rows(config)
    (workdir / "counts.md").write_text("# Free parameters by model\n\n" + counts_table(rows))
    counts_chart(rows, workdir / "counts.png")
    results = {"config": config, "counts": [{**r, "count": str(r["count"]) if r["count"] > 2**63 else r["count"]} for r in rows]}
    if config["rgb"]:
        rgb = rgb_pixel_comparison(config)
        (workdir / "rgb_pixel.md").write_text("# One RGB pixel: joint vs independent channels\n\n" + rgb_table(rgb))
        results["rgb_pixel"] = rgb
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results
