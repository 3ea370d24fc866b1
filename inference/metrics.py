"""Sample-quality metrics: every model of the zoo scored on its samples alike.

A GAN has no likelihood, so the zoo compares models by what they generate. Each metric
takes samples (``(n, D)`` float 0/1) and held-out data of the same data set:

``fd`` -- Frechet distance in the feature space of a small classifier
    ||mu_s - mu_t||^2 + Tr(S_s + S_t - 2 (S_s S_t)^{1/2}) between Gaussians fitted to the
    classifier's penultimate-layer features of the samples (s) and of the test data (t)
    (Heusel et al. 2017's FID, with a classifier trained on the same data set instead of
    Inception). Lower is better; 0 for identical feature statistics. It is biased upwards
    at small n: compare models at the same number of samples.
``mmd2`` -- the unbiased estimate of the squared kernel MMD (Gretton et al. 2012) in
    pixel space with the Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),
    sigma = the median pairwise distance among the *test* points (the median heuristic,
    over at most the first 2000; fixed by the data set so every model is scored with the
    same kernel). Lower is better; about 0 (it can be slightly negative) for samples from
    the data distribution.
``parzen_ll`` -- the Parzen-window estimate of Goodfellow et al. (2014): a Gaussian
    kernel density N(x; s_i, sigma^2 I) centred on the samples, sigma chosen on the
    validation split from a grid, mean test log-density reported (``parzen_sigma``,
    ``parzen_ll_sem``). Caveat: it is a poor estimator of log-likelihood in high dimension
    (Theis et al. 2016): it needs very many samples, rewards memorising the training
    set, and on binary data it is a density on R^D, not comparable with NLLs in nats.
``parzen_bernoulli_ll`` -- the same estimate with a Bernoulli kernel
    prod_d eps^[x_d != s_id] (1 - eps)^[x_d = s_id] (eps chosen on validation data): a
    proper distribution on {0, 1}^D, so its log-likelihood *is* in nats and sits on the
    scale of the likelihood models' -NLL (with the same caveats otherwise).
``label_*``, ``classes_covered``, ``classifier_score`` -- mode coverage: the classifier's
    predicted labels of the samples, their entropy (nats), KL(sample labels || test
    labels) (both predicted by the classifier, so its errors cancel), the number of
    classes predicted for at least a quarter of their test frequency, and the classifier
    score exp(E_x KL(p(y | x) || p(y))) (Salimans et al. 2016's Inception score, with our
    classifier; at most K, 1 for a single repeated image).

The classifier (:class:`FeatureClassifier`) is an MLP ``D -> h1 -> h2 -> K`` with ReLU
(h1, h2 = 256, 64 for D <= 256, else 512, 128; features = the h2 activations) trained by
Adam (lr 1e-3, weight decay 1e-4, batch 128) on the training split of the same data set,
keeping the epoch with the best validation accuracy. It is trained once per data set and
cached as a state_dict (with its test accuracy) under ``$ZOO_CACHE_DIR/classifiers``
(default ``~/.cache/zoo/classifiers``), loaded with ``weights_only=True``. On ``digits``
(8x8, threshold-binarised; 200 epochs) it reaches 93% test accuracy (94% validation);
:func:`load_classifier` returns its accuracies.

:func:`sample_quality` computes all of them for a model (or a tensor of samples) and a
data set name; ``zoo evaluate`` and ``metrics.json`` of ``zoo train`` report it.

References:
    1. I. Goodfellow et al. Generative Adversarial Nets. NeurIPS 2014 (Parzen window).
    2. A. Gretton, K. Borgwardt, M. Rasch, B. Schoelkopf, A. Smola. A Kernel Two-Sample
       Test. JMLR 2012.
    3. M. Heusel, H. Ramsauer, T. Unterthiner, B. Nessler, S. Hochreiter. GANs Trained by
       a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium. NeurIPS 2017.
    4. T. Salimans et al. Improved Techniques for Training GANs. NeurIPS 2016.
    5. L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative
       models. ICLR 2016.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from inference.checkpoint import CheckpointError

__all__ = [
    "FeatureClassifier",
    "draw_samples",
    "frechet_distance",
    "label_metrics",
    "load_classifier",
    "median_bandwidth",
    "mmd2",
    "parzen_log_likelihood",
    "sample_quality",
    "score_samples",
]

#: bump when the classifier's architecture or training changes (old caches are ignored)
CLASSIFIER_VERSION = 1
#: the largest temporary tensor (bytes) a metric builds: the data are processed in row
#: blocks of this size, so the memory above the inputs stays a few hundred MB on MNIST
BLOCK_BYTES = 64 * 2**20
#: rows per call of ``model.sample`` in :func:`sample_quality`
SAMPLE_CHUNK = 1000


def _block_rows(row_bytes: int) -> int:
    """Rows of a block whose temporaries take ``row_bytes`` each: at most BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // max(int(row_bytes), 1))


# ----- the feature classifier ---------------------------------------------------------
def classifier_sizes(data_dim: int) -> tuple[int, int]:
    """Hidden widths (h1, h2) of the classifier for ``data_dim`` pixels."""
    return (256, 64) if data_dim <= 256 else (512, 128)


class FeatureClassifier(nn.Module):
    """MLP classifier ``D -> h1 -> h2 -> K`` (ReLU); ``features(x)`` = the h2 activations."""

    def __init__(self, data_dim: int, num_classes: int, hidden: tuple[int, int] | None = None):
        super().__init__()
        h1, h2 = hidden or classifier_sizes(data_dim)
        self.body = nn.Sequential(nn.Linear(data_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.head = nn.Linear(h2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def cache_dir(path=None) -> Path:
    """Where classifiers are cached: ``path``, else ``$ZOO_CACHE_DIR/classifiers``, else
    ``~/.cache/zoo/classifiers``."""
    if path is not None:
        return Path(path).expanduser()
    root = os.environ.get("ZOO_CACHE_DIR") or "~/.cache/zoo"
    return Path(root).expanduser() / "classifiers"


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())


def train_classifier(train, valid, test, *, epochs: int | None = None, seed: int = 0, progress: bool = False):
    """A :class:`FeatureClassifier` trained on ``train`` (``zoo.Dataset`` with labels).

    Returns ``(classifier, info)``; info holds the architecture, the settings, and the
    validation and test accuracies of the kept (best-validation) epoch.
    """
    num_classes = int(max(train.y.max(), valid.y.max(), test.y.max())) + 1
    data_dim = train.x.shape[1]
    if epochs is None:  # ~ 2000 steps on small data sets, 10 epochs on MNIST-sized ones
        epochs = max(10, min(200, 2000 * 128 // len(train)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FeatureClassifier(data_dim, num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        g = torch.Generator().manual_seed(seed)
        best, best_state = -1.0, None
        for _ in tqdm(range(epochs), desc="feature classifier", unit="epoch", disable=not progress,
                      delay=1.0, leave=False, dynamic_ncols=True):
            model.train()
            for idx in torch.randperm(len(train), generator=g).split(128):
                loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            acc = _accuracy(model, valid.x, valid.y)
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
    model.eval()
    info = dict(
        version=CLASSIFIER_VERSION, data_dim=data_dim, num_classes=num_classes,
        hidden=list(classifier_sizes(data_dim)), epochs=epochs, seed=seed,
        valid_accuracy=best, test_accuracy=_accuracy(model, test.x, test.y),
    )
    return model, info


def load_classifier(data: str = "digits", *, root=None, binarize: str = "threshold", seed: int = 0,
                    cache=None, retrain: bool = False, progress: bool = False):
    """The feature classifier of data set ``data``: from the cache, else trained and cached.

    Returns ``(classifier, info)`` (info: architecture, accuracies, cache path).
    :raises ValueError: the data set has no labels (e.g. ``binarized_mnist``).
    """
    import zoo

    key = f"{data}-{binarize}" + (f"-seed{seed}" if binarize == "dynamic" else "")
    path = cache_dir(cache) / f"{key}-v{CLASSIFIER_VERSION}.pt"
    if path.is_file() and not retrain:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            info = dict(state["info"])
            model = FeatureClassifier(info["data_dim"], info["num_classes"], tuple(info["hidden"]))
            model.load_state_dict(state["state_dict"])
            model.eval()
            return model, {**info, "path": str(path)}
        except Exception as e:  # noqa: BLE001 - a corrupt cache is retrained, not fatal
            if isinstance(e, KeyboardInterrupt):
                raise
    splits = [zoo.load(data, s, root=root, binarize=binarize, seed=seed) for s in ("train", "valid", "test")]
    if any(s.y is None for s in splits) or splits[0].support != "binary":
        raise ValueError(f"{data!r} has no class labels for a feature classifier")
    model, info = train_classifier(*splits, seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    return model, {**info, "path": str(path)}


# ----- the metrics on tensors -------------------------------------------------------------
def _stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / max(f.shape[0] - 1, 1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature rows ``a`` and ``b``.

    ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}), in float64
    through symmetric eigendecompositions (exactly the same for identical statistics).
    """
    mu_a, s_a = _stats(a)
    mu_b, s_b = _stats(b)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root_a @ s_b @ root_a
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross
    return max(float(fd), 0.0)


def _sq_dists(x: torch.Tensor, y: torch.Tensor, *, binary: bool = False) -> torch.Tensor:
    """Squared Euclidean distances ``(len(x), len(y))`` in float64.

    ``binary=True`` (0/1 rows): computed in float32, which is exact here (integer sums
    below 2^24) and several times faster than float64 on the CPU.
    """
    dtype = torch.float32 if binary else torch.float64
    x, y = x.to(dtype), y.to(dtype)
    d = x.pow(2).sum(-1)[:, None] + y.pow(2).sum(-1)[None, :] - 2 * x @ y.T
    return d.clamp(min=0).double()


def median_bandwidth(x: torch.Tensor, max_rows: int = 2000) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``x``
    (its first ``max_rows`` rows, which bounds the cost on MNIST-sized test sets)."""
    x = x[:max_rows]
    d = _sq_dists(x, x, binary=_is_binary(x))
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return float(d[i, j].median().sqrt())


def _kernel_sum(x, y, sigma, *, exclude_diagonal=False, chunk=None) -> float:
    total = 0.0
    binary = _is_binary(x) and _is_binary(y)
    chunk = chunk or _block_rows(8 * len(y))
    for start in range(0, len(x), chunk):
        k = torch.exp(-_sq_dists(x[start:start + chunk], y, binary=binary) / (2 * sigma**2))
        if exclude_diagonal:
            rows = torch.arange(k.shape[0])
            k[rows, rows + start] = 0.0
        total += float(k.sum())
    return total


def mmd2(samples: torch.Tensor, data: torch.Tensor, sigma: float | None = None) -> float:
    """Unbiased squared MMD with the Gaussian kernel of bandwidth ``sigma``
    (default: :func:`median_bandwidth` of ``data``)."""
    sigma = median_bandwidth(data) if sigma is None else sigma
    if sigma <= 0:
        raise ValueError("the kernel bandwidth must be positive (are all data rows equal?)")
    m, n = len(samples), len(data)
    kxx = _kernel_sum(samples, samples, sigma, exclude_diagonal=True) / (m * (m - 1))
    kyy = _kernel_sum(data, data, sigma, exclude_diagonal=True) / (n * (n - 1))
    kxy = _kernel_sum(samples, data, sigma) / (m * n)
    return kxx + kyy - 2 * kxy


def _is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def _distance_histogram(samples, x, chunk=None) -> torch.Tensor | None:
    """For binary rows: counts[j, h] = #{i : Hamming(x_j, s_i) = h}, ``(len(x), D + 1)``;
    None unless both are binary."""
    if not (_is_binary(samples) and _is_binary(x)):
        return None
    D = samples.shape[1]
    chunk = chunk or _block_rows(8 * len(samples))
    out = []
    for start in range(0, len(x), chunk):
        d = _sq_dists(x[start:start + chunk], samples, binary=True).round().long()  # (b, n)
        out.append(torch.zeros(len(d), D + 1, dtype=torch.float64).scatter_add_(1, d, torch.ones(d.shape, dtype=torch.float64)))
    return torch.cat(out)


def _parzen_scores(samples, x, log_kernels, histogram=None, chunk=None):
    """log (1/n) sum_i k(x, s_i) for every row of x and each of K bandwidths: ``(len(x), K)``.

    ``log_kernels(sq_dist) -> (..., K)`` gives the log-kernel for K bandwidths. For binary
    rows the squared distance is the Hamming distance h in 0..D, so the sum over samples
    is a sum over h of count(h) k(h) (``histogram``), exact and cheap. Rows are scored in
    blocks whose (rows, distances, K) temporaries stay below :data:`BLOCK_BYTES`.
    """
    n = len(samples)
    if histogram is None:
        histogram = _distance_histogram(samples, x)
    if histogram is not None:
        values = torch.arange(histogram.shape[1], dtype=torch.float64)
        log_k = log_kernels(values)  # (D + 1, K)
        step = chunk or _block_rows(8 * log_k.numel())
        return torch.cat([
            torch.logsumexp(h.log()[..., None] + log_k, dim=1) - math.log(n) for h in histogram.split(step)
        ])
    step = chunk or _block_rows(8 * n * len(log_kernels(torch.zeros(1, dtype=torch.float64))[0]))
    rows = []
    for start in range(0, len(x), step):
        d = _sq_dists(x[start:start + step], samples)  # (b, n)
        rows.append(torch.logsumexp(log_kernels(d), dim=1) - math.log(n))  # (b, K)
    return torch.cat(rows)


def parzen_log_likelihood(samples, test, valid, *, kernel: str = "gaussian", grid=None, _histograms=None) -> dict:
    """Parzen-window log-likelihood of ``test`` under a kernel density on ``samples``.

    ``kernel="gaussian"`` (Goodfellow et al. 2014): N(x; s_i, sigma^2 I), sigma from ``grid``
    (default 30 values log-spaced in [0.05, 2]). ``kernel="bernoulli"``: per-pixel flip
    probability eps from ``grid`` (default 30 values log-spaced in [1e-3, 0.5]); a pmf on
    {0, 1}^D. The bandwidth maximising the mean log-likelihood of ``valid`` is used.
    Returns ``{"ll", "sem", "bandwidth"}`` (mean test log-likelihood in nats, its standard
    error, the chosen sigma or eps).
    """
    D = samples.shape[1]
    if kernel == "gaussian":
        default = torch.logspace(math.log10(0.05), math.log10(2.0), 30, dtype=torch.float64)

        def log_kernels(d, g):  # log N(x; s, g^2 I) from the squared distance d
            return -d[..., None] / (2 * g**2) - D / 2 * torch.log(2 * math.pi * g**2)
    elif kernel == "bernoulli":
        default = torch.logspace(-3, math.log10(0.5), 30, dtype=torch.float64)

        def log_kernels(d, g):  # d is the Hamming distance for binary rows
            return d[..., None] * torch.log(g) + (D - d[..., None]) * torch.log1p(-g)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose 'gaussian' or 'bernoulli'")
    hist_valid, hist_test = _histograms or (None, None)
    grid = default if grid is None else torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    valid_ll = _parzen_scores(samples, valid, lambda d: log_kernels(d, grid), hist_valid).mean(0)
    chosen = grid[int(valid_ll.argmax())].reshape(1)
    per_row = _parzen_scores(samples, test, lambda d: log_kernels(d, chosen), hist_test)[:, 0]
    return {
        "ll": float(per_row.mean()),
        "sem": float(per_row.std() / math.sqrt(len(per_row))) if len(per_row) > 1 else 0.0,
        "bandwidth": float(chosen),
    }


@torch.no_grad()
def label_metrics(classifier, samples: torch.Tensor, test: torch.Tensor) -> dict:
    """Mode coverage of ``samples`` by the classifier's predicted labels (module docstring).

    The reference is the classifier's predicted labels of the ``test`` points (not their
    true labels), so the classifier's errors cancel: the test set scores KL 0 against itself.
    """
    probs = F.softmax(classifier(samples.float()), dim=-1).double()
    k = probs.shape[-1]
    freq = torch.bincount(probs.argmax(-1), minlength=k).double() / len(samples)
    ref = torch.bincount(classifier(test.float()).argmax(-1), minlength=k).double() / len(test)
    nz = freq > 0
    entropy = abs(float(-(freq[nz] * freq[nz].log()).sum()))
    kl = float((freq[nz] * (freq[nz].log() - ref[nz].clamp(min=1e-12).log())).sum())
    marginal = probs.mean(0)
    score = math.exp(float((probs * (probs.clamp(min=1e-30).log() - marginal.clamp(min=1e-30).log())).sum(-1).mean()))
    return {
        "label_entropy": entropy,
        "label_kl": kl,
        "classes_covered": int(((freq >= 0.25 * ref) & (ref > 0)).sum()),
        "classifier_score": score,
        "label_frequencies": [round(float(f), 4) for f in freq],
    }


def score_samples(samples: torch.Tensor, test, valid, *, classifier=None, parzen_samples=None,
                  progress: bool = False) -> dict:
    """Every metric of ``samples`` against the ``test`` split (``zoo.Dataset``s; ``valid`` picks
    the Parzen bandwidths). ``parzen_samples`` (default ``samples``) centre the Parzen windows.
    Without a ``classifier`` the feature and label metrics are left out. Memory above the
    inputs is bounded (row blocks of :data:`BLOCK_BYTES`); ``progress`` shows a bar of the phases."""
    samples = samples.detach().cpu().float()
    parzen_samples = samples if parzen_samples is None else parzen_samples.detach().cpu().float()
    if samples.dim() != 2 or samples.shape[1] != test.x.shape[1]:
        raise ValueError(f"samples must have shape (n, {test.x.shape[1]}), got {tuple(samples.shape)}")
    phases = ["mmd", *(["features", "labels"] if classifier is not None else []), "distances", "parzen"]
    bar = tqdm(total=len(phases), desc="sample metrics", unit="phase", disable=not progress, delay=1.0,
               leave=False, dynamic_ncols=True)
    with bar:
        def phase(name):
            bar.set_postfix_str(name, refresh=False)

        phase("mmd")
        out = {"num_samples": int(len(samples)), "mmd2": mmd2(samples, test.x)}
        bar.update()
        if classifier is not None:
            phase("features")
            with torch.no_grad():
                out["fd"] = frechet_distance(_features(classifier, samples), _features(classifier, test.x))
            bar.update()
            phase("labels")
            out.update(label_metrics(classifier, samples, test.x))
            bar.update()
        phase("distances")
        hists = (_distance_histogram(parzen_samples, valid.x), _distance_histogram(parzen_samples, test.x))
        bar.update()
        phase("parzen")
        gauss = parzen_log_likelihood(parzen_samples, test.x, valid.x, kernel="gaussian", _histograms=hists)
        bern = parzen_log_likelihood(parzen_samples, test.x, valid.x, kernel="bernoulli", _histograms=hists)
        bar.update()
    out.update(
        parzen_ll=gauss["ll"], parzen_ll_sem=gauss["sem"], parzen_sigma=gauss["bandwidth"],
        parzen_bernoulli_ll=bern["ll"], parzen_epsilon=bern["bandwidth"],
        parzen_num_samples=int(len(parzen_samples)),
    )
    return out


def _features(classifier, x: torch.Tensor) -> torch.Tensor:
    """The classifier's feature rows of ``x``, computed in row blocks."""
    return torch.cat([classifier.features(b) for b in x.split(_block_rows(4 * 4 * x.shape[1]))])


def draw_samples(model, n: int, *, chunk: int = SAMPLE_CHUNK, progress: bool = False) -> torch.Tensor:
    """``n`` samples of ``model`` (``(n, D)`` on the CPU), drawn ``chunk`` at a time with a bar."""
    out = []
    with torch.no_grad(), tqdm(total=n, desc="sampling", unit="sample", disable=not progress, delay=1.0,
                               leave=False, dynamic_ncols=True) as bar:
        for start in range(0, n, chunk):
            out.append(model.sample(min(chunk, n - start)).detach().cpu().float())
            bar.update(len(out[-1]))
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "data_dim", 0))


def sample_quality(model, data: str = "digits", *, root=None, binarize: str = "threshold",
                   seed: int = 0, split: str = "test", num_samples: int | None = None,
                   parzen_samples: int = 10_000, cache=None, progress: bool = True) -> dict:
    """Score ``model``'s samples (or a tensor of samples) against split ``split`` of ``data``.

    Draws ``parzen_samples`` samples (in chunks of :data:`SAMPLE_CHUNK`) with Pyro's seed set
    to ``seed``; the first ``num_samples`` (default: the size of ``split``) give the Frechet
    distance, MMD and label metrics, all of them the Parzen windows (bandwidths chosen on the
    ``valid`` split). The feature classifier comes from :func:`load_classifier` (trained
    once, cached). Models that cannot sample, and non-binary data, give
    ``{"sample_note": why}``. Memory above the data is bounded; ``progress`` shows bars
    (sampling, then the metric phases) for work longer than a second.
    """
    import zoo

    test = zoo.load(data, split, root=root, binarize=binarize, seed=seed)
    if test.support != "binary":
        return {"sample_note": f"sample-quality metrics need binary image data; {data!r} is {test.support}"}
    valid = zoo.load(data, "valid", root=root, binarize=binarize, seed=seed)
    n = len(test) if num_samples is None else int(num_samples)
    if isinstance(model, torch.Tensor):
        samples = model
        n = min(n, len(samples))
    else:
        pyro.set_rng_seed(seed)
        try:
            samples = draw_samples(model, max(n, parzen_samples), progress=progress)
        except NotImplementedError as e:
            return {"sample_note": f"{type(model).__name__} cannot sample: {e}"}
    samples = samples.detach().cpu().float()
    try:
        classifier, info = load_classifier(data, root=root, binarize=binarize, seed=seed, cache=cache,
                                           progress=progress)
    except (ValueError, CheckpointError) as e:
        classifier, info = None, {"note": str(e)}
    out = score_samples(samples[:n], test, valid, classifier=classifier, parzen_samples=samples, progress=progress)
    out["classifier_test_accuracy"] = info.get("test_accuracy")
    return out
