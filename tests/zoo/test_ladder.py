"""The tractable-likelihood ladder: independent, full joint, Markov, FVSBN, NADE, MADE, mixture.

Each test checks a property the mathematics guarantees: exact normalisation over all 2^n
states, samplers that agree with log_prob, the autoregressive property by gradient,
parameter counts by formula, recovery of known mixture components, clear errors.
"""
import itertools
import math

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import inference
import zoo
from zoo.made import MADE
from zoo.nade import NADE

@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation (and on a loaded
    machine, spinning threads make small ops ~50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (registered name, options); n is filled in per test
VARIANTS = [
    ("independent", {}),
    ("full_joint", {}),
    ("markov", {}),
    ("markov", {"order": 3}),
    ("fvsbn", {}),
    ("fvsbn", {"ordering": "random", "seed": 1}),
    ("nade", {"hidden_size": 6}),
    ("nade", {"hidden_size": 6, "ordering": "reverse"}),
    ("made", {"hidden_sizes": (16,)}),
    ("made", {"hidden_sizes": (16, 16), "ordering": "random", "seed": 2}),
    ("made", {"hidden_sizes": (16,), "num_masks": 3, "order_agnostic": True}),
    ("made", {"hidden_sizes": (16,), "ordering": "random", "direct": True, "num_masks": 2, "order_agnostic": True}),
    ("mixture", {"num_components": 3}),
    ("pixelcnn", {"channels": 4, "num_layers": 2, "head_channels": 6}),
    ("pixelcnn", {"channels": 6, "num_layers": 1, "head_channels": 3, "first_kernel": 3, "kernel": 5}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'default'}" for name, opts in VARIANTS]
AUTOREGRESSIVE = [(n, o) for n, o in VARIANTS if n in ("fvsbn", "nade", "made", "pixelcnn")]


def states(n):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def toy_data(n, num=200, seed=1):
    """Binary data with dependence between pixels (a noisy copy of pixel 0 and of a parity)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.linspace(0.15, 0.85, n).expand(num, n), generator=g)
    if n > 2:
        x[:, 1] = x[:, 0]
        x[:, -1] = (x[:, 0] + x[:, 2]) % 2
    return x


def randomise(model, scale=1.0):
    """Random parameters, so that tests do not pass by the symmetry of an initialisation."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_normalised_over_all_states_at_init_and_after_training(name, options):
    n = 10
    model = zoo.create(name, data_dim=n, **options)
    x = states(n)
    assert model.log_prob(x).double().exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    inference.fit(model, toy_data(n), steps=8, lr=0.05, progress=False)
    assert model.log_prob(x).double().exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    randomise(model)
    assert model.log_prob(x).double().exp().sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_sample_frequencies_agree_with_log_prob(name, options):
    n, num = 4, 20_000
    model = randomise(zoo.create(name, data_dim=n, **options))
    samples = model.sample(num)
    assert samples.shape == (num, n)
    index = (samples.long() * 2 ** torch.arange(n - 1, -1, -1)).sum(-1)
    freq = torch.bincount(index, minlength=2**n).double() / num
    probs = model.log_prob(states(n)).double().exp()
    assert probs.max() < 0.9, "randomised model should not be degenerate"
    # E[TV] <= 0.5 sqrt(16 / 20000) ~ 0.014; 0.035 leaves room for chance
    assert 0.5 * (freq - probs).abs().sum().item() < 0.035


SINGLE_MASK = [(v, i) for v, i in zip(VARIANTS, IDS) if v[1].get("num_masks", 1) == 1]


@pytest.mark.parametrize("name,options", [v for v, _ in SINGLE_MASK], ids=[i for _, i in SINGLE_MASK])
def test_engine_loss_is_exact_negative_log_likelihood(name, options):
    """Empty guide (or enumerated z): the objective is -log p(x), scaled to the data set."""
    n = 6
    model = randomise(zoo.create(name, data_dim=n, **options), 0.5)
    x = toy_data(n, 32)
    objective = TraceEnum_ELBO(max_plate_nesting=1) if name == "mixture" else Trace_ELBO()
    loss = objective.differentiable_loss(model.model, model.guide, x, num_data=320)
    assert loss.item() == pytest.approx(-10 * model.log_prob(x).sum().item(), rel=1e-5)


def test_made_with_several_masks_trains_one_mask_per_step_and_mixes_them_exactly():
    n = 6
    model = randomise(MADE(n, hidden_sizes=(16,), num_masks=3, order_agnostic=True))
    x = toy_data(n, 32)
    losses = {round(Trace_ELBO().differentiable_loss(model.model, model.guide, x).item(), 4) for _ in range(30)}
    components = model.component_log_probs(x)  # (3, batch)
    assert losses == {round(-c.sum().item(), 4) for c in components}
    expected = components.logsumexp(0) - math.log(3)
    assert torch.allclose(model.log_prob(x), expected)
    assert len({tuple(o.tolist()) for o in model.orderings}) == 3
    model = MADE(n, num_masks=4, ordering="random", order_agnostic=True, seed=7)
    assert len({tuple(o.tolist()) for o in model.orderings}) == 4


@pytest.mark.parametrize("name,options", AUTOREGRESSIVE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(AUTOREGRESSIVE)])
def test_autoregressive_property_by_gradient(name, options):
    n = 8
    model = randomise(zoo.create(name, data_dim=n, **options))
    masks = range(getattr(model, "num_masks", 1))
    for k in masks:
        ordering = model.orderings[k] if name == "made" else model.ordering
        x = torch.rand(3, n, requires_grad=True)
        logits = model.conditional_logits(x, k) if name == "made" else model.conditional_logits(x)
        for t, i in enumerate(ordering.tolist()):
            (grad,) = torch.autograd.grad(logits[:, i].sum(), x, retain_graph=True)
            later = ordering[t:]
            assert torch.all(grad[:, later] == 0), f"output {i} (position {t}) sees itself or a later pixel"
            if name in ("fvsbn", "nade"):  # every earlier pixel matters (not so for MADE's masks
                # or PixelCNN's receptive field)
                assert torch.all(grad[:, ordering[:t]] != 0)
        # MADE, PixelCNN: the last pixel in the ordering depends on some earlier one
        (grad,) = torch.autograd.grad(logits[:, ordering[-1]].sum(), x)
        assert grad.abs().sum() > 0


def test_markov_conditional_depends_only_on_its_window():
    n, k = 9, 3
    model = randomise(zoo.create("markov", data_dim=n, order=k))
    x = toy_data(n, 16)
    base = model.conditional_logits(x)
    for j in range(n):
        flipped = x.clone()
        flipped[:, j] = 1 - flipped[:, j]
        changed = (model.conditional_logits(flipped) != base).any(0)
        allowed = torch.tensor([j < i <= j + k for i in range(n)])
        assert not torch.any(changed & ~allowed), f"flipping pixel {j} changed conditionals outside its window"
        assert torch.all(changed[allowed]), f"flipping pixel {j} must change the next {k} conditionals"


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("independent", {}, lambda n: n),
        ("full_joint", {}, lambda n: 2**n - 1),
        ("markov", {}, lambda n: 2 * n - 1),
        ("markov", {"order": 0}, lambda n: n),
        ("markov", {"order": 3}, lambda n: (2**3 - 1) + (n - 3) * 2**3),
        ("markov", {"order": 9}, lambda n: 2**n - 1),
        ("fvsbn", {}, lambda n: n * (n + 1) // 2),
        ("nade", {"hidden_size": 7}, lambda n: 2 * n * 7 + n),
        ("made", {"hidden_sizes": (7,)}, lambda n: (n + 1) * 7 + 8 * n),
        ("made", {"hidden_sizes": (7, 5), "num_masks": 2}, lambda n: (n + 1) * 7 + 8 * 5 + 6 * n),
        ("made", {"hidden_sizes": (7,), "direct": True}, lambda n: (n + 1) * 7 + 8 * n + n * n),
        ("mixture", {"num_components": 4}, lambda n: 3 + 4 * n),
    ],
)
def test_num_parameters_is_the_formula(name, options, expected):
    n = 10
    model = zoo.create(name, data_dim=n, **options)
    assert model.num_parameters() == expected(n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if name in ("independent", "markov", "fvsbn", "nade", "made"):
        assert trainable == model.num_parameters()  # each stored scalar is one free parameter
    else:  # softmax logits: one more stored scalar than free parameters
        assert trainable == model.num_parameters() + 1


def test_parameter_counts_at_the_lectures_sizes():
    assert zoo.create("fvsbn", data_dim=784).num_parameters() == 307_720
    assert zoo.create("markov", data_dim=784).num_parameters() == 1567
    assert zoo.create("made", data_dim=784, hidden_sizes=(500,)).num_parameters() == 785_284
    assert zoo.create("nade", data_dim=784, hidden_size=500).num_parameters() == 2 * 784 * 500 + 784
    assert zoo.create("rgb_pixel").num_parameters() == 256**3 - 1 == 16_777_215
    assert zoo.create("rgb_pixel", factorization="independent").num_parameters() == 3 * 255


@pytest.mark.parametrize("direct", [False, True])
def test_made_masked_weights_get_no_gradient_and_connected_count(direct):
    n = 8
    model = MADE(n, hidden_sizes=(12, 12), ordering="random", seed=3, direct=direct)
    model.log_prob(toy_data(n, 16)).sum().backward()
    connected = 0
    for l, w in enumerate(model.net.weights):
        mask = model.net.masks(0)[l]
        assert torch.all(w.grad[mask == 0] == 0)
        connected += int(mask.sum())
    connected += sum(b.numel() for b in model.net.biases)
    if direct:  # FVSBN's strictly-earlier connectivity: n(n-1)/2 weights, which get the gradient
        mask = model.net.masks(0)[-1]
        assert int(mask.sum()) == n * (n - 1) // 2
        assert torch.all(model.net.direct.grad[mask == 0] == 0) and model.net.direct.grad[mask == 1].abs().sum() > 0
        connected += int(mask.sum())
    assert model.num_connected_parameters() == connected < model.num_parameters()


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_parameters_move_after_fit(name, options):
    n = 6
    model = zoo.create(name, data_dim=n, **options)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    inference.fit(model, toy_data(n), steps=5, progress=False)
    for k, v in model.named_parameters():
        if v.numel():
            assert not torch.equal(before[k], v.detach()), f"parameter {k} did not move"


def test_maximum_likelihood_fits_match_empirical_frequencies():
    n = 3
    x = toy_data(n, 400)
    freq = torch.bincount((x.long() * torch.tensor([4, 2, 1])).sum(-1), minlength=8).double() / len(x)
    joint = zoo.create("full_joint", data_dim=n)
    inference.fit(joint, x, steps=300, lr=0.2, batch_size=400, progress=False)
    assert torch.allclose(joint.log_prob(states(n)).double().exp(), freq, atol=5e-3)
    indep = zoo.create("independent", data_dim=n)
    inference.fit(indep, x, steps=300, lr=0.2, batch_size=400, progress=False)
    assert torch.allclose(indep.logits.sigmoid(), x.mean(0), atol=5e-3)


def test_mixture_recovers_known_components():
    g = torch.Generator().manual_seed(0)
    n, K, N = 12, 3, 3000
    true_probs = torch.tensor(
        [[0.9] * 6 + [0.1] * 6, [0.1] * 6 + [0.9] * 6, [0.9, 0.1] * 6], dtype=torch.float32
    )
    true_weights = torch.tensor([0.5, 0.3, 0.2])
    z = torch.multinomial(true_weights, N, replacement=True, generator=g)
    x = torch.bernoulli(true_probs[z], generator=g)
    model = zoo.create("mixture", data_dim=n, num_components=K, seed=1)
    inference.fit(model, x, steps=250, batch_size=1000, lr=0.2, progress=False)
    best = min(
        itertools.permutations(range(K)),
        key=lambda perm: (model.probs[list(perm)] - true_probs).abs().max().item(),
    )
    perm = list(best)
    assert (model.probs[perm] - true_probs).abs().max().item() < 0.05
    assert (model.weights[perm] - true_weights).abs().max().item() < 0.03
    # the posterior over z: data from a component are assigned to it
    resp = model.responsibilities(x)[:, perm]
    assert (resp.argmax(-1) == z).float().mean() > 0.95


def test_mixture_objective_sums_z_out_exactly():
    model = randomise(zoo.create("mixture", data_dim=5, num_components=4), 0.7)
    x = toy_data(5, 20)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    assert loss.item() == pytest.approx(-model.log_prob(x).sum().item(), rel=1e-5)
    grads = torch.autograd.grad(loss, [model.mixing_logits, model.component_logits])
    exact = torch.autograd.grad(-model.log_prob(x).sum(), [model.mixing_logits, model.component_logits])
    for a, b in zip(grads, exact):
        assert torch.allclose(a, b, atol=1e-5)


def test_nade_incremental_sampler_matches_its_conditionals():
    """NADE's O(nH) sampler and the ancestral loop over conditional_logits agree in law."""
    model = randomise(NADE(4, hidden_size=5, ordering="random", seed=4))
    torch.manual_seed(0)
    fast = model.sample(20_000)
    torch.manual_seed(1)
    slow = zoo.autoregressive.AutoregressiveBernoulli._ancestral_sample(model, 20_000)
    w = torch.tensor([8, 4, 2, 1])
    f = torch.bincount((fast.long() * w).sum(-1), minlength=16).double() / 20_000
    s = torch.bincount((slow.long() * w).sum(-1), minlength=16).double() / 20_000
    assert 0.5 * (f - s).abs().sum() < 0.035


# ----- the RGB pixel -----------------------------------------------------------------------


def test_rgb_pixel_encoding_and_closed_form_fit():
    model = zoo.create("rgb_pixel", levels=4, factorization="joint")
    rgb = torch.tensor([[0, 0, 0], [3, 2, 1], [3, 2, 1], [1, 0, 3]])
    index = model.encode(rgb)
    assert index.tolist() == [0, 57, 57, 19]
    assert torch.equal(model.decode(index), rgb)
    model.fit_counts(index, pseudo_count=0.5)
    p = model.log_prob(torch.tensor([57, 5])).exp()
    assert p.tolist() == pytest.approx([(2 + 0.5) / (4 + 0.5 * 64), 0.5 / (4 + 0.5 * 64)])
    indep = zoo.create("rgb_pixel", levels=4, factorization="independent").fit_counts(index, 0.5)
    # p(r=3) p(g=2) p(b=1) with smoothed channel counts
    expected = (2.5 / 6) * (2.5 / 6) * (2.5 / 6)
    assert indep.log_prob(torch.tensor([57])).exp().item() == pytest.approx(expected)
    assert indep.log_prob(torch.arange(64)).exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_rgb_pixel_trains_through_the_engine():
    g = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.ones(27)).sample()
    x = torch.multinomial(probs, 4000, replacement=True, generator=g)
    model = zoo.create("rgb_pixel", levels=3)
    inference.fit(model, x, steps=500, lr=0.1, progress=False)
    freq = torch.bincount(x, minlength=27).double() / len(x)
    assert torch.allclose(model.log_prob(torch.arange(27)).double().exp(), freq, atol=5e-3)


def test_rgb_pixel_photographs():
    train, test = zoo.rgb_pixel.sample_photo_pixels(max_pixels=5000)
    assert train.shape == (4000, 3) and test.shape == (1000, 3)
    assert train.min() >= 0 and train.max() <= 255


# ----- bad input ---------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="2\\^64 - 1 parameters"):
        zoo.create("full_joint", data_dim=64)
    with pytest.raises(ValueError, match="order at most 5"):
        zoo.create("markov", data_dim=6, order=6)
    with pytest.raises(ValueError, match="order"):
        zoo.create("markov", data_dim=6, order=-1)
    with pytest.raises(ValueError, match="permutation"):
        zoo.create("made", data_dim=3, ordering=[0, 0, 1])
    with pytest.raises(ValueError, match="ordering"):
        zoo.create("fvsbn", data_dim=3, ordering="sideways")
    with pytest.raises(ValueError, match="hidden_size"):
        zoo.create("nade", data_dim=3, hidden_size=0)
    with pytest.raises(ValueError, match="data_dim"):
        zoo.create("nade", data_dim=0)
    with pytest.raises(ValueError, match="factorization"):
        zoo.create("rgb_pixel", factorization="diagonal")
    with pytest.raises(TypeError, match="bad option"):
        zoo.create("fvsbn", data_dim=3, hidden_size=4)
    for name in ("independent", "full_joint", "markov", "fvsbn", "nade", "made", "mixture"):
        model = zoo.create(name, data_dim=3)
        with pytest.raises(zoo.DataError, match="binary"):
            model.log_prob(torch.tensor([[0.0, 0.5, 1.0]]))
        with pytest.raises(zoo.DataError, match="shape"):
            model.log_prob(torch.zeros(2, 4))
        with pytest.raises(zoo.DataError, match="binary"):
            inference.fit(model, torch.full((4, 3), 2.0), steps=1, progress=False)


# ----- NADE's O(nH) recurrence -------------------------------------------------------------


@pytest.mark.parametrize("B,n,H,block", [(5, 7, 3, 3), (30, 33, 5, 4), (64, 50, 7, 8), (9, 40, 6, 32), (2, 1, 3, 16)])
@pytest.mark.parametrize("binary", [True, False])
def test_nade_recurrence_gives_the_cumulative_sum_formulation_and_its_gradients(B, n, H, block, binary):
    """NADELogits (blocked forward, reverse-recurrence backward) against autograd through the
    former cumulative-sum formulation, float64, on binary x (the sparse state path) and on
    real-valued x with its gradient wanted (the dense path)."""
    from zoo.nade import nade_logits, nade_logits_cumsum

    g = torch.Generator().manual_seed(B * n + H)
    x = torch.bernoulli(torch.full((B, n), 0.3, dtype=torch.float64), generator=g)
    if not binary:
        x = torch.rand(B, n, dtype=torch.float64, generator=g).requires_grad_()
    params = [torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_()
              for shape in ((H, n - 1), (H,), (n, H), (n,))]
    upstream = torch.randn(B, n, dtype=torch.float64, generator=g)
    wrt = params + ([x] if not binary else [])
    fast = nade_logits(x, *params, block=block)
    slow = nade_logits_cumsum(x, *params)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((fast * upstream).sum(), wrt), torch.autograd.grad((slow * upstream).sum(), wrt)):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-12)


def test_nade_recurrence_backward_twice_gives_the_same_gradients():
    """The hidden layers kept for backward (binary x) are not consumed: a second backward
    through a retained graph gives the first one's gradients."""
    from zoo.nade import nade_logits

    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((6, 20), 0.3, dtype=torch.float64), generator=g)
    params = [torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_()
              for shape in ((4, 19), (4,), (20, 4), (20,))]
    loss = (nade_logits(x, *params, block=8) ** 2).sum()
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_nade_loss_and_gradients_at_mnist_size_match_the_former_formulation():
    """784-50 on binary images, float32, through the engine's objective: same loss and gradients."""
    from zoo.nade import nade_logits_cumsum

    n = 784
    model = zoo.create("nade", data_dim=n, hidden_size=50, ordering="random", seed=3)
    x = torch.bernoulli(torch.full((16, n), 0.15), generator=torch.Generator().manual_seed(0))
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    grads = torch.autograd.grad(loss, [model.W, model.c, model.V, model.b])
    logits = model._from_ordering(nade_logits_cumsum(model._to_ordering(x), model.W, model.c, model.V, model.b))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    ref_grads = torch.autograd.grad(ref, [model.W, model.c, model.V, model.b])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


# ----- PixelCNN on 2-D images --------------------------------------------------------------


def test_pixelcnn_is_normalised_on_a_3x3_image_and_its_sampler_agrees():
    model = randomise(zoo.create("pixelcnn", data_dim=9, channels=4, num_layers=2, head_channels=4), 0.5)
    assert model.image_shape == (3, 3)
    assert model.log_prob(states(9)).double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    small = randomise(zoo.create("pixelcnn", data_dim=6, image_shape=(2, 3), channels=4, num_layers=1), 0.7)
    num = 20_000
    samples = small.sample(num)
    index = (samples.long() * 2 ** torch.arange(5, -1, -1)).sum(-1)
    freq = torch.bincount(index, minlength=64).double() / num
    probs = small.log_prob(states(6)).double().exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5) and probs.max() < 0.9
    # E[TV] <= 0.5 sqrt(64 / 20000) ~ 0.028; 0.06 leaves room for chance
    assert 0.5 * (freq - probs).abs().sum().item() < 0.06


@pytest.mark.parametrize("first_kernel,kernel,layers", [(7, 3, 2), (3, 3, 3), (5, 5, 1)])
def test_pixelcnn_autoregressive_in_raster_order_by_gradient(first_kernel, kernel, layers):
    """Output (r, c) sees no pixel at or after (r, c) in raster order; and it does see its left
    neighbour and the pixel above (the receptive field grows as in the paper)."""
    H, W = 5, 4
    model = randomise(zoo.create("pixelcnn", data_dim=H * W, image_shape=(H, W), channels=4, num_layers=layers,
                                 first_kernel=first_kernel, kernel=kernel), 0.5)
    x = torch.rand(2, H * W, requires_grad=True)
    logits = model.conditional_logits(x)
    for i in range(H * W):
        (grad,) = torch.autograd.grad(logits[:, i].sum(), x, retain_graph=True)
        assert torch.all(grad[:, i:] == 0), f"pixel {i} sees itself or a later pixel"
        r, c = divmod(i, W)
        if c > 0:
            assert torch.all(grad[:, i - 1] != 0)
        if r > 0:
            assert torch.all(grad[:, i - W] != 0)


def test_pixelcnn_parameter_count_is_the_formula_and_masked_taps_get_no_gradient():
    from zoo.pixelcnn import MaskedConv2d

    model = zoo.create("pixelcnn", data_dim=16, channels=6, num_layers=3, head_channels=5, first_kernel=5, kernel=3)
    C, Ch, L, h, m_a, m_b = 6, 5, 3, 3, (25 - 1) // 2, (9 + 1) // 2
    assert model.num_parameters() == C * (m_a + 1) + L * (2 * C * h + h * h * m_b + 2 * h + C) + (C + 1) * Ch + (Ch + 1)
    model.log_prob(toy_data(16, 8)).sum().backward()
    connected = 0
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            assert torch.all(m.weight.grad[m.mask == 0] == 0)
            connected += m.num_connected()
        elif isinstance(m, torch.nn.Conv2d):
            connected += sum(p.numel() for p in m.parameters())
    assert connected == model.num_parameters()
    assert zoo.create("pixelcnn", data_dim=784).image_shape == (28, 28)
    with pytest.raises(ValueError, match="image_shape"):
        zoo.create("pixelcnn", data_dim=10, image_shape=(3, 3))
    with pytest.raises(ValueError, match="even"):
        zoo.create("pixelcnn", data_dim=4, channels=5)
    with pytest.raises(ValueError, match="odd"):
        zoo.create("pixelcnn", data_dim=4, kernel=4)


def test_made_mask_draws_resume_exactly(tmp_path):
    """The mask of each step comes from the generator that fit seeds and checkpoints, so a run
    killed between checkpoints and resumed trains on the same masks as an uninterrupted one."""
    from inference.loop import CHECKPOINT

    x = toy_data(6, 64)
    settings = dict(steps=12, batch_size=16, lr=0.05, checkpoint_every=4, progress=False, seed=3)
    options = dict(hidden_sizes=(8,), num_masks=4, order_agnostic=True)
    reference = MADE(6, **options)
    full = inference.fit(reference, x, run_dir=tmp_path / "a", **settings)

    model = MADE(6, **options)
    calls = {"n": 0}

    def crash_at_10(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        inference.fit(model, x, run_dir=tmp_path / "b", guide=crash_at_10, **settings)
    assert inference.load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 8
    fresh = MADE(6, **options)
    resumed = inference.fit(fresh, x, run_dir=tmp_path / "b", **settings)
    assert resumed.resumed_from == 8 and resumed.losses == full.losses
    for (k, v), w in zip(reference.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k


def test_mixture_pixel_likelihood_is_bernoulli_to_event_in_every_shape():
    """BernoulliPixels (the matmul log-density) against Bernoulli(logits).to_event(1): one row per
    component against a batch (enumeration), elementwise, and after a plate's expand."""
    import pyro.distributions as dist
    from zoo.mixture import BernoulliPixels

    g = torch.Generator().manual_seed(0)
    theta = torch.randn(5, 1, 7, generator=g, dtype=torch.float64)
    x = torch.bernoulli(torch.full((4, 7), 0.5, dtype=torch.float64), generator=g)
    for logits in (theta, theta[:, 0].expand(4, 5, 7).transpose(0, 1), theta[0, 0]):
        ours = BernoulliPixels(logits).log_prob(x)
        reference = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
        assert ours.shape == reference.shape and torch.allclose(ours, reference)
    expanded = BernoulliPixels(theta).expand((5, 4))
    assert expanded.batch_shape == (5, 4) and torch.allclose(
        expanded.log_prob(x), dist.Bernoulli(logits=theta).to_event(1).expand((5, 4)).log_prob(x))
    assert expanded.sample().shape == (5, 4, 7)


def test_mixture_data_initialisation_happens_once_at_the_first_training_call():
    x = toy_data(8, 50)
    model = zoo.create("mixture", data_dim=8, num_components=120, seed=2)
    random_logits = model.component_logits.detach().clone()
    model.log_prob(x)  # evaluation does not initialise
    assert not bool(model.initialised) and torch.equal(model.component_logits, random_logits)
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    assert bool(model.initialised)
    probs = model.probs.detach()
    assert probs.min() >= 0.02 - 1e-6 and probs.max() <= 0.98 + 1e-6
    # each component is near (image + mean) / 2 for a row of the minibatch, and the noise makes
    # more distinct components than the data has distinct rows
    targets = (0.5 * x + 0.5 * x.mean(0)).clamp(0.02, 0.98)  # (rows, n)
    assert ((probs.unsqueeze(1) - targets).abs().amax(-1).amin(-1) < 0.05).all()
    distinct_rows = len({tuple(r.tolist()) for r in x})
    assert len({tuple(p.tolist()) for p in probs.round(decimals=4)}) > distinct_rows
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = zoo.create("mixture", data_dim=8, num_components=120, seed=2)
    fresh.load_state_dict(state)
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(fresh.model, fresh.guide, 1 - x)
    assert torch.equal(fresh.component_logits, model.component_logits)  # no second initialisation
    kept = zoo.create("mixture", data_dim=8, num_components=5, init="random")
    before = kept.component_logits.detach().clone()
    TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(kept.model, kept.guide, x)
    assert torch.equal(kept.component_logits, before)
    with pytest.raises(ValueError, match="init"):
        zoo.create("mixture", data_dim=8, init="kmeans")


def test_made_ensemble_of_the_first_masks_is_normalised():
    n = 6
    model = randomise(MADE(n, hidden_sizes=(12,), num_masks=5, order_agnostic=True, seed=1), 0.5)
    x = states(n)
    for m in (1, 2, 5):
        assert model.log_prob(x, num_masks=m).double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(model.log_prob(x, num_masks=5), model.log_prob(x))
    assert torch.allclose(model.log_prob(x, num_masks=1), model.component_log_probs(x)[0])
    with pytest.raises(ValueError, match="num_masks"):
        model.log_prob(x, num_masks=6)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_made_files_hold_degrees_not_masks_and_older_files_with_masks_load(num_masks):
    """A state dict keeps the units' degrees (K x h integers), not K dense masks (8 GB a layer
    at 8000 x 8000 with 32 masks); a file of the former layout, masks included, still loads,
    and one whose masks are not this model's is refused."""
    n = 7
    model = MADE(n, hidden_sizes=(9, 5), ordering="random", num_masks=num_masks, order_agnostic=True, direct=True, seed=4)
    state = model.state_dict()
    assert not any("mask" in k for k in state) and state["net.degrees1"].shape == (num_masks, 9)
    old = {k: v for k, v in state.items() if "degrees" not in k}  # the former layout: (K, out, in) float masks
    for l in range(3):
        old[f"net.mask{l}"] = torch.stack([model.net.masks(k)[l] for k in range(num_masks)])
    old["net.direct_mask"] = torch.stack([model.net.masks(k)[-1] for k in range(num_masks)])
    fresh = MADE(n, hidden_sizes=(9, 5), ordering="random", num_masks=num_masks, order_agnostic=True, direct=True, seed=4)
    fresh.load_state_dict(old)
    x = toy_data(n, 8)
    assert torch.equal(fresh.log_prob(x), model.log_prob(x))
    old["net.mask1"] = 1 - old["net.mask1"]
    with pytest.raises(RuntimeError, match="net.mask1 of the file is not the mask of this model's degrees"):
        fresh.load_state_dict(old)
