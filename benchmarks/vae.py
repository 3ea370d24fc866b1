"""VAE engine overhead: one ``inference.fit`` step against a hand-written PyTorch ELBO step.

Both sides use the same encoder and decoder weights (copied), the same minibatch, the same
objective and the same Adam update:

* ``elbo``/``jit_elbo``: one reparameterised draw z = mu + sigma * eps, loss
  -(N/B) sum_n [log p(x_n | z_n) + log N(z_n; 0, I) - log q(z_n | x_n)];
* ``meanfield``/``jit_meanfield``: the same with the Gaussian KL in closed form.

The engine's step is what ``fit`` runs per step (learning-rate schedule, minibatch
indexing, ``objective.differentiable_loss(model.model, model.guide, ...)``, Adam, the
loss read-back); the baseline is the loss written with ``torch.nn.functional``. Before
timing, both losses are checked equal on the same draw. Cases: the classic MNIST VAE
784-400-20 (synthetic binary data: timing does not depend on pixel values) and the zoo's
digits VAE 64-256-8 (its defaults), batch 128, two threads by default.

    python -m benchmarks.vae [--quick] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import inference
import zoo
from benchmarks.common import interleaved, table
from inference.loop import batch_indices, lr_at

OBJECTIVES = ("elbo", "jit_elbo", "meanfield", "jit_meanfield")


def hand_loss(model, batch, num_data, eps, analytic_kl: bool):
    """The negative ELBO written directly in PyTorch (the baseline)."""
    h = model.encoder(batch)
    loc, raw = h.chunk(2, dim=-1)
    scale = F.softplus(raw + 0.5413248546129181) + 1e-4  # log(e - 1), as in zoo.vae
    z = loc + scale * eps
    log_lik = -F.binary_cross_entropy_with_logits(model.decoder(z), batch, reduction="sum")
    if analytic_kl:
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
    else:  # log q(z) - log p(z), the constants cancel
        kl = (-0.5 * eps.pow(2) - scale.log() + 0.5 * z.pow(2)).sum()
    return -(num_data / batch.shape[0]) * (log_lik - kl)


def _gaussian(net, inputs):
    loc, raw = net(inputs).chunk(2, dim=-1)
    return loc, F.softplus(raw + 0.5413248546129181) + 1e-4


def _log_normal(z, loc, scale):
    """log N(z; loc, diag scale^2) summed over everything, without the -log(2 pi) / 2 per entry."""
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log()).sum()


def hand_loss_vae2(model, batch, num_data, eps1, eps2):
    """The negative ELBO of the two-stochastic-layer VAE (``zoo.vae2``) written directly:
    z1 = mu_q1(x) + sigma_q1(x) eps1, z2 = mu_q2(z1) + sigma_q2(z1) eps2 (the guide's order),
    -(N/B) sum_n [log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1)]
    (the Gaussians' constants cancel: p and q have L1 + L2 of them each)."""
    loc1, scale1 = _gaussian(model.encoder_z1, batch)
    z1 = loc1 + eps1 * scale1
    loc2, scale2 = _gaussian(model.encoder_z2, z1)
    z2 = loc2 + eps2 * scale2
    prior_loc, prior_scale = _gaussian(model.prior_z1, z2)
    log_p = (-F.binary_cross_entropy_with_logits(model.decoder(z1), batch, reduction="sum")
             + _log_normal(z1, prior_loc, prior_scale) - 0.5 * z2.pow(2).sum())
    log_q = _log_normal(z1, loc1, scale1) + _log_normal(z2, loc2, scale2)
    return -(num_data / batch.shape[0]) * (log_p - log_q)


def vae_case(objective: str, data: torch.Tensor, *, batch_size: int = 128, **options):
    """(engine_step, hand_step) for one objective, after checking they compute the same loss."""
    n, d = data.shape
    torch.manual_seed(0)
    engine_model = zoo.create("vae", data_dim=d, **options)
    hand_model = zoo.create("vae", data_dim=d, **options)
    hand_model.load_state_dict(engine_model.state_dict())
    analytic = "meanfield" in objective
    elbo = inference.make_objective(objective)
    opt_e = torch.optim.Adam(engine_model.parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(hand_model.parameters(), lr=1e-3)
    state = {"step": 0}
    latent = engine_model.latent_dim

    def engine_step():
        step = state["step"]
        for g in opt_e.param_groups:
            g["lr"] = lr_at(step, 10_000, 1e-3, "cosine", 0.01)
        batch = data[batch_indices(step, n, batch_size, 0)]
        loss = elbo.differentiable_loss(engine_model.model, engine_model.guide, batch, num_data=n)
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
        value = float(loss.detach() / n)
        assert value == value
        state["step"] += 1

    def hand_step():
        step = state["step"]
        for g in opt_h.param_groups:
            g["lr"] = lr_at(step, 10_000, 1e-3, "cosine", 0.01)
        batch = data[batch_indices(step, n, batch_size, 0)]
        eps = torch.randn(batch.shape[0], latent)
        loss = hand_loss(hand_model, batch, n, eps, analytic)
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        value = float(loss.detach() / n)
        assert value == value

    # same loss on the same weights, batch and draw (the jit objective draws while tracing
    # inside fork_rng, so check it on its second call)
    batch = data[:batch_size]
    for _ in range(2 if objective.startswith("jit_") else 1):
        torch.manual_seed(1)
        a = elbo.differentiable_loss(engine_model.model, engine_model.guide, batch, num_data=n)
    torch.manual_seed(1)
    b = hand_loss(hand_model, batch, n, torch.randn(batch_size, latent), analytic)
    assert torch.allclose(a, b, rtol=1e-5), (objective, float(a), float(b))
    return engine_step, hand_step


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    rounds, repeat = (3, 5) if args.quick else (9, 30)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases = [
        ("VAE 784-400-20 (batch 128)", torch.bernoulli(torch.full((10_000, 784), 0.13), generator=g),
         dict(hidden=(400,), latent_dim=20)),
        ("VAE 64-256-8, digits (batch 128)", zoo.load("digits", "train").x, {}),
    ]
    rows = []
    for label, data, options in cases:
        for objective in OBJECTIVES:
            engine_step, hand_step = vae_case(objective, data, **options)
            t = interleaved({"engine": engine_step, "hand": hand_step}, rounds=rounds, repeat=repeat)
            rows.append({
                "model": label,
                "objective": objective,
                "engine ms/step": 1e3 * t["engine"],
                "hand-written ms/step": 1e3 * t["hand"],
                "ratio": t["engine"] / t["hand"],
            })
    out = table(rows, ["model", "objective", "engine ms/step", "hand-written ms/step", "ratio"])
    print(out)
    return out


if __name__ == "__main__":
    main()
