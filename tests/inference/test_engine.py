"""The SVI engine: resumption, the NaN guard, checkpoints, minibatch scaling, objectives."""
import math
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroParam
from torch.optim.optimizer import register_optimizer_step_pre_hook

import inference
import zoo
from inference.checkpoint import CHECKPOINT, METRICS, Checkpointer
from zoo.base import ZooModel, data_plate


def binary_data(n=200, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.linspace(0.1, 0.9, d).expand(n, -1), generator=g)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


SETTINGS = dict(steps=60, batch_size=32, lr=0.05, checkpoint_every=10, progress=False)


class CrashAt:
    """Makes the guide raise at a given call, like a kill between two checkpoints."""

    def __init__(self, model, step, exc):
        self.calls, self.step, self.exc, self.guide = 0, step, exc, model.guide

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            self.exc()
        return self.guide(*args, **kwargs)


def test_resumed_run_equals_uninterrupted(tmp_path):
    x = binary_data()
    reference = zoo.create("bernoulli", data_dim=5)
    full = inference.fit(reference, x, run_dir=tmp_path / "a", **SETTINGS)

    model = zoo.create("bernoulli", data_dim=5)
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(model, x, run_dir=tmp_path / "b", guide=CrashAt(model, 35, _kill), **SETTINGS)
    saved = inference.load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert saved["step"] == 30  # the last checkpoint before the crash

    fresh = zoo.create("bernoulli", data_dim=5, prior=(1.0, 1.0))
    resumed = inference.fit(fresh, x, run_dir=tmp_path / "b", **SETTINGS)
    assert resumed.resumed_from == 30
    for k, v in params(reference).items():
        assert torch.equal(params(fresh)[k], v), k
    assert resumed.losses == full.losses
    # the metric log holds each epoch once, as in the uninterrupted run
    assert (tmp_path / "b" / METRICS).read_text() .count("\n") == (tmp_path / "a" / METRICS).read_text().count("\n")


def _kill():
    raise RuntimeError("killed")


def test_ctrl_c_checkpoints_then_resumes(tmp_path):
    x = binary_data()
    reference = zoo.create("bernoulli", data_dim=5)
    inference.fit(reference, x, **SETTINGS)

    model = zoo.create("bernoulli", data_dim=5)
    sigint = lambda: signal.raise_signal(signal.SIGINT)  # noqa: E731
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 23"):
        inference.fit(model, x, run_dir=tmp_path, guide=CrashAt(model, 23, sigint), **SETTINGS)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 23  # saved at once
    inference.fit(model, x, run_dir=tmp_path, **SETTINGS)
    for k, v in params(reference).items():
        assert torch.equal(params(model)[k], v), k


class Exploding(ZooModel):
    """A Bernoulli model whose parameter turns NaN after a number of guide calls."""

    def __init__(self, nan_after):
        super().__init__()
        self.data_dim, self.nan_after, self.calls = 2, nan_after, 0
        self.logits = PyroParam(torch.zeros(2))

    def model(self, x=None, num_data=None):
        self.calls += torch.is_grad_enabled()  # training steps (not the engine's structure probe)
        logits = self.logits * (math.nan if self.calls > self.nan_after else 1.0)
        with data_plate(x, num_data):
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def num_parameters(self):
        return 2


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    model = Exploding(nan_after=25)
    with pytest.raises(inference.DivergenceError, match=r"at step 25.*step 20"):
        inference.fit(model, binary_data(d=2), run_dir=tmp_path, **SETTINGS)
    saved = inference.load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["step"] == 20
    assert all(torch.isfinite(v).all() for v in saved["modules"]["model"].values())


def test_checkpoint_loads_with_weights_only_and_rejects_corrupt_files(tmp_path):
    inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), run_dir=tmp_path, **SETTINGS)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 60 and "optimizers" in state and "rng" in state
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(inference.CheckpointError, match="cannot read checkpoint"):
        inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), run_dir=tmp_path, **SETTINGS)


def test_resume_refuses_other_settings(tmp_path):
    inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), run_dir=tmp_path, **SETTINGS)
    with pytest.raises(inference.CheckpointError, match="lr"):
        inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), run_dir=tmp_path, **{**SETTINGS, "lr": 0.1})


@pytest.mark.parametrize("setting,other", [("weight_decay", 0.01), ("fused", True), ("optimizer", "adagrad"), ("eps", 1e-4)])
def test_a_checkpoint_written_before_a_setting_existed_resumes(tmp_path, setting, other):
    """A setting added later (weight_decay, fused, optimizer) is absent from older checkpoints, which ran
    with its default: they resume; a run with another value is refused."""
    x = binary_data()
    short = {**SETTINGS, "steps": 30}
    inference.fit(zoo.create("bernoulli", data_dim=5), x, run_dir=tmp_path, **short)
    path = tmp_path / CHECKPOINT
    state = torch.load(path, weights_only=True)
    del state["settings"][setting]
    torch.save(state, path)
    resumed = inference.fit(zoo.create("bernoulli", data_dim=5), x, run_dir=tmp_path, **short)
    assert resumed.resumed_from == 30
    with pytest.raises(inference.CheckpointError, match=setting):
        inference.fit(zoo.create("bernoulli", data_dim=5), x, run_dir=tmp_path, **{**short, setting: other})


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_fused_optimizer_follows_the_default_within_rounding_and_resumes(tmp_path, optimizer):
    """torch's fused kernel computes the update in another order: the same trajectory to
    float rounding (not bit for bit), and a fused run resumes to its uninterrupted self."""
    x = binary_data()
    settings = {**SETTINGS, "steps": 60, "weight_decay": 0.5, "optimizer": optimizer}
    runs = {}
    for fused in (False, True):
        model = zoo.create("made", data_dim=x.shape[1], hidden_sizes=(8,), seed=1)
        inference.fit(model, x, fused=fused, **settings)
        runs[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(runs[True], runs[False], rtol=1e-4, atol=1e-5)
    half = zoo.create("made", data_dim=x.shape[1], hidden_sizes=(8,), seed=1)
    sigint = lambda: signal.raise_signal(signal.SIGINT)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        inference.fit(half, x, fused=True, run_dir=tmp_path, guide=CrashAt(half, 23, sigint), **settings)
    resumed = zoo.create("made", data_dim=x.shape[1], hidden_sizes=(8,), seed=1)
    assert inference.fit(resumed, x, fused=True, run_dir=tmp_path, **settings).resumed_from == 23
    assert torch.equal(torch.cat([p.detach().flatten() for p in resumed.parameters()]), runs[True])
    with pytest.raises(ValueError, match="fused must be True or False"):
        inference.fit(zoo.create("bernoulli", data_dim=5), x, fused="yes", **SETTINGS)


def test_same_seed_same_numbers():
    x = binary_data()
    a, b = zoo.create("bernoulli", data_dim=5), zoo.create("bernoulli", data_dim=5)
    ra = inference.fit(a, x, seed=3, **SETTINGS)
    rb = inference.fit(b, x, seed=3, **SETTINGS)
    assert ra.losses == rb.losses
    rc = inference.fit(zoo.create("bernoulli", data_dim=5), x, seed=4, **SETTINGS)
    assert rc.losses != ra.losses


def test_minibatch_loss_is_scaled_to_the_data_set():
    """Over a partition into minibatches, the scaled losses average to the full-data loss."""
    x = binary_data(n=120)
    model = zoo.create("bernoulli", data_dim=5)
    elbo = inference.make_objective("elbo")

    def loss(batch):
        pyro.set_rng_seed(0)  # the same guide draw of p every time
        return elbo.differentiable_loss(model.model, model.guide, batch, num_data=len(x)).item()

    batches = [loss(b) for b in x.split(30)]
    assert sum(batches) / len(batches) == pytest.approx(loss(x), rel=1e-5)


@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae"])
def test_jit_objective_equals_plain_and_compiles_once(name):
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=5)
    with torch.no_grad():
        model.q_concentration_unconstrained.fill_(3.0)  # away from the prior: KL > 0
    plain, jit = inference.make_objective(name, num_particles=2), inference.make_objective(f"jit_{name}", num_particles=2)
    for seed in range(3):
        grads = []
        for objective in (plain, jit):
            model.zero_grad()
            pyro.set_rng_seed(seed)
            loss = objective.differentiable_loss(model.model, model.guide, x[:64], num_data=len(x))
            loss.backward()
            grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
        assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
        for g0, g1 in zip(grads[0][1], grads[1][1]):
            assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-5)
    assert len(jit.compiled) == 1  # traced once, replayed after (unlike pyro 1.9.2's JitTraceMeanField_ELBO)


def test_iwae_approaches_log_marginal_likelihood():
    """log p(x) of Beta-Bernoulli is sum_i log B(a + s_i, b + N - s_i) - log B(a, b)."""
    x = binary_data(n=6, d=2)
    model = zoo.create("bernoulli", data_dim=2)
    ones = x.sum(0)
    lbeta = lambda a, b: torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)  # noqa: E731
    exact = (lbeta(1 + ones, 1 + len(x) - ones) - lbeta(torch.tensor(1.0), torch.tensor(1.0))).sum()
    # each bound is a random variable: compare expectations, estimated from repeats, with margins of
    # 5 standard errors (one K=10^4 estimate has sd ~0.025, so a single draw is no test of 0.02)
    means, ses = [], []
    for k, repeats in ((1, 500), (10, 2000), (10_000, 25)):
        pyro.set_rng_seed(0)
        objective = inference.make_objective("elbo" if k == 1 else "iwae", num_particles=k)
        draws = torch.tensor([-objective.differentiable_loss(model.model, model.guide, x).item() for _ in range(repeats)])
        means.append(draws.mean().item())
        ses.append((draws.std() / repeats**0.5).item())
    assert means[0] + 5 * (ses[0] + ses[1]) < means[1] < means[2] - 5 * (ses[1] + ses[2])
    # E[bound_K] <= log p(x), and K=10^4 is close: its bias (~var/2K) is far below 0.05
    assert means[2] < exact.item() + 5 * ses[2]
    assert means[2] == pytest.approx(exact.item(), abs=0.05 + 5 * ses[2])


def test_parameters_move_and_loss_falls():
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=5)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = inference.fit(model, x, **SETTINGS)
    assert before and all(not torch.equal(before[k], v) for k, v in model.named_parameters())
    assert sum(result.losses[-10:]) < sum(result.losses[:10])


def test_early_stopping_restores_best(tmp_path):
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=5)
    result = inference.fit(model, x, val_data=binary_data(seed=1), early_stopping=2, steps=3000,
                           batch_size=200, lr=0.3, progress=False)
    assert result.stopped_early and result.steps < 3000
    best = min(v for _, v in result.val_losses)
    assert result.val_losses[-1][1] > best


def test_early_stopping_patience_counts_epochs_when_a_long_run_validates_every_few_epochs():
    """A run of more than 100 epochs validates every k-th epoch: patience 3 with k = 2 stops at
    the second validation without improvement (4 epochs since the best), not the third (6)."""
    from types import SimpleNamespace

    from inference.callbacks import EarlyStopping

    module = torch.nn.Linear(1, 1)
    trainer = SimpleNamespace(done=0, per_epoch=10, stop_requested=False, stopped_early=False,
                              step_obj=SimpleNamespace(modules={"model": module}))
    stopper = EarlyStopping(patience=3)
    stopped_at = None
    for epoch, val in [(2, 5.0), (4, 4.0), (6, 4.5), (8, 4.2), (10, 4.1), (12, 4.0)]:
        trainer.done = epoch * trainer.per_epoch
        with torch.no_grad():
            module.weight.fill_(epoch)  # the parameters of this epoch
        stopper.on_epoch_end(trainer, {"val_loss": val})
        if trainer.stop_requested:
            stopped_at = epoch
            break
    assert stopped_at == 8 and stopper.best["bad_epochs"] == 4
    assert float(module.weight) == 4  # the best epoch's parameters are restored


@pytest.mark.parametrize(
    "data, match",
    [
        (torch.full((4, 5), 0.5), "not 0/1|0/1|binary"),
        (torch.ones(4, 3), r"shape \(batch, 5\)"),
        (torch.ones(5), r"shape \(batch, 5\)"),
        (torch.ones(4, 5, dtype=torch.long), "float"),
    ],
)
def test_bad_data_is_rejected_clearly(data, match):
    with pytest.raises(zoo.DataError, match=match):
        inference.fit(zoo.create("bernoulli", data_dim=5), data, steps=1, progress=False)


def test_bad_categorical_data_and_options():
    model = zoo.create("categorical", num_categories=3)
    with pytest.raises(zoo.DataError, match="0..2"):
        inference.fit(model, torch.tensor([0, 1, 5]), steps=1, progress=False)
    with pytest.raises(zoo.DataError, match="integer"):
        inference.fit(model, torch.tensor([0.0, 1.0]), steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        inference.fit(model, torch.tensor([0, 1]), objective="nope", steps=1, progress=False)
    with pytest.raises(ValueError, match="steps or epochs"):
        inference.fit(model, torch.tensor([0, 1]), steps=1, epochs=1, progress=False)
    with pytest.raises(zoo.UnknownNameError, match="available models"):
        zoo.create("no_such_model")
    with pytest.raises(TypeError, match="bad option"):
        zoo.create("bernoulli", colour="red")
    with pytest.raises(ValueError, match="prior"):
        zoo.create("bernoulli", prior=(0.0, 1.0))


def test_evaluate_reports_nll_and_bits_per_dim():
    x = binary_data()
    model = zoo.create("bernoulli", data_dim=5)
    metrics = inference.evaluate(model, x)
    nll = -model.log_prob(x).mean().item()
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
    assert metrics["bits_per_dim"] == pytest.approx(nll / (5 * math.log(2)), rel=1e-5)
    assert metrics["num_examples"] == len(x)


def test_fits_do_not_share_parameters_through_the_param_store():
    x = binary_data()
    a, b = zoo.create("bernoulli", data_dim=5), zoo.create("bernoulli", data_dim=5)
    inference.fit(a, x, **SETTINGS)
    before = params(a)
    inference.fit(b, 1 - x, **SETTINGS)
    assert all(torch.equal(before[k], v) for k, v in params(a).items())
    assert not torch.allclose(a.point_estimate()["p"], b.point_estimate()["p"])
    assert len(pyro.get_param_store()) == 0


def test_svi_refuses_a_model_with_another_trainer():
    with pytest.raises(ValueError, match="fit_adversarial"):
        inference.fit(zoo.create("gan", data_dim=4), binary_data(d=4), steps=1, progress=False)


def test_validation_loss_for_an_enumerated_model():
    """TraceEnum_ELBO refuses differentiable_loss under no_grad; validation must still work."""
    x = binary_data(d=4)
    model = zoo.create("mixture", data_dim=4)
    result = inference.fit(model, x, val_data=binary_data(d=4, seed=1), steps=20, batch_size=50, progress=False)
    assert result.val_losses and all(math.isfinite(v) for _, v in result.val_losses)


def test_a_checkpoint_is_also_written_after_its_wall_time_and_the_run_resumes_to_the_same_numbers(tmp_path):
    """every_seconds bounds what a kill loses (here 0 s: a checkpoint after every step, where the
    step count alone would save every 10); the extra checkpoints change no number."""
    x = binary_data()
    reference = zoo.create("bernoulli", data_dim=5)
    full = inference.fit(reference, x, **SETTINGS)
    model = zoo.create("bernoulli", data_dim=5)
    path = tmp_path / CHECKPOINT
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(model, x, checkpoint=Checkpointer(path, every_seconds=0.0), guide=CrashAt(model, 35, _kill), **SETTINGS)
    assert inference.load_checkpoint(path)["step"] == 34  # the step before the crash, not step 30
    fresh = zoo.create("bernoulli", data_dim=5)
    resumed = inference.fit(fresh, x, checkpoint=Checkpointer(path, every_seconds=0.0), **SETTINGS)
    assert resumed.resumed_from == 34 and resumed.losses == full.losses
    for k, v in params(reference).items():
        assert torch.equal(params(fresh)[k], v), k


def test_the_staged_schedule_is_burda_et_als():
    """lr_schedule="staged" on a 3280-epoch run: epochs [3^i - 1)/2, (3^(i+1) - 1)/2) at
    lr * 10^(-i/7), i = 0..7 (1, 3, 9, ..., 2187 passes), the last at lr / 10."""
    per_epoch = 3
    total = 3280 * per_epoch
    sched = inference.loop.Schedule(total, "staged")
    lrs = torch.tensor([sched(step, 1e-3) for step in range(total)], dtype=torch.float64)
    stages, counts = torch.unique_consecutive(lrs, return_counts=True)
    assert counts.tolist() == [3**i * per_epoch for i in range(8)]
    expected = 1e-3 * 10 ** (-torch.arange(8, dtype=torch.float64) / 7)
    assert torch.allclose(stages, expected, rtol=1e-12) and math.isclose(stages[-1], 1e-4, rel_tol=1e-12)


def test_fit_trains_by_the_staged_schedule():
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), **{**SETTINGS, "steps": 100}, lr_schedule="staged")
    finally:
        hook.remove()
    assert seen == [inference.loop.lr_at(s, 100, 0.05, "staged", 0.01) for s in range(100)]
    assert seen[0] == 0.05 and math.isclose(seen[-1], 0.005) and sorted(seen, reverse=True) == seen
    with pytest.raises(ValueError, match="unknown lr_schedule 'steps'; choose from cosine, constant, staged"):
        inference.fit(zoo.create("bernoulli", data_dim=5), binary_data(), **SETTINGS, lr_schedule="steps")
