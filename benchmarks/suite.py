"""The benchmark suite: the engine against hand-written PyTorch, for every likelihood model.

    python -m benchmarks [--quick] [--out runs/benchmarks] [--device cpu|cuda] [--models vae nade ...]

For every registered model that the SVI engine trains and that has a density over binary
images, at two sizes (784-dim images, batch 128, with the classic hidden sizes:
VAE 784-400-20, the two-stochastic-layer VAE at IWAE's 784-(200,200)-100-(100,100)-50,
NADE 784-500, MADE 784-500-784, the mixture also at K=500; and the 64-dim
digits with the model's defaults), it measures, in one run:

* **step time** of the engine - exactly what :func:`inference.fit` runs per step
  (the ``Trainer`` of ``inference.svi.build_trainer(...)``: learning-rate schedule, minibatch,
  objective, Adam, NaN guard, loss history), on its default fast path and on plain
  Pyro - against a hand-written PyTorch training loop (same weights, same minibatches,
  same Adam, the loss written with ``torch.nn.functional``, ``loss.item()`` per step).
  Before timing, the hand-written loss is checked equal to the engine's on the same
  weights, batch and random draw. Contestants run in interleaved rounds; times are
  medians over rounds, so a noisy machine slows all of them alike;
* **images per second** of the engine, and its **peak memory** during training
  (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the rise of the process's peak
  resident set, reset before each measurement through ``/proc/self/clear_refs``);
* the **fraction of float32 matmul peak** the engine reaches: matmul FLOPs of one step
  (counted by ``torch.utils.flop_counter``) per second, over the peak that this machine
  reaches on a large square matmul (measured by the suite itself);
* **importance-sampled NLL** evaluation time of the VAE (``VAE.log_prob``, K samples)
  against a hand-written loop over the same chunks;
* **time per epoch and training memory against the data-set size** (1k, 10k, 60k
  images): time should grow linearly, memory stay flat.

Writes ``benchmarks.md`` (the tables), ``benchmarks.json`` and ``benchmarks.png`` to the
output folder and prints the tables. ``--quick`` (fewer, shorter rounds) is a smoke test
that finishes in about two minutes on two CPU threads; its ratios are noisier.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
from benchmarks.common import table as _table
from inference.adversarial import Adversarial
from inference.callbacks import NaNGuard
from inference.loop import Minibatches, Schedule, Trainer, lr_at
from inference.objectives import make_objective
from inference.svi import build_trainer, resolve_settings

__all__ = ["main", "run"]

#: options giving the classic sizes on 784-dim images
SIZES_784 = {
    "vae": dict(hidden=(400,), latent_dim=20),
    "vae2": dict(latent_dims=(100, 50), hidden=(200, 100), activation="tanh"),  # IWAE's, the leaderboard's
    "nade": dict(hidden_size=500),
    "made": dict(hidden_sizes=(500,)),
}
#: more rows on 784-dim images at other sizes: (label, model, options)
EXTRA_784 = [
    ("mixture K=500", "mixture", dict(num_components=500)),  # Larochelle & Murray's MoB-500, the leaderboard's
]
BATCH = 128
LR = 1e-3



def rerun(trainer, steps: int):
    """``steps`` steps of exactly what ``fit`` runs (the trainer's step object and
    minibatches; schedule, NaN guard and read-back as in ``fit``), from step 0."""
    fresh = Trainer(trainer.step_obj, trainer.batches, total_steps=steps, seed=trainer.seed,
                    schedule=Schedule(steps, trainer.schedule.kind, trainer.schedule.final_fraction),
                    settings=trainer.settings, callbacks=[NaNGuard()], device=trainer.device)
    return fresh.run()

def table(rows, columns) -> str:
    """A Markdown table; missing values as a dash."""
    return _table([{k: "–" if v is None else v for k, v in r.items()} for r in rows], columns)


# ----- measurement helpers ---------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """Bytes of the C heap in use (glibc ``mallinfo2``: small blocks plus mmapped ones), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


class PeakMemory(TorchDispatchMode):
    """Peak memory (MB) in use above the level at entry, while the block runs.

    CUDA: the caching allocator's ``max_memory_allocated``. CPU: the C heap in use
    (glibc ``mallinfo2``), sampled after every tensor operation (a dispatch mode), so it
    sees every intermediate; it slows the block down, so measure apart from timings.
    ``mb`` is None where neither is available.
    """

    def __init__(self, device):
        super().__init__()
        self.device, self.mb = device, None
        self.in_use = None if device.type == "cuda" else _heap_in_use()

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        if self.in_use is not None:
            self.base = self.peak = self.in_use()
            return super().__enter__()
        return self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
            return False
        if self.in_use is not None:
            super().__exit__(*exc)
            self.mb = (max(self.peak, self.in_use()) - self.base) / 2**20
        return False


def matmul_peak_gflops(device, n: int = 2048, repeats: int = 5) -> float:
    """The best float32 GFLOP/s of an n x n matmul on this device (the suite's 'peak')."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / 3)
    return 2 * n**3 / best / 1e9


def count_flops(fn) -> int:
    """Matmul FLOPs (forward and backward) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----- hand-written losses (the baselines) ----------------------------------------------
def hand_loss_fn(name: str, model, num_data: int):
    """A function batch -> the model's training loss written in plain PyTorch, or None.

    Uses the other benchmark modules' baselines where they exist (VAE, VAE2, NADE, MADE) and
    the model's own network (``conditional_logits``) with ``torch.nn.functional`` for
    the other fully observed models. None for models with no baseline here.
    """
    if name == "vae":
        from benchmarks.vae import hand_loss

        def vae(batch):
            eps = torch.randn(batch.shape[0], model.latent_dim, device=batch.device)
            return hand_loss(model, batch, num_data, eps, analytic_kl=False)

        return vae
    if name == "vae2":  # the guide draws eps1 (z1's) before eps2 (z2's)
        from benchmarks.vae import hand_loss_vae2

        L1, L2 = model.latent_dims

        def vae2(batch):
            eps1 = torch.randn(batch.shape[0], L1, device=batch.device)
            eps2 = torch.randn(batch.shape[0], L2, device=batch.device)
            return hand_loss_vae2(model, batch, num_data, eps1, eps2)

        return vae2
    if name == "bernoulli":  # Beta-Bernoulli: K reparameterised draws of p from the Beta guide
        K = resolve_settings(model)["num_particles"]
        Beta = torch.distributions.Beta

        def bernoulli(batch):
            q = Beta(model.alpha, model.beta, validate_args=False)
            p = q.rsample((K,))  # (K, n), as Pyro's vectorised particles draw them
            prior = Beta(model.prior_a, model.prior_b, validate_args=False)
            logits = torch.distributions.utils.probs_to_logits(p, is_binary=True).unsqueeze(-2)
            log_lik = -F.binary_cross_entropy_with_logits(logits.expand(-1, *batch.shape), batch.expand(K, -1, -1),
                                                          reduction="none").sum((-1, -2))
            elbo = (num_data / batch.shape[0]) * log_lik + prior.log_prob(p).sum(-1) - q.log_prob(p).sum(-1)
            return -elbo.mean()

        return bernoulli
    if name == "nade":
        from benchmarks.autoregressive import hand_nade_loss

        return lambda batch: hand_nade_loss(model.W, model.c, model.V, model.b, batch, num_data)
    if name == "made":
        from benchmarks.autoregressive import hand_made_loss

        net = model.net
        masks = net.masks(0)
        return lambda batch: hand_made_loss(list(net.weights), list(net.biases), masks, batch, num_data)
    if name == "independent":
        return lambda batch: (num_data / batch.shape[0]) * F.binary_cross_entropy_with_logits(
            model.logits.expand_as(batch), batch, reduction="sum")
    if name == "mixture":  # z summed out: log p(x) = logsumexp_k log pi_k + x . theta_k - sum_i softplus(theta_ki)
        def mixture(batch):
            theta = model.component_logits
            log_joint = model.mixing_logits.log_softmax(-1) + batch @ theta.t() - F.softplus(theta).sum(-1)
            return -(num_data / batch.shape[0]) * log_joint.logsumexp(-1).sum()

        return mixture
    if hasattr(model, "conditional_logits") and resolve_settings(model)["objective"] == "elbo":
        return lambda batch: (num_data / batch.shape[0]) * F.binary_cross_entropy_with_logits(
            model.conditional_logits(batch), batch, reduction="sum")
    return None


def hand_train(loss_fn, params, data, steps: int, seed: int = 0):
    """A hand-written training loop: cosine learning rate, Adam (torch's multi-tensor one, as
    the engine's), ``loss.item()`` per step."""
    opt = torch.optim.Adam(params, lr=LR, foreach=True)
    batches = Minibatches(data, BATCH, seed)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, LR, "cosine", 0.01)
        loss = loss_fn(batches(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError("hand-written loss is not finite")


# ----- the cases ----------------------------------------------------------------------------
def likelihood_models() -> list[str]:
    """Registered models trained by the SVI engine that have a density over binary data."""
    names = []
    for name in zoo.available():
        cls = zoo.get(name)
        if issubclass(cls, Adversarial) or cls.support != "binary":
            continue
        try:
            model = zoo.create(name, data_dim=4)
            model.log_prob(torch.zeros(1, 4))
        except (zoo.NoDensityError, TypeError, ValueError):
            continue
        names.append(name)
    return names


def step_case(name, data, options, *, rounds, round_seconds, case_seconds, device, peak_gflops):
    """One model at one size: engine (fast and plain) vs hand-written, interleaved.

    Each contestant runs ``steps`` steps per round, ``steps`` chosen from a first,
    untimed round so that a round lasts about ``round_seconds``; slow cases get fewer
    rounds (at least one) so that the case takes about ``case_seconds``.
    """
    pyro.set_rng_seed(0)
    try:
        model = zoo.create(name, data_dim=data.shape[1], **options)
    except (ValueError, MemoryError) as e:
        return {"skipped": str(e).split(";")[0]}
    init = {k: v.clone() for k, v in model.state_dict().items()}
    n = data.shape[0]
    settings = resolve_settings(model)
    runs = {}
    for mode in ("auto", "none"):
        m = zoo.create(name, data_dim=data.shape[1], **options)
        m.load_state_dict(init)
        runs[mode] = (m, build_trainer(m, data, steps=50, batch_size=BATCH, lr=LR, progress=False,
                                       device=device, compile=mode)[0])
    fast_mode = runs["auto"][1].settings["compile"]
    hand_model = zoo.create(name, data_dim=data.shape[1], **options).to(device)
    hand_model.load_state_dict(init)
    x = data.to(device)
    hand = hand_loss_fn(name, hand_model, n)

    # the baseline computes the engine's loss: same weights, batch and draw
    check = None
    if hand is not None:
        objective = make_objective(settings["objective"].removeprefix("jit_"),
                                   num_particles=settings["num_particles"],
                                   max_plate_nesting=hand_model.max_plate_nesting)
        batch = x[:BATCH]
        torch.manual_seed(1)
        a = objective.differentiable_loss(hand_model.model, hand_model.guide, batch, num_data=n).detach()
        torch.manual_seed(1)
        b = hand(batch).detach()
        check = float((a - b).abs() / b.abs())
        if not check <= 1e-4:  # not the same objective: no ratio, and the table says why
            print(f"  {name}: hand-written loss {float(b)} != engine loss {float(a)}; no baseline")
            hand = None

    def engine(mode):
        def go(steps):
            _, run = runs[mode]
            with pyro.validation_enabled(False):
                rerun(run, steps)
        return go

    contestants = {"engine": engine("auto"), "plain": engine("none")}
    if hand is not None:
        contestants["hand"] = lambda steps: hand_train(hand, list(hand_model.parameters()), x, steps)

    def timed(fn, steps):
        _sync(device)
        t0 = time.perf_counter()
        fn(steps)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    # a first round of one step each (tracing, first allocations): not counted, but its
    # fastest contestant gives an upper bound on the step time
    estimate = min(timed(fn, 1) for fn in contestants.values())
    steps = max(1, min(50, round(round_seconds / estimate)))
    rounds = max(1, min(rounds, int(case_seconds / (len(contestants) * steps * estimate))))
    times = {k: [] for k in contestants}
    for _ in range(rounds):
        for k, fn in contestants.items():
            times[k].append(timed(fn, steps))
    t = {k: statistics.median(v) for k, v in times.items()}
    memory = {}
    for k in ("engine", "hand"):  # apart from the timings: the CPU measurement slows steps down
        if k in contestants:
            with PeakMemory(device) as mem:
                contestants[k](min(steps, 3))
            memory[k] = mem.mb

    # matmul FLOPs of one step, forward and backward
    def one_step():
        m, _ = runs["none"]
        objective = make_objective(settings["objective"], num_particles=settings["num_particles"],
                                   max_plate_nesting=m.max_plate_nesting)
        loss = objective.differentiable_loss(m.model, m.guide, x[:BATCH], num_data=n)
        loss.backward()

    flops = count_flops(one_step)
    row = {
        "objective": settings["objective"],
        "fast path": fast_mode,
        "engine ms/step": 1e3 * t["engine"],
        "plain Pyro ms/step": 1e3 * t["plain"],
        "hand-written ms/step": 1e3 * t["hand"] if "hand" in t else None,
        "ratio": t["engine"] / t["hand"] if "hand" in t else None,
        "plain ratio": t["plain"] / t["hand"] if "hand" in t else None,
        "images/s": BATCH / t["engine"],
        "engine peak MB": memory["engine"],
        "hand peak MB": memory.get("hand"),
        "GFLOP/step": flops / 1e9,
        "% matmul peak": 100 * flops / t["engine"] / 1e9 / peak_gflops if flops else None,
        "loss check (rel. diff)": check,
        "rounds x steps": f"{rounds} x {steps}",
        "num_parameters": sum(p.numel() for p in hand_model.parameters()),
    }
    return row


def nll_case(*, num_points, num_samples, rounds, device):
    """IS-NLL of the 784-400-20 VAE: ``VAE.log_prob`` against a hand-written loop."""
    pyro.set_rng_seed(0)
    model = zoo.create("vae", data_dim=784, **SIZES_784["vae"]).to(device)
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((num_points, 784), 0.13), generator=g).to(device)
    max_rows = model._rows_per_chunk() if hasattr(model, "_rows_per_chunk") else model.max_rows

    @torch.no_grad()
    def hand():
        out = []
        rows = max(max_rows // num_samples, 1)
        for xb in x.split(rows):
            per_chunk = max(max_rows // len(xb), 1)
            chunks = []
            for start in range(0, num_samples, per_chunk):
                k = min(per_chunk, num_samples - start)
                loc, scale = model.encode(xb)
                z = loc + scale * torch.randn(k, *loc.shape, device=x.device)
                log_lik = -F.binary_cross_entropy_with_logits(
                    model.decode(z), xb.expand(k, -1, -1), reduction="none").sum(-1)
                log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
                log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
                chunks.append(log_lik + log_prior - log_q)
            out.append(torch.logsumexp(torch.cat(chunks), 0) - math.log(num_samples))
        return torch.cat(out)

    def engine():
        with pyro.validation_enabled(False):
            return model.log_prob(x, num_samples=num_samples)

    times = {"engine": [], "hand": []}
    values = {}
    for r in range(rounds + 1):
        for k, fn in (("engine", engine), ("hand", hand)):
            _sync(device)
            t0 = time.perf_counter()
            values[k] = fn()
            _sync(device)
            if r:
                times[k].append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": "VAE 784-400-20",
        "points": num_points,
        "K": num_samples,
        "engine s": t["engine"],
        "hand-written s": t["hand"],
        "ratio": t["engine"] / t["hand"],
        "engine NLL": -float(values["engine"].mean()),
        "hand-written NLL": -float(values["hand"].mean()),
    }


def scaling_case(name, options, sizes, *, device, repeats=3):
    """Seconds per epoch (median of ``repeats`` epochs) and training memory of ``fit``
    against the number of images."""
    rows = []
    g = torch.Generator().manual_seed(3)
    for n in sizes:
        x = torch.bernoulli(torch.full((n, 784), 0.13), generator=g)
        pyro.set_rng_seed(0)
        model = zoo.create(name, data_dim=784, **options)
        run = build_trainer(model, x, epochs=1, batch_size=BATCH, lr=LR, progress=False, device=device)[0]
        with pyro.validation_enabled(False):
            rerun(run, 3)  # warm-up: tracing, first allocations
            epochs = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                result = rerun(run, run.total_steps)
                _sync(device)
                epochs.append(time.perf_counter() - t0)
            seconds = statistics.median(epochs)
            with PeakMemory(device) as mem:  # the first steps of an epoch, apart from the timing
                rerun(run, min(20, run.total_steps))
        rows.append({
            "model": f"{name} 784",
            "images": n,
            "steps/epoch": result.steps,
            "s/epoch": seconds,
            "us/image": 1e6 * seconds / (result.steps * BATCH),
            "training peak MB": mem.mb,
            "data MB": x.numel() * x.element_size() / 2**20,
        })
    return rows


# ----- the report ---------------------------------------------------------------------------
def plot(steps_rows, scaling_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in steps_rows if r.get("ratio") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.8, 0.32 * len(rows) + 1.5)))
    # horizontal bars: each label sits level with its own pair of bars, however long it is
    labels = [f"{r['model']} ({r['size']})" for r in rows]
    pos = list(range(len(rows)))[::-1]  # the first row on top
    ax1.barh([p + 0.2 for p in pos], [r["ratio"] for r in rows], height=0.4, label="engine (default path)")
    ax1.barh([p - 0.2 for p in pos], [r["plain ratio"] for r in rows], height=0.4, label="engine, plain Pyro")
    ax1.axvline(1.0, color="k", lw=0.8)
    ax1.axvline(1.1, color="r", ls="--", lw=0.8, label="goal 1.10 (784-dim)")
    ax1.axvline(1.3, color="orange", ls="--", lw=0.8, label="goal 1.3 (64-dim)")
    ax1.set_yticks(pos, labels, fontsize=7)
    ax1.set_xlabel("step time / hand-written PyTorch")
    ax1.legend(fontsize=7, loc="upper right")
    ax1.set_title("engine step vs hand-written (median of interleaved rounds)")
    for model in sorted({r["model"] for r in scaling_rows}):
        rs = [r for r in scaling_rows if r["model"] == model]
        ax2.loglog([r["images"] for r in rs], [r["s/epoch"] for r in rs], "o-", label=f"{model}: s/epoch")
        ref = rs[0]["s/epoch"] / rs[0]["images"]
        ax2.loglog([r["images"] for r in rs], [ref * r["images"] for r in rs], ":", color="gray")
    ax2.set_xlabel("images in the data set")
    ax2.set_ylabel("seconds per epoch (dotted: linear)")
    ax3 = ax2.twinx()
    for model in sorted({r["model"] for r in scaling_rows}):
        rs = [r for r in scaling_rows if r["model"] == model]
        ax3.plot([r["images"] for r in rs], [r["training peak MB"] or 0 for r in rs], "s--", alpha=0.6,
                 label=f"{model}: training peak MB")
    ax3.set_ylabel("training peak memory above the data (MB)")
    ax3.set_ylim(bottom=0)
    lines = ax2.get_legend_handles_labels()
    more = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    ax2.set_title("time per epoch and memory vs data size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(*, quick=False, out="runs/benchmarks", device="cpu", models=None, threads=None) -> dict:
    """Run the suite; write the tables, JSON and plot to ``out``; return the results."""
    from inference.distributed import local_device

    device = local_device(device)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rounds, round_seconds, case_seconds = (3, 0.1, 2.0) if quick else (11, 0.5, 30.0)
    peak = matmul_peak_gflops(device, n=1024 if quick else 2048)
    names = [m for m in likelihood_models() if models is None or m in models]
    g = torch.Generator().manual_seed(0)
    images = torch.bernoulli(torch.full((10_000, 784), 0.13), generator=g)
    digits = zoo.load("digits", "train").x
    steps_rows = []
    for size, data in (("784-dim, batch 128", images), ("64-dim digits, batch 128", digits)):
        cases = [(name, name, SIZES_784.get(name, {}) if data.shape[1] == 784 else {}) for name in names]
        if data.shape[1] == 784:
            cases += [case for case in EXTRA_784 if case[1] in names]
        for label, name, options in cases:
            row = step_case(name, data, options, rounds=rounds, round_seconds=round_seconds,
                            case_seconds=case_seconds, device=device, peak_gflops=peak)
            steps_rows.append({"model": label, "size": size, **row})
            print(f"  {label} ({size}): " + ", ".join(
                f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float) and k in ("ratio", "engine ms/step")),
                flush=True)
    nll = nll_case(num_points=100 if quick else 500, num_samples=200 if quick else 1000,
                   rounds=1 if quick else 5, device=device)
    nade = None
    if "nade" in names and device.type == "cpu":  # the recurrence vs the former formulation, and the floor
        from benchmarks.autoregressive import nade_speedup

        nade = nade_speedup(rounds=2 if quick else 5, repeat=1 if quick else 2)
    sizes = (1000, 10_000, 60_000)
    scaling = scaling_case("independent", {}, sizes, device=device)
    if not quick:
        scaling += scaling_case("vae", SIZES_784["vae"], sizes, device=device)
        scaling += scaling_case("made", SIZES_784["made"], sizes, device=device)

    machine = (f"torch {torch.__version__}, {device} "
               f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
               f"{torch.get_num_threads()} threads; float32 matmul peak measured {peak:.0f} GFLOP/s")
    done = [r for r in steps_rows if "skipped" not in r]
    md = [
        "# Benchmarks",
        "",
        f"`python -m benchmarks{' --quick' if quick else ''}{'' if device.type == 'cpu' else ' --device cuda'}`: "
        f"{machine}. Contestants run in interleaved rounds (up to {rounds}; "
        f"steps per round chosen for ~{round_seconds} s a round); medians over rounds.",
        "",
        "## Training step: engine vs hand-written PyTorch",
        "",
        "ratio = engine step / hand-written step (engine on its default path; 'plain ratio': plain Pyro).",
        "",
        table(done, ["model", "size", "objective", "fast path", "engine ms/step", "hand-written ms/step",
                     "ratio", "plain ratio", "images/s", "engine peak MB", "hand peak MB", "% matmul peak",
                     "rounds x steps"]),
        "## Importance-sampled NLL (VAE)",
        "",
        table([nll], list(nll)),
    ]
    if nade is not None:
        from benchmarks.autoregressive import SPEEDUP_COLUMNS

        md += ["## NADE: the O(nH) recurrence vs the former cumulative sum", "",
               "One hand-written training step each (same weights and batches, interleaved); floor: 6 multiply-adds "
               "per (pixel, image, hidden unit) at the measured matmul peak.", "", table([nade], SPEEDUP_COLUMNS)]
    md += [
        "## Time per epoch and training memory vs data size",
        "",
        "One epoch of `fit` (batch 128) on n synthetic 784-pixel images (median of 3 epochs). Training peak MB: the rise of the "
        "memory in use during the first 20 steps of an epoch above what was in use before (data and model).",
        "",
        table(scaling, list(scaling[0])),
    ]
    skipped = [r for r in steps_rows if "skipped" in r]
    if skipped:
        md += ["Skipped: " + "; ".join(f"{r['model']} ({r['size']}): {r['skipped']}" for r in skipped), ""]
    md += [f"Suite wall time: {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(md)
    (out / "benchmarks.md").write_text(text)
    results = {"machine": machine, "peak_gflops": peak, "quick": quick, "steps": steps_rows,
               "nll": nll, "nade_speedup": nade, "scaling": scaling}
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(done, scaling, out / "benchmarks.png")
    print(text)
    print(f"written: {out / 'benchmarks.md'}, {out / 'benchmarks.json'}, {out / 'benchmarks.png'}")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about two minutes)")
    parser.add_argument("--out", default="runs/benchmarks", help="output folder (default runs/benchmarks)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", help="only these models (default: every likelihood model)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    return run(quick=args.quick, out=args.out, device=args.device, models=args.models, threads=args.threads)


if __name__ == "__main__":
    main()
