"""Engine overhead: one SVI step of ``inference.fit`` against a hand-written PyTorch step.

Both compute the same objective (the negative ELBO of a minibatch scaled to the data set,
one reparameterised guide draw) on the same parameters and batch, followed by the same
Adam update. The engine's step is exactly what ``fit`` runs per step (objective, Adam,
learning-rate schedule, minibatch indexing, NaN check and loss history); the baseline is
the loss written by hand with ``torch.distributions``.

    python -m benchmarks.engine_overhead [--quick]
"""
from __future__ import annotations

import argparse

import torch
import torch.distributions as td

import inference
import zoo
from benchmarks.common import interleaved, table
from inference.loop import batch_indices, lr_at


def bernoulli_case(objective: str, data: torch.Tensor, batch_size: int = 128):
    n, d = data.shape
    engine_model = zoo.create("bernoulli", data_dim=d)
    hand_model = zoo.create("bernoulli", data_dim=d)
    hand_model.load_state_dict(engine_model.state_dict())
    elbo = inference.make_objective(objective)
    opt_e = torch.optim.Adam(engine_model.parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(hand_model.parameters(), lr=1e-3)
    state = {"step": 0, "losses": []}

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
        state["losses"].append(value)
        state["step"] += 1

    prior = td.Beta(hand_model.prior_a, hand_model.prior_b)

    def hand_step():
        step = state["step"]
        batch = data[batch_indices(step, n, batch_size, 0)]
        q = td.Beta(hand_model.alpha, hand_model.beta)
        p = q.rsample()
        loglik = td.Bernoulli(probs=p).log_prob(batch).sum() * (n / batch.shape[0])
        loss = -(loglik + prior.log_prob(p).sum() - q.log_prob(p).sum())
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        float(loss.detach() / n)

    # same objective on the same weights and batch: check before timing
    torch.manual_seed(0)
    batch = data[:batch_size]
    a = elbo.differentiable_loss(engine_model.model, engine_model.guide, batch, num_data=n)
    torch.manual_seed(0)
    q = td.Beta(hand_model.alpha, hand_model.beta)
    p = q.rsample()
    b = -(td.Bernoulli(probs=p).log_prob(batch).sum() * n / batch_size + prior.log_prob(p).sum() - q.log_prob(p).sum())
    assert torch.allclose(a, b, rtol=1e-5), (a, b)
    return engine_step, hand_step


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, repeat = (3, 10) if args.quick else (9, 50)
    torch.set_num_threads(2)
    data = zoo.load("digits", "train").x
    rows = []
    for objective in ("elbo", "jit_elbo"):
        engine_step, hand_step = bernoulli_case(objective, data)
        t = interleaved({"engine": engine_step, "hand": hand_step}, rounds=rounds, repeat=repeat)
        rows.append({
            "model": "bernoulli (64-dim digits, batch 128)",
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
