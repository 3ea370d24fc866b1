"""The GAN: an implicit generator with no density, a discriminator, binary samples."""
import json

import pyro
import pyro.poutine as poutine
import pytest
import torch

import inference
import zoo
from inference.metrics import load_classifier, score_samples
from zoo.gan import GAN, default_sizes


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: two threads on a busy 2-core machine were measured 80x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registered_with_sizes_for_the_data():
    assert zoo.get("gan") is GAN and issubclass(GAN, inference.Adversarial)
    assert not issubclass(zoo.get("vae"), inference.Adversarial)  # dispatch by protocol, not by name
    assert default_sizes(64) == (16, (128, 128))
    assert default_sizes(784) == (64, (512, 512))
    model = zoo.create("gan", data_dim=4)
    assert (model.latent_dim, model.hidden) == (2, (64, 64))


def test_parameter_count_is_the_generator_formula():
    model = GAN(data_dim=6, latent_dim=3, hidden=(5, 4), d_hidden=(7,))
    # generator widths 3 -> 5 -> 4 -> 6: (3+1)*5 + (5+1)*4 + (4+1)*6
    assert model.num_parameters() == 20 + 24 + 30
    assert model.num_parameters() == sum(p.numel() for p in model.generator.parameters())
    assert sum(p.numel() for p in model.discriminator.parameters()) == (6 + 1) * 7 + (7 + 1) * 1


def test_log_prob_raises_no_density_error_after_checking_data():
    model = GAN(data_dim=4)
    with pytest.raises(zoo.NoDensityError, match="no tractable density"):
        model.log_prob(torch.zeros(3, 4))
    with pytest.raises(zoo.DataError):
        model.log_prob(torch.zeros(3, 5))
    out = inference.evaluate(model, torch.zeros(3, 4))
    assert out["nll"] is None and "preimage" in out["nll_note"]


def test_samples_are_the_binary_generator_output_of_prior_draws():
    model = GAN(data_dim=10, latent_dim=3)
    pyro.set_rng_seed(5)
    samples = model.sample(200)
    assert samples.shape == (200, 10) and set(samples.unique().tolist()) <= {0.0, 1.0}
    pyro.set_rng_seed(5)
    z = torch.randn(200, 3)
    assert torch.equal(samples, (torch.sigmoid(model.generator(z)) > 0.5).float())


def test_model_simulates_x_as_a_delta_at_g_of_z():
    model = GAN(data_dim=6, latent_dim=2)
    trace = poutine.trace(model.model).get_trace(None, num_data=50)
    z, x = trace.nodes["z"]["value"], trace.nodes["x"]["value"]
    assert z.shape == (50, 2) and torch.equal(x, model.generate(z).detach())
    # observed: log-density 0 at G(z), -inf anywhere else (why no ELBO can train it)
    conditioned = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x)
    conditioned.compute_log_prob()
    assert torch.equal(conditioned.nodes["x"]["log_prob"], torch.zeros(50))
    flipped = x.clone()
    flipped[:, 0] = 1 - flipped[:, 0]
    other = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(flipped)
    other.compute_log_prob()
    assert torch.isneginf(other.nodes["x"]["log_prob"]).all()


@pytest.mark.parametrize("relax", ["straight_through", "sigmoid"])
def test_generator_gets_gradients_through_the_discriminator(relax):
    model = GAN(data_dim=8, relax=relax)
    fake = model.generate(torch.randn(32, model.latent_dim), hard=False)
    if relax == "straight_through":
        assert set(fake.unique().tolist()) <= {0.0, 1.0}  # D sees what sample() returns
    else:
        assert ((fake > 0) & (fake < 1)).all()
    model.discriminate(fake).sum().backward()
    for p in model.generator.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(data_dim=0), "data_dim"),
        (dict(data_dim=4, latent_dim=0), "latent_dim"),
        (dict(data_dim=4, hidden=(8, -1)), "hidden"),
        (dict(data_dim=4, relax="gumbel"), "relax"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        GAN(**options)


@pytest.fixture(scope="module")
def digits():
    return tuple(zoo.load("digits", s) for s in ("train", "valid", "test"))


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """A $ZOO_CACHE_DIR for this module: the digits classifier is trained once here."""
    return tmp_path_factory.mktemp("zoo_cache")


def test_briefly_trained_gan_beats_bernoulli_noise_on_every_metric(digits, zoo_cache):
    train, valid, test = digits
    pyro.set_rng_seed(0)
    model = zoo.create("gan", data_dim=64)
    inference.fit_adversarial(model, train, steps=4000, progress=False)  # ~15 s on one thread
    classifier, info = load_classifier("digits", cache=zoo_cache / "classifiers")
    pyro.set_rng_seed(1)
    samples = model.sample(2000)
    noise = torch.bernoulli(torch.full((2000, 64), 0.5))
    gan = score_samples(samples[:300], test, valid, classifier=classifier, parzen_samples=samples)
    bad = score_samples(noise[:300], test, valid, classifier=classifier, parzen_samples=noise)
    for lower in ("fd", "mmd2", "label_kl"):
        assert gan[lower] < bad[lower], lower
    for higher in ("parzen_ll", "parzen_bernoulli_ll", "classifier_score", "label_entropy"):
        assert gan[higher] > bad[higher], higher
    assert gan["classes_covered"] >= bad["classes_covered"]


def test_zoo_train_gan_writes_a_complete_run_folder_and_resumes(tmp_path, zoo_cache, monkeypatch, capsys):
    from experiments.cli import main

    monkeypatch.setenv("ZOO_CACHE_DIR", str(zoo_cache))
    out = tmp_path / "run"
    argv = ["train", "gan", "--data", "digits", "--steps", "40", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert {"config.json", "metrics.jsonl", "metrics.json", "checkpoint.pt", "loss.png", "samples.png"} <= {
        p.name for p in out.iterdir()
    }
    final = json.loads((out / "metrics.json").read_text())
    assert final["test"]["nll"] is None and "no tractable density" in final["test"]["nll_note"]
    quality = final["sample_quality"]
    assert quality["num_samples"] == 300 and quality["fd"] > 0 and quality["classifier_test_accuracy"] > 0.85
    saved = inference.load_checkpoint(out / "checkpoint.pt")
    assert saved["settings"]["trainer"] == "adversarial" and saved["step"] == 40
    assert set(saved["optimizers"]) == {"generator", "discriminator"}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g"} <= set(history[-1])
    assert main(argv) == 0  # complete: resumes at the end, same numbers
    assert json.loads((out / "metrics.json").read_text())["sample_quality"] == quality
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nll"] is None and printed["sample_quality"] == quality
    assert main([*argv[:-3], "--objective", "minimax", "--out", str(out), "--no-progress"]) == 2
    assert main(["train", "gan", "--steps", "5", "--early-stopping", "2", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
