"""Sample-quality metrics: closed forms on small cases, and the obvious rankings on digits."""
import itertools
import math

import pyro
import pytest
import torch

import zoo
from inference import metrics as M


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: two threads on a busy 2-core machine were measured 80x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----- Frechet distance ---------------------------------------------------------------------
def with_stats(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Rows whose sample mean and covariance are exactly ``mean`` and ``cov``."""
    z = z.double() - z.double().mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # identity sample covariance
    return z @ torch.linalg.cholesky(cov.double()).T + mean.double()


def test_frechet_distance_is_zero_for_identical_feature_statistics():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    assert M.frechet_distance(a, a) < 1e-10
    assert M.frechet_distance(a, a[torch.randperm(500, generator=g)]) < 1e-10
    # other points, same mean and covariance
    b = with_stats(torch.rand(300, 6, generator=g), a.mean(0), torch.cov(a.T))
    assert M.frechet_distance(a, b) < 1e-9


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    g = torch.Generator().manual_seed(1)
    d = 5
    a = with_stats(torch.randn(400, d, generator=g), torch.zeros(d), torch.eye(d))
    mean, s = torch.full((d,), 0.5, dtype=torch.float64), 2.0
    b = with_stats(torch.randn(400, d, generator=g), mean, s**2 * torch.eye(d))
    # ||m||^2 + Tr(I + s^2 I - 2 s I) = d/4 + d (1 - s)^2
    assert M.frechet_distance(a, b) == pytest.approx(d * 0.25 + d * (1 - s) ** 2, rel=1e-9)
    # and for non-commuting covariances, against scipy's matrix square root
    scipy_linalg = pytest.importorskip("scipy.linalg")
    c1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[1.0, -0.5], [-0.5, 3.0]], dtype=torch.float64)
    x = with_stats(torch.randn(50, 2, generator=g), torch.zeros(2), c1)
    y = with_stats(torch.randn(50, 2, generator=g), torch.ones(2), c2)
    root = scipy_linalg.sqrtm((c1 @ c2).numpy()).real
    expected = 2.0 + float(torch.trace(c1 + c2)) - 2 * float(root.trace())
    assert M.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)


# ----- MMD ------------------------------------------------------------------------------------
def test_mmd_by_hand_and_its_bandwidth_rule():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [3.0]])
    k = lambda d2: math.exp(-d2 / 2)  # noqa: E731  (sigma = 1)
    kxx, kyy = k(1), k(9)
    kxy = (k(0) + k(9) + k(1) + k(4)) / 4
    assert M.mmd2(x, y, sigma=1.0) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    # median heuristic: distances among {0, 1, 3} are 1, 2, 3 -> 2
    assert M.median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="bandwidth"):
        M.mmd2(x, torch.zeros(3, 1))


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    p = torch.bernoulli(torch.full((400, 20), 0.3), generator=g)
    p2 = torch.bernoulli(torch.full((400, 20), 0.3), generator=g)
    q = torch.bernoulli(torch.full((400, 20), 0.6), generator=g)
    same, other = M.mmd2(p2, p), M.mmd2(q, p)
    assert abs(same) < 0.01 < other


# ----- Parzen windows -------------------------------------------------------------------------
def test_parzen_gaussian_matches_the_normal_density():
    s = torch.tensor([[0.0, 1.0]])
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    out = M.parzen_log_likelihood(s, x, x, grid=[0.5])
    expected = torch.distributions.Normal(s.double(), 0.5).log_prob(x.double()).sum(-1).mean()
    assert out["ll"] == pytest.approx(float(expected), rel=1e-9) and out["bandwidth"] == 0.5


def test_parzen_bernoulli_kernel_is_a_distribution_over_binary_vectors():
    g = torch.Generator().manual_seed(0)
    samples = torch.bernoulli(torch.full((7, 4), 0.4), generator=g)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
    for eps in (0.01, 0.2, 0.5):
        lls = [M.parzen_log_likelihood(samples, s[None], s[None], kernel="bernoulli", grid=[eps])["ll"] for s in states]
        assert torch.tensor(lls, dtype=torch.float64).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_parzen_bandwidth_is_the_best_on_validation_data():
    g = torch.Generator().manual_seed(0)
    samples = torch.bernoulli(torch.full((200, 10), 0.3), generator=g)
    valid = torch.bernoulli(torch.full((100, 10), 0.3), generator=g)
    grid = [0.2, 0.4, 0.8, 1.6]
    chosen = M.parzen_log_likelihood(samples, valid, valid, grid=grid)
    each = [M.parzen_log_likelihood(samples, valid, valid, grid=[s])["ll"] for s in grid]
    assert chosen["bandwidth"] == grid[max(range(4), key=each.__getitem__)]
    assert chosen["ll"] == pytest.approx(max(each))
    with pytest.raises(ValueError, match="kernel"):
        M.parzen_log_likelihood(samples, valid, valid, kernel="epanechnikov")


# ----- the classifier and the rankings on digits ---------------------------------------------
@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="module")
def digits():
    return tuple(zoo.load("digits", s) for s in ("train", "valid", "test"))


def test_classifier_is_trained_once_cached_and_loaded_with_weights_only(classifier_cache):
    torch.set_num_threads(1)
    model, info = M.load_classifier("digits", cache=classifier_cache)
    assert info["test_accuracy"] > 0.85 and info["hidden"] == [256, 64]
    path = classifier_cache / "digits-threshold-v1.pt"
    assert info["path"] == str(path)
    stamp = path.stat().st_mtime_ns
    again, info2 = M.load_classifier("digits", cache=classifier_cache)
    assert path.stat().st_mtime_ns == stamp and info2["test_accuracy"] == info["test_accuracy"]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"state_dict", "info"}
    # a corrupt cache file is retrained, not fatal
    path.write_bytes(b"\x00garbage")
    _, info3 = M.load_classifier("digits", cache=classifier_cache)
    assert info3["test_accuracy"] == info["test_accuracy"]  # same seed, same classifier


def test_no_labels_no_classifier(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        M.load_classifier("digits_labels", cache=tmp_path)


def test_test_data_beats_noise_and_a_repeated_image_on_every_metric(digits, classifier_cache):
    _, valid, test = digits
    classifier, _ = M.load_classifier("digits", cache=classifier_cache)
    g = torch.Generator().manual_seed(0)
    candidates = {
        "test": test.x,
        "noise": torch.bernoulli(torch.full((300, 64), 0.5), generator=g),
        "collapsed": test.x[:1].expand(300, -1),
    }
    scores = {k: M.score_samples(v, test, valid, classifier=classifier) for k, v in candidates.items()}
    best = scores.pop("test")
    assert best["fd"] < 1e-6  # identical features
    assert best["classes_covered"] == 10 and best["label_kl"] < 1e-12
    assert scores["collapsed"]["classes_covered"] == 1 and scores["collapsed"]["label_entropy"] == 0.0
    assert scores["collapsed"]["classifier_score"] == pytest.approx(1.0)
    for name, worse in scores.items():
        for lower in ("fd", "mmd2", "label_kl"):
            assert best[lower] < worse[lower], (name, lower)
        for higher in ("parzen_ll", "parzen_bernoulli_ll", "label_entropy", "classifier_score", "classes_covered"):
            assert best[higher] > worse[higher], (name, higher)


def test_sample_quality_of_a_model_and_of_models_that_cannot_sample(classifier_cache):
    pyro.set_rng_seed(0)
    model = zoo.create("bernoulli", data_dim=64)
    out = M.sample_quality(model, "digits", num_samples=300, parzen_samples=1000, cache=classifier_cache)
    assert out["num_samples"] == 300 and out["parzen_num_samples"] == 1000
    assert out["classifier_test_accuracy"] > 0.85
    assert all(math.isfinite(out[k]) for k in ("fd", "mmd2", "parzen_ll", "parzen_bernoulli_ll"))
    again = M.sample_quality(model, "digits", num_samples=300, parzen_samples=1000, cache=classifier_cache)
    assert again == out  # seeded

    class CannotSample(torch.nn.Module):
        def sample(self, n):
            raise zoo.NoDensityError("no sampler here")

    assert "no sampler here" in M.sample_quality(CannotSample(), "digits", cache=classifier_cache)["sample_note"]
    note = M.sample_quality(model, "digits_labels", cache=classifier_cache)["sample_note"]
    assert "binary image data" in note
    with pytest.raises(ValueError, match="shape"):
        M.score_samples(torch.zeros(5, 3), *(zoo.load("digits", s) for s in ("test", "valid")))


def test_parzen_histogram_shortcut_equals_the_direct_sum():
    g = torch.Generator().manual_seed(0)
    samples = torch.bernoulli(torch.full((500, 12), 0.3), generator=g)
    x = torch.bernoulli(torch.full((40, 12), 0.4), generator=g)
    grid = torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64)

    def log_k(d):
        return -d[..., None] / (2 * grid**2)

    shortcut = M._parzen_scores(samples, x, log_k)
    direct = M._parzen_scores(samples.double() + 1e-12, x.double(), log_k)  # not binary: direct path
    assert M._distance_histogram(samples.double() + 1e-12, x) is None
    assert torch.allclose(shortcut, direct, rtol=0, atol=1e-9)


# ----- bounded memory: row blocks change no number, and no temporary outgrows a block -----------
class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the bytes of the largest tensor any torch operation returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _binary_sets(n_samples=600, n_test=300, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(dim, generator=g)
    draw = lambda n: torch.bernoulli(probs.expand(n, dim), generator=g)  # noqa: E731
    test, valid = (zoo.Dataset("synthetic", s, draw(n_test), None, (8, 8)) for s in ("test", "valid"))
    return draw(n_samples), test, valid


def test_score_samples_is_the_same_in_small_blocks(monkeypatch):
    samples, test, valid = _binary_sets()
    whole = M.score_samples(samples, test, valid)
    monkeypatch.setattr(M, "BLOCK_BYTES", 4096)  # blocks of a few rows
    blocked = M.score_samples(samples, test, valid)
    assert blocked.keys() == whole.keys()
    for k, v in whole.items():
        assert blocked[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_score_samples_temporaries_stay_within_a_block(monkeypatch):
    # the Parzen scores of 300 rows x 65 distances x 30 bandwidths in float64 are 4.7 MB at once;
    # in blocks of 1 MB no tensor may exceed that (the inputs here are 150 KB, the pairwise
    # distances of the 300 test rows for the median heuristic 0.7 MB)
    samples, test, valid = _binary_sets()
    monkeypatch.setattr(M, "BLOCK_BYTES", 2**20)
    with _LargestTensor() as mode:
        M.score_samples(samples, test, valid)
    assert mode.largest <= 2**20


def test_draw_samples_in_chunks_is_seeded_and_complete():
    model = zoo.create("independent", data_dim=5)
    pyro.set_rng_seed(3)
    a = M.draw_samples(model, 25, chunk=7)
    pyro.set_rng_seed(3)
    b = M.draw_samples(model, 25, chunk=7)
    assert a.shape == (25, 5) and torch.equal(a, b)
    assert ((a == 0) | (a == 1)).all()
