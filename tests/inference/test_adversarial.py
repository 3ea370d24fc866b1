"""The adversarial trainer: the losses, D -> D*, the V(D*, G) identity, and run folders
that resume exactly like the SVI engine's."""
import math
import signal

import pytest
import torch
from torch import nn

import inference
import zoo
from inference.adversarial import (
    discriminator_loss,
    fit_adversarial,
    fit_discriminator,
    generator_loss,
    jensen_shannon,
    optimal_discriminator,
    value_function,
)
from inference.checkpoint import CheckpointError
from inference.checkpoint import CHECKPOINT, METRICS


def binary_data(n=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.linspace(0.1, 0.9, d).expand(n, -1), generator=g)
    x[:, 1] = x[:, 0]
    return x


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: one thread is ~1.5 ms a step, two threads on a busy 2-core machine
    oversubscribe it and were measured 80x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SETTINGS = dict(steps=60, batch_size=32, lr=1e-3, lr_d=2e-3, checkpoint_every=10, progress=False)


# ----- losses ---------------------------------------------------------------------------
def test_losses_at_an_undecided_discriminator():
    zero = torch.zeros(5)
    assert discriminator_loss(zero, zero).item() == pytest.approx(math.log(4))
    assert generator_loss(zero, "minimax").item() == pytest.approx(-math.log(2))
    assert generator_loss(zero, "non_saturating").item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="unknown generator loss"):
        generator_loss(zero, "wasserstein")


def test_losses_match_their_definitions_and_both_generator_losses_agree_in_direction():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2], requires_grad=True)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected = -(d_real.log().mean() + (1 - d_fake).log().mean())
    assert discriminator_loss(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)
    assert generator_loss(fake, "minimax").item() == pytest.approx((1 - d_fake).log().mean().item(), rel=1e-6)
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(-d_fake.log().mean().item(), rel=1e-6)
    (g_mm,) = torch.autograd.grad(generator_loss(fake, "minimax"), fake)
    (g_ns,) = torch.autograd.grad(generator_loss(fake, "non_saturating"), fake)
    assert (g_mm < 0).all() and (g_ns < 0).all()  # both raise D(G(z))
    # where D rejects the sample (logit -3) the minimax gradient is much weaker: it saturates
    assert g_ns[0].abs() > 10 * g_mm[0].abs()


# ----- the theory by quadrature ---------------------------------------------------------
def normal(x, m, s):
    return torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def test_value_at_optimal_discriminator_is_jsd_identity_by_quadrature():
    x = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    w = x[1] - x[0]
    p_data = 0.3 * normal(x, -2, 0.5) + 0.7 * normal(x, 1.5, 0.8)
    p_g = normal(x, 0, 1.5)
    d_star = optimal_discriminator(p_data, p_g)
    v = value_function(d_star, p_data, p_g, w)
    assert v.item() == pytest.approx(-math.log(4) + 2 * jensen_shannon(p_data, p_g, w).item(), abs=1e-9)
    # D* maximises V: any other discriminator does worse
    for other in (torch.full_like(x, 0.5), (d_star * 0.9 + 0.05), torch.sigmoid(x)):
        assert value_function(other, p_data, p_g, w) < v
    # equal distributions: JSD 0, V = -log 4, D* = 1/2
    assert value_function(optimal_discriminator(p_g, p_g), p_g, p_g, w).item() == pytest.approx(-math.log(4), abs=1e-9)


@pytest.mark.parametrize("a", [0.0, 0.25, 0.6, 1.0])
def test_jsd_of_shifted_uniforms_has_its_closed_form(a):
    # p = U(0, 1), q = U(a, a + 1): JSD = a log 2 (the non-overlapping mass), on a
    # discrete grid of cell midpoints so the supports are represented exactly
    n = 4000
    x = (torch.arange(2 * n, dtype=torch.float64) + 0.5) / n
    p = (x < 1).double()
    q = ((x >= a) & (x < a + 1)).double()
    w = 1 / n
    assert jensen_shannon(p, q, w).item() == pytest.approx(a * math.log(2), abs=1e-12)
    v = value_function(optimal_discriminator(p, q), p, q, w)
    assert v.item() == pytest.approx(-math.log(4) + 2 * a * math.log(2), abs=1e-12)


def test_learned_discriminator_approaches_d_star_in_1d():
    torch.manual_seed(0)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.5, 0.5])),
        torch.distributions.Normal(torch.tensor([-2.0, 2.0]), torch.tensor([0.5, 0.5])),
    )
    gen = torch.distributions.Normal(0.0, 1.5)
    disc = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    result = fit_discriminator(
        _Wrap(disc), lambda n: mix.sample((n,)), lambda n: gen.sample((n,)), steps=2000, batch_size=512, lr=3e-3
    )
    x = torch.linspace(-3, 3, 601)  # where p_data + p_g > 0.02
    p_data, p_g = mix.log_prob(x).exp(), gen.log_prob(x).exp()
    d_star = optimal_discriminator(p_data, p_g)
    with torch.no_grad():
        learned = torch.sigmoid(disc(x[:, None]).squeeze(-1))
    error = (learned - d_star).abs()
    # measured over seeds 0-3: max 0.019-0.027, mean 0.0039-0.0047; about 2x for slack
    assert error.max() < 0.05 and error.mean() < 0.01
    # its loss approaches log 4 - 2 JSD (the value at D*) from above
    grid = torch.linspace(-15, 15, 30_001, dtype=torch.float64)
    jsd = jensen_shannon(mix.log_prob(grid).exp().double(), gen.log_prob(grid).exp().double(), grid[1] - grid[0])
    final = sum(result.history["loss_d"][-200:]) / 200
    assert final == pytest.approx(math.log(4) - 2 * jsd.item(), abs=0.02)


class _Wrap(nn.Module):
    """A 1-D discriminator net as a function of points (n,) -> logits (n,)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[:, None]).squeeze(-1)


# ----- the trainer ----------------------------------------------------------------------
def test_both_players_train_and_each_optimiser_moves_only_its_player():
    x = binary_data()
    model = zoo.create("gan", data_dim=6)
    before = params(model)
    result = fit_adversarial(model, x, **SETTINGS)
    assert set(result.history) == {"loss_d", "loss_g"} and len(result.history["loss_g"]) == 60
    assert result.losses == result.history["loss_d"]
    after = params(model)
    assert all(not torch.equal(before[k], after[k]) for k in before if "prior" not in k)

    frozen_g = zoo.create("gan", data_dim=6)
    before = params(frozen_g)
    fit_adversarial(frozen_g, x, **{**SETTINGS, "lr": 0.0})
    after = params(frozen_g)
    for k in before:
        moved = not torch.equal(before[k], after[k])
        assert moved == k.startswith("discriminator"), k


def test_same_seed_same_numbers_and_options_reach_the_step():
    x = binary_data()
    a, b = zoo.create("gan", data_dim=6), zoo.create("gan", data_dim=6)
    b.load_state_dict(a.state_dict())
    ra = fit_adversarial(a, x, seed=3, objective="minimax", d_steps=2, **SETTINGS)
    rb = fit_adversarial(b, x, seed=3, objective="minimax", d_steps=2, **SETTINGS)
    assert ra.history == rb.history and ra.settings["objective"] == "minimax"
    assert all(v <= 0 for v in ra.history["loss_g"])  # E[log(1 - D)] is never positive
    for k, v in params(a).items():
        assert torch.equal(params(b)[k], v)


class CrashAt:
    """Makes the discriminator call ``action`` at a given call (3 calls per step)."""

    def __init__(self, model, call, action):
        self.calls, self.call, self.action, self.model = 0, call, action, model
        self.original = model.discriminate

    def __enter__(self):
        def discriminate(x):
            self.calls += 1
            if self.calls == self.call:
                self.action()
            return self.original(x)

        self.model.discriminate = discriminate
        return self

    def __exit__(self, *exc):
        del self.model.discriminate
        return False


def _kill():
    raise RuntimeError("killed")


def test_resumed_run_equals_uninterrupted(tmp_path):
    x = binary_data()
    reference = zoo.create("gan", data_dim=6)
    start = params(reference)
    full = fit_adversarial(reference, x, run_dir=tmp_path / "a", **SETTINGS)

    model = zoo.create("gan", data_dim=6)
    model.load_state_dict(start)
    with CrashAt(model, 3 * 35 + 1, _kill), pytest.raises(RuntimeError, match="killed"):
        fit_adversarial(model, x, run_dir=tmp_path / "b", **SETTINGS)
    assert inference.load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 30

    fresh = zoo.create("gan", data_dim=6)  # other initial weights: all come from the checkpoint
    resumed = fit_adversarial(fresh, x, run_dir=tmp_path / "b", **SETTINGS)
    assert resumed.resumed_from == 30
    for k, v in params(reference).items():
        assert torch.equal(params(fresh)[k], v), k
    assert resumed.history == full.history
    lines = lambda p: (p / METRICS).read_text().count("\n")  # noqa: E731
    assert lines(tmp_path / "b") == lines(tmp_path / "a")
    saved = inference.load_checkpoint(tmp_path / "b" / CHECKPOINT)  # weights_only=True
    assert set(saved["optimizers"]) == {"generator", "discriminator"}


def test_ctrl_c_checkpoints_then_resumes(tmp_path):
    x = binary_data()
    reference = zoo.create("gan", data_dim=6)
    start = params(reference)
    fit_adversarial(reference, x, **SETTINGS)

    model = zoo.create("gan", data_dim=6)
    model.load_state_dict(start)
    sigint = lambda: signal.raise_signal(signal.SIGINT)  # noqa: E731
    with CrashAt(model, 3 * 22 + 2, sigint), pytest.raises(KeyboardInterrupt, match="interrupted at step 23"):
        fit_adversarial(model, x, run_dir=tmp_path, **SETTINGS)
    assert inference.load_checkpoint(tmp_path / CHECKPOINT)["step"] == 23
    fit_adversarial(model, x, run_dir=tmp_path, **SETTINGS)
    for k, v in params(reference).items():
        assert torch.equal(params(model)[k], v), k


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x = binary_data()
    model = zoo.create("gan", data_dim=6)

    def poison():
        with torch.no_grad():
            model.discriminator[-1].bias.fill_(math.nan)

    with CrashAt(model, 3 * 25 + 1, poison), pytest.raises(inference.DivergenceError, match=r"loss_d = nan.* at step 25.*step 20"):
        fit_adversarial(model, x, run_dir=tmp_path, **SETTINGS)
    saved = inference.load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["step"] == 20
    assert all(torch.isfinite(v).all() for v in saved["modules"]["model"].values())


def test_resume_refuses_other_settings(tmp_path):
    x = binary_data()
    fit_adversarial(zoo.create("gan", data_dim=6), x, run_dir=tmp_path, **SETTINGS)
    with pytest.raises(CheckpointError, match="objective"):
        fit_adversarial(zoo.create("gan", data_dim=6), x, run_dir=tmp_path, objective="minimax", **SETTINGS)


def test_bad_input_is_rejected_clearly():
    x = binary_data()
    gan = zoo.create("gan", data_dim=6)
    with pytest.raises(ValueError, match="unknown adversarial objective"):
        fit_adversarial(gan, x, objective="elbo", steps=1)
    with pytest.raises(ValueError, match="validation loss"):
        fit_adversarial(gan, x, early_stopping=3, steps=1)
    with pytest.raises(ValueError, match="d_steps"):
        fit_adversarial(gan, x, d_steps=0, steps=1)
    with pytest.raises(zoo.DataError):
        fit_adversarial(gan, x[:, :5], steps=1)
    with pytest.raises(TypeError, match="not a GAN"):
        fit_adversarial(zoo.create("bernoulli", data_dim=6), x, steps=1)
