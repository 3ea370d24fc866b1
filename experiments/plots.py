"""Figures written to run folders (PNG, matplotlib's Agg backend)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["bar_chart", "image_grid", "label_points", "loss_curve", "plt"]


#: the colour between the images of a grid: light grey, so that black ink (1) and white
#: paper (0) both stand out from it
GRID_COLOUR = 0.25


def image_grid(images, image_shape, path, *, title: str | None = None, ncol: int | None = None) -> Path:
    """Save ``images`` (tensor ``(n, H*W)``, values in [0, 1]; 1 is drawn black) as one grid image.

    The images sit on a light grey background, separated by a gap of 1/8 of their size
    (at least one pixel), so that ink at an image's edge never merges with a separator.
    """
    images = torch.as_tensor(images).detach().float().cpu()
    n = images.shape[0]
    h, w = image_shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    gap = max(1, round(min(h, w) / 8))
    canvas = torch.full((nrow * (h + gap) + gap, ncol * (w + gap) + gap), GRID_COLOUR)
    for k in range(n):
        r, c = divmod(k, ncol)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        canvas[top : top + h, left : left + w] = images[k].reshape(h, w)
    width = max(2.5, ncol * 0.45)
    fig, ax = plt.subplots(figsize=(width, max(2.5, nrow * 0.45 * canvas.shape[0] / canvas.shape[1] * ncol / nrow) + 0.4))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:  # wrapped to the figure's width, so that a small grid never cuts it off
        chars = max(int(width * 72 / 7.5), 12)
        ax.set_title(textwrap.fill(title, chars), fontsize=10)
    return _save(fig, path, tight=True)


def loss_curve(history: dict[str, list[float]], path, *, val_losses=None, ylabel="loss (nats per example)",
               title=None, val_label="validation", reference: tuple[float, str] | None = None) -> Path:
    """Save the per-step training losses (raw: light; smoothed: the same colour, solid), the
    validation losses per epoch and, as a dashed line, a ``reference`` value (e.g. the final
    validation NLL of metrics.json)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for j, (name, values) in enumerate(history.items()):
        colour = f"C{j}"
        values = torch.tensor(values, dtype=torch.float64)
        k = max(len(values) // 50, 1)
        ax.plot(range(1, len(values) + 1), values.numpy(), color=colour, alpha=0.25, lw=0.8,
                label=f"{name} (per step)" if k > 1 else name)
        if k > 1:
            smooth = values.unfold(0, k, 1).mean(-1)
            ax.plot(range(k, len(values) + 1), smooth.numpy(), color=colour, lw=1.6, label=f"{name} (moving mean of {k})")
    if val_losses:
        steps, vals = zip(*val_losses)
        ax.plot(steps, vals, "o-", ms=3, color=f"C{len(history)}", label=val_label)
    if reference is not None:
        ax.axhline(reference[0], color="0.3", ls="--", lw=1, label=reference[1])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    _robust_ylim(ax, history, [*(val_losses or []), *([(0, reference[0])] if reference else [])])
    ax.legend(fontsize=8)
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


def label_points(ax, xs, ys, labels, *, fontsize=8) -> list:
    """Label scatter points so that no two labels overlap each other.

    Points at the same spot share one label ("a, b"); each label goes to the first of a few
    places around its point (right-above, right-below, left-above, left-below, then further
    up or down) where its box meets no label already placed.
    """
    groups: dict[tuple, list[str]] = {}
    for x, y, label in zip(xs, ys, labels):
        groups.setdefault((x, y), []).append(label)
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed, texts = [], []
    step = fontsize * 1.3
    offsets = [(4, 3), (4, -3 - fontsize), (-4, 3), (-4, -3 - fontsize)]
    offsets += [(4, 3 + k * step) for k in range(1, 6)] + [(4, -3 - fontsize - k * step) for k in range(1, 6)]
    for (x, y), names in groups.items():
        text = None
        for dx, dy in offsets:
            if text is not None:
                text.remove()
            text = ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(dx, dy),
                               fontsize=fontsize, ha="left" if dx > 0 else "right", va="bottom")
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed):
                break
        placed.append(text.get_window_extent(renderer))
        texts.append(text)
    return texts


def _robust_ylim(ax, history, val_losses):
    """Ignore the first steps' huge losses when choosing the y-range."""
    values = [v for vs in history.values() for v in vs[len(vs) // 20 :]]
    values += [v for _, v in val_losses or []]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)


def _save(fig, path, *, tight: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, **({"bbox_inches": "tight", "pad_inches": 0.08} if tight else {}))
    plt.close(fig)
    return path
