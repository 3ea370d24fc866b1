"""The engine's fast path: the traced objective gives the plain path's numbers, for every model.

``compile="jit"`` replays the objective as a graph traced once (inference.objectives.Traced);
``"auto"`` (the default) uses it for the zoo's own models. Each registered model trained by
the SVI engine is checked here: the same loss and gradients as plain Pyro on the same
weights and seed (bitwise: the traced graph runs the same kernels in the same order), and
the same parameters after a few steps of ``inference.fit``. A new model that cannot be
traced fails here; its author sets ``compile="none"`` in its ``fit_defaults``. The one
exception to bitwise: TraceEnum_ELBO of a single enumerated site (the mixture), which the
fast path collapses to one ``logsumexp``, equal within float rounding (``collapsed``).
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroParam

import inference
import zoo
from inference import loop
from inference.checkpoint import CHECKPOINT, Checkpointer
from inference.loop import Minibatches, batch_indices
from inference.objectives import Traced
from inference.svi import resolve_settings
from zoo.base import ZooModel, data_plate

DATA_DIM = 6


def make(name):
    pyro.set_rng_seed(0)
    if zoo.get(name).support == "categorical":
        return zoo.create(name, num_categories=3)
    return zoo.create(name, data_dim=DATA_DIM)


def toy_data(model, n=96):
    g = torch.Generator().manual_seed(1)
    if model.support == "categorical":
        return torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    x = torch.bernoulli(torch.linspace(0.2, 0.8, model.data_dim).expand(n, -1), generator=g)
    x[:, 1] = x[:, 0]
    return x


def engine_trained(name) -> bool:
    return not issubclass(zoo.get(name), inference.Adversarial)


SVI_MODELS = [name for name in zoo.available() if engine_trained(name)]


def collapsed(name) -> bool:
    """Whether the model's fast path is :func:`inference.traced.collapsed_enum_elbo` (equal
    within rounding, not bit for bit)."""
    return resolve_settings(make(name))["objective"].removeprefix("jit_") == "enum"


def assert_same(a, b, name, *what):
    """Bitwise, or within float32 rounding of the largest entry for a collapsed objective."""
    if collapsed(name) and a.is_floating_point():
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max())), (name, *what, (a - b).abs().max())
    else:
        assert torch.equal(a, b), (name, *what, (a - b).abs().max())


def traceable(model) -> bool:
    return resolve_settings(model)["compile"] not in ("none", None)


def loss_and_grads(objective, model, x, num_data, seed):
    model.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(model.model, model.guide, x, num_data=num_data)
    loss.backward()
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("name", SVI_MODELS)
def test_traced_objective_gives_the_same_loss_and_gradients(name):
    model = make(name)
    if not traceable(model):
        pytest.skip(f"{name} opts out of the traced path (compile='none' in fit_defaults)")
    settings = resolve_settings(model)
    x = toy_data(model)
    kw = dict(num_particles=settings["num_particles"], max_plate_nesting=model.max_plate_nesting)
    plain = inference.make_objective(settings["objective"].removeprefix("jit_"), **kw)
    traced = Traced(inference.make_objective(settings["objective"].removeprefix("jit_"), **kw))
    for seed in range(3):  # the first call traces, later ones replay the graph
        batch = x[16 * seed : 16 * seed + 32]
        loss_p, grads_p = loss_and_grads(plain, model, batch, len(x), seed)
        loss_t, grads_t = loss_and_grads(traced, model, batch, len(x), seed)
        assert torch.isfinite(loss_p)
        assert_same(loss_p, loss_t, name, seed)
        assert grads_p.keys() == grads_t.keys()
        assert any(g is not None for g in grads_p.values()), f"{name}: no parameter gets a gradient"
        for k, g in grads_p.items():
            assert (g is None) == (grads_t[k] is None), (name, k)
            if g is not None:
                assert_same(g, grads_t[k], name, k)
    assert len(traced.compiled) == 1  # one batch shape: traced once


@pytest.mark.parametrize("name", SVI_MODELS)
def test_fit_on_the_fast_path_ends_where_the_plain_path_does(name):
    model = make(name)
    if not traceable(model):
        pytest.skip(f"{name} opts out of the traced path (compile='none' in fit_defaults)")
    x = toy_data(model)
    results, states = {}, {}
    for mode in ("none", "auto"):
        m = make(name)
        results[mode] = inference.fit(m, x, steps=12, batch_size=32, progress=False, compile=mode)
        states[mode] = m.state_dict()
    assert results["none"].settings["compile"] == "none"
    assert results["auto"].settings["compile"] == "jit"  # the default for the zoo's models
    if collapsed(name):  # rounding apart: the same trajectory to float32 precision, not bitwise
        assert results["auto"].losses == pytest.approx(results["none"].losses, rel=1e-5)
    else:
        assert results["auto"].losses == results["none"].losses
    for k, v in states["none"].items():
        assert_same(v, states["auto"][k], name, k)


class Counting(ZooModel):
    """Independent pixels whose model counts its calls: Python state a trace would freeze."""

    def __init__(self, data_dim=3):
        super().__init__()
        self.data_dim, self.calls = data_dim, 0
        self.logits = PyroParam(torch.zeros(data_dim))

    def model(self, x=None, num_data=None):
        self.calls += torch.is_grad_enabled()  # training steps (not the engine's structure probe)
        with data_plate(x, num_data):
            pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def num_parameters(self):
        return self.data_dim


def test_auto_keeps_models_from_outside_the_zoo_on_the_plain_path():
    x = torch.bernoulli(torch.full((40, 3), 0.3))
    model = Counting()
    result = inference.fit(model, x, steps=5, batch_size=8, progress=False)
    assert result.settings["compile"] == "none" and model.calls == 5
    model = Counting()
    result = inference.fit(model, x, steps=5, batch_size=8, progress=False, compile="jit")
    assert result.settings["compile"] == "jit" and model.calls == 1  # traced once, replayed
    vae = zoo.create("vae", data_dim=3, hidden=(4,), latent_dim=2)
    other_guide = inference.fit(vae, x, guide=lambda x, num_data=None: vae.guide(x, num_data),
                                steps=2, batch_size=8, progress=False)
    assert other_guide.settings["compile"] == "none"  # a guide the tests have not seen
    with pytest.raises(ValueError, match="compile mode"):
        inference.fit(Counting(), x, steps=1, progress=False, compile="fast")


class ScoreFunction(ZooModel):
    """z ~ Bernoulli(0.5) per data point, x | z ~ Bernoulli(sigmoid(w * z + b)); the guide
    q(z | x) = Bernoulli(sigmoid(a)) is not reparameterisable (score-function gradient)."""

    def __init__(self):
        super().__init__()
        self.data_dim = 2
        self.w = PyroParam(torch.tensor([1.0, -1.0]))
        self.b = PyroParam(torch.zeros(2))
        self.a = PyroParam(torch.tensor(0.3))

    def model(self, x=None, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Bernoulli(logits=self.w * z.unsqueeze(-1) + self.b).to_event(1), obs=x)

    def guide(self, x=None, num_data=None):
        with data_plate(x, num_data):
            pyro.sample("z", dist.Bernoulli(logits=self.a.expand(x.shape[0])))

    def num_parameters(self):
        return 4


def test_traced_loss_is_the_loss_not_the_surrogate_for_score_function_guides():
    model = ScoreFunction()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    plain, traced = inference.make_objective("elbo"), inference.make_objective("jit_elbo")
    for seed in range(3):
        loss_p, grads_p = loss_and_grads(plain, model, x, 10, seed)
        loss_t, grads_t = loss_and_grads(traced, model, x, 10, seed)
        assert loss_t.item() == pytest.approx(loss_p.item(), rel=1e-6)
        for k, g in grads_p.items():
            assert torch.allclose(g, grads_t[k], rtol=1e-6, atol=1e-7), k


def test_minibatches_are_the_batch_indices_and_ranks_split_them():
    x = torch.arange(50.0).unsqueeze(-1)
    single = Minibatches(x, 10, seed=3)
    ranks = [Minibatches(x, 10, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(12):  # over epoch boundaries (5 steps per epoch)
        idx = batch_indices(step, 50, 10, 3)
        assert torch.equal(single.indices(step), idx)
        assert torch.equal(torch.cat([m.indices(step) for m in ranks]), idx)
        assert torch.equal(single(step), x[idx])
    with pytest.raises(ValueError, match="divisible"):
        Minibatches(x, 10, seed=0, rank=0, world_size=3)


class Exploding(ZooModel):
    """Independent pixels whose logits turn NaN after a number of model calls."""

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


def test_deferred_loss_checks_still_name_the_step_and_never_checkpoint_nan(tmp_path):
    """Losses read back every 7 steps (the GPU default is 25): the NaN of step 25 is found
    at a later step, reported as step 25, and the checkpoint of step 20 is kept."""
    x = torch.bernoulli(torch.full((200, 2), 0.4))
    with pytest.raises(inference.DivergenceError, match=r"at step 25.*step 20"):
        loop_fit(Exploding(nan_after=25), x, tmp_path, sync_every=7)
    saved = inference.load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["step"] == 20 and all(torch.isfinite(v).all() for v in saved["modules"]["model"].values())
    # and deferred read-back records the same history as reading every step
    a = loop_fit(Exploding(nan_after=10**9), x, None, sync_every=7)
    b = loop_fit(Exploding(nan_after=10**9), x, None, sync_every=1)
    assert a.losses == b.losses and len(a.losses) == 60


def loop_fit(model, x, run_dir, sync_every):
    """inference.fit's SVI step driven by the Trainer with a given sync_every."""
    from inference import callbacks
    from inference.svi import RowBatches, SVIStep

    step = SVIStep(model.model, model.guide, inference.make_objective("elbo"), modules={"model": model},
                   lr=0.05, scale=len(x), capture=False)
    cbs = [callbacks.NaNGuard()]
    if run_dir is not None:
        cbs.append(callbacks.Checkpoint(Checkpointer(run_dir / CHECKPOINT, every=10)))
    trainer = loop.Trainer(step, RowBatches(Minibatches(x, 32, seed=0), None), total_steps=60, seed=0,
                           schedule=loop.Schedule(60), settings={"test": 1}, callbacks=cbs,
                           sync_every=sync_every)
    with pyro.validation_enabled(False):  # NaN reaches the loss instead of a ValueError
        return trainer.run()


def test_fast_path_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    x = toy_data(make("vae"))
    settings = dict(steps=30, batch_size=32, lr=0.01, checkpoint_every=10, progress=False)
    reference = make("vae")
    full = inference.fit(reference, x, **settings)
    assert full.settings["compile"] == "jit"

    real_lr_at = loop.lr_at

    def dies_at_step_25(step, *args):
        if step == 25:
            raise RuntimeError("killed")
        return real_lr_at(step, *args)

    model = make("vae")
    monkeypatch.setattr(loop, "lr_at", dies_at_step_25)
    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(model, x, run_dir=tmp_path, **settings)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    resumed = inference.fit(make("vae"), x, run_dir=tmp_path, **settings)
    assert resumed.resumed_from == 20 and resumed.losses == full.losses
    state = inference.load_checkpoint(tmp_path / CHECKPOINT)["modules"]["model"]
    for k, v in reference.state_dict().items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("name", ["independent", "fvsbn"])
def test_the_simplified_graph_negates_a_log_density_after_summing_it(name):
    """``-bce(logits, x)`` summed over the event: the negation runs on the (batch,) sum, not on
    the (batch, n) table, and the ELBO's negation of the sum cancels it (bit for bit the
    same: the test above covers every model)."""
    model = make(name)
    x = toy_data(model)[:32]
    traced = Traced(inference.make_objective("elbo", max_plate_nesting=model.max_plate_nesting))
    traced.differentiable_loss(model.model, model.guide, x, num_data=96)
    (fn,) = traced.compiled.values()
    negated = [n for n in fn.graph.nodes() if n.kind() == "aten::neg"]
    for n in negated:
        sizes = next(n.inputs()).type().sizes()
        assert sizes is not None and len(sizes) <= 1, f"a negation of a {sizes} tensor is left"
        assert next(n.inputs()).node().kind() != "aten::neg", "a double negation is left"
    if name == "independent":  # -(sum(scale * -bce)): no negation left at all
        assert not negated, negated


def test_the_simplified_enum_graph_has_no_python_call_gather_or_dice_mask():
    """TraceEnum_ELBO's contraction traced: Pyro's ``_SafeLog`` (a Python call forward and
    backward), the gather of the enumerated parameters and Dice's all-true ``masked_select``s
    are gone from the graph (the values and gradients stay Pyro's: the tests above)."""
    model = make("mixture")
    x = toy_data(model)[:32]
    traced = Traced(inference.make_objective("enum", max_plate_nesting=model.max_plate_nesting))
    traced.collapse_enum = False  # Pyro's own contraction
    traced.differentiable_loss(model.model, model.guide, x, num_data=96)
    (fn,) = traced.compiled.values()
    kinds = {n.kind() for n in fn.graph.nodes()}
    assert "aten::einsum" in kinds, "not the enumerated contraction"
    assert not kinds & {"prim::PythonOp", "aten::index", "aten::masked_select", "aten::zeros_like"}, kinds
    loss_p, grads_p = loss_and_grads(inference.make_objective("enum", max_plate_nesting=1), model, x, 96, 0)
    loss_t, grads_t = loss_and_grads(traced, model, x, 96, 0)
    assert torch.equal(loss_p, loss_t) and all(torch.equal(g, grads_t[k]) for k, g in grads_p.items())


class TwoMixtures(ZooModel):
    """Two enumerated sites per row (a mixture of two independent mixtures), and an option to
    sample a global latent in the guide: programs the collapsed form does not cover."""

    def __init__(self, data_dim=4, guide_samples=False):
        super().__init__()
        self.data_dim, self.guide_samples = data_dim, guide_samples
        self.logits = PyroParam(torch.randn(2, 3, data_dim))
        self.loc = PyroParam(torch.zeros(()))

    def model(self, x=None, num_data=None):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0)) if self.guide_samples else 0.0
        with data_plate(x, num_data):
            z1 = pyro.sample("z1", dist.Categorical(logits=torch.zeros(3)), infer={"enumerate": "parallel"})
            z2 = pyro.sample("z2", dist.Categorical(logits=torch.zeros(3)), infer={"enumerate": "parallel"})
            logits = self.logits[0][z1] + self.logits[1][z2] + shift
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x=None, num_data=None):
        if self.guide_samples:
            pyro.sample("shift", dist.Normal(self.loc, 1.0))

    def num_parameters(self):
        return 6 * self.data_dim


@pytest.mark.parametrize("program", ["mixture", "two enumerated sites", "a guide that samples"])
def test_the_collapsed_enum_objective_is_tracenum_elbo_within_rounding(program):
    """The mixture's fast path is one ``logsumexp`` (no einsum) with TraceEnum_ELBO's loss and
    gradients to float32 rounding, also for 3 particles; programs outside its form keep Pyro's
    contraction, bit for bit."""
    from inference.traced import collapsed_enum_elbo  # noqa: F401  (the function the docs name)

    pyro.set_rng_seed(0)
    if program == "mixture":
        model = zoo.create("mixture", data_dim=DATA_DIM, num_components=5)
    else:
        model = TwoMixtures(DATA_DIM, guide_samples=program == "a guide that samples")
    x = toy_data(model)[:32]
    for particles in (1, 3) if program != "a guide that samples" else (1,):  # (its shift is not vectorised)
        make_enum = lambda: inference.make_objective("enum", max_plate_nesting=1, num_particles=particles)  # noqa: E731
        traced = Traced(make_enum())
        loss_t, grads_t = loss_and_grads(traced, model, x, 96, 1)
        loss_p, grads_p = loss_and_grads(make_enum(), model, x, 96, 1)
        (fn,) = traced.compiled.values()
        kinds = {n.kind() for n in fn.graph.nodes()}
        if program == "mixture":
            assert "aten::logsumexp" in kinds and "aten::einsum" not in kinds, kinds
            assert torch.allclose(loss_t, loss_p, rtol=1e-6)
            for k, g in grads_p.items():
                assert torch.allclose(grads_t[k], g, rtol=1e-5, atol=1e-5 * float(g.abs().max())), k
        else:
            assert "aten::logsumexp" not in kinds
            assert torch.equal(loss_t, loss_p)
            assert all(torch.equal(g, grads_t[k]) for k, g in grads_p.items() if g is not None)


def test_safe_log_as_graph_operations_keeps_its_value_and_clamped_gradient():
    """``pyro.ops.special.safe_log`` traced and rewritten: log(x), and grad / max(x, eps),
    also below eps and at 0, bit for bit."""
    from pyro.ops.special import safe_log

    from inference.traced import simplify_graph

    x0 = torch.tensor([0.0, 1e-30, 1e-9, 1e-7, 0.5, 1.0, 3.0, 1e20])
    fn = torch.jit.trace(lambda x: safe_log(x) * torch.arange(1.0, 9.0), (x0.clone().requires_grad_(),))
    simplify_graph(fn.graph)
    assert "prim::PythonOp" not in {n.kind() for n in fn.graph.nodes()}
    results = []
    for f in (lambda x: safe_log(x) * torch.arange(1.0, 9.0), fn):
        x = x0.clone().requires_grad_()
        y = f(x)
        y.sum().backward()
        results.append((y.detach(), x.grad))
    (y_p, g_p), (y_t, g_t) = results
    assert torch.equal(y_p, y_t) and torch.equal(g_p, g_t), (y_p, y_t, g_p, g_t)
    assert g_p[0] == 1 / torch.finfo(torch.float32).eps  # the clamp is exercised


def test_a_graph_that_writes_in_place_keeps_its_zeros_like():
    """A folded ``zeros_like`` would be a constant that an in-place write changes step by
    step: such a graph is left as traced, and replays the eager values every call."""
    from inference.traced import simplify_graph

    def f(x):
        z = torch.zeros_like(x)
        z.add_(x)
        return (z * 2).sum()

    x0 = torch.ones(4)
    fn = torch.jit.trace(f, (x0,))
    simplify_graph(fn.graph)
    assert "aten::zeros_like" in {n.kind() for n in fn.graph.nodes()}
    for v in (1.0, 2.0, 3.0):
        assert fn(torch.full((4,), v)) == f(torch.full((4,), v))


def test_the_collapsed_form_leaves_programs_it_does_not_cover_to_pyro():
    """A global enumerated z (outside the data plate), an observed site that does not depend on
    z, a masked site and two scales are not ``sum_n logsumexp_k``: each keeps Pyro's contraction."""
    import pyro.poutine as poutine

    from inference.traced import collapsed_enum_elbo

    x = torch.bernoulli(torch.full((8, 3), 0.4), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(2, 3, requires_grad=True)

    def program(kind):
        def model(x):
            if kind == "global z":
                z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
            with pyro.plate("data", len(x)):
                if kind != "global z":
                    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
                with poutine.mask(mask=torch.arange(len(x)) > 0) if kind == "mask" else poutine.scale(scale=1.0):
                    with poutine.scale(scale=2.0) if kind == "two scales" else poutine.scale(scale=1.0):
                        pyro.sample("x", dist.Bernoulli(logits=logits[z]).to_event(1), obs=x)
                if kind == "y apart":
                    pyro.sample("y", dist.Normal(0.0, 1.0), obs=x[:, 0])
        return model

    def guide(x):
        pass

    elbo = inference.make_objective("enum", max_plate_nesting=1)
    for kind in ("per row", "global z", "y apart", "mask", "two scales"):
        (traces,) = list(elbo._get_traces(program(kind), guide, (x,), {}))
        value = collapsed_enum_elbo(*traces)
        if kind == "per row":
            assert torch.allclose(value, -elbo.differentiable_loss(program(kind), guide, x), rtol=1e-6)
        else:
            assert value is None, kind
