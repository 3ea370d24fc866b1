"""The benchmark suite's hand-written baselines compute the engine's objective.

A ratio against a baseline means something only if both sides compute the same loss on the
same weights, batch and random draw; the suite checks this before timing (and drops a
baseline that differs), and this test keeps every baseline passing that check.
"""
import pyro
import pytest
import torch

import zoo
from benchmarks.suite import hand_loss_fn, likelihood_models
from inference.objectives import make_objective
from inference.svi import resolve_settings


@pytest.mark.parametrize("name,options", [(n, {}) for n in likelihood_models()] + [("mixture", {"num_components": 7})])
def test_the_hand_written_loss_is_the_engines_loss(name, options):
    pyro.set_rng_seed(0)
    model = zoo.create(name, data_dim=12, **options)
    hand = hand_loss_fn(name, model, num_data=300)
    if hand is None:
        pytest.skip(f"{name} has no hand-written baseline")
    settings = resolve_settings(model)
    objective = make_objective(settings["objective"].removeprefix("jit_"), num_particles=settings["num_particles"],
                               max_plate_nesting=model.max_plate_nesting)
    x = torch.bernoulli(torch.full((40, 12), 0.3), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    engine = objective.differentiable_loss(model.model, model.guide, x, num_data=300).detach()
    torch.manual_seed(2)
    baseline = hand(x).detach()
    assert torch.isfinite(engine)
    assert torch.allclose(engine, baseline, rtol=1e-5, atol=0), (name, float(engine), float(baseline))
