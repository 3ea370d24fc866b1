"""Figures written to run folders (PNG, matplotlib's Agg backend)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["bar_chart", "image_grid", "loss_curve", "plt"]


def image_grid(images, image_shape, path, *, title: str | None = None, ncol: int | None = None) -> Path:
    """Save ``images`` (tensor ``(n, H*W)``, values in [0, 1]) as one grid image."""
    images = torch.as_tensor(images).detach().float().cpu()
    n = images.shape[0]
    h, w = image_shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = torch.ones(nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for k in range(n):
        r, c = divmod(k, ncol)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            images[k].reshape(h, w)
        )
    fig, ax = plt.subplots(figsize=(max(2.0, ncol * 0.5), max(2.0, nrow * 0.5)))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def loss_curve(history: dict[str, list[float]], path, *, val_losses=None, ylabel="loss (nats per example)", title=None) -> Path:
    """Save the per-step training losses (smoothed) and the validation losses per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in history.items():
        values = torch.tensor(values, dtype=torch.float64)
        ax.plot(range(1, len(values) + 1), values.numpy(), alpha=0.3, lw=0.8)
        k = max(len(values) // 50, 1)
        if k > 1:
            smooth = values.unfold(0, k, 1).mean(-1)
            ax.plot(range(k, len(values) + 1), smooth.numpy(), lw=1.5, label=f"{name} (moving mean of {k})")
        else:
            ax.plot([], [], label=name)
    if val_losses:
        steps, vals = zip(*val_losses)
        ax.plot(steps, vals, "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    _robust_ylim(ax, history, val_losses)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def bar_chart(labels, values, path, *, ylabel="", log=False, title=None) -> Path:
    """Save a bar chart of ``values`` by ``labels``."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels)), 4))
    ax.bar(range(len(labels)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _robust_ylim(ax, history, val_losses):
    """Ignore the first steps' huge losses when choosing the y-range."""
    values = [v for vs in history.values() for v in vs[len(vs) // 20 :]]
    values += [v for _, v in val_losses or []]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
