"""The discrete VAE: unbiased encoder gradients (brute force over 16 latent configurations),
IWAE bounds, short training per estimator, CLI outputs and bad input."""

import itertools
import json
import math

import matplotlib.image as mpimg
import pytest
import torch as th

from relax_rl.cli import main
from relax_rl.estimators import uniform_noise
from relax_rl.experiments.vae import (
    ESTIMATORS,
    FAMILY,
    PAPER_ESTIMATORS,
    VAEConfig,
    VAETrainer,
    binarize,
    load_dataset,
    run_vae,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, estimator, model="linear1", latents=4, samples=2):
    cfg = VAEConfig(dataset="digits", model=model, latents=latents, seed=0, samples=samples)
    tr = VAETrainer(cfg, estimator, digits)
    with th.no_grad():  # a control variate that is not zero, so that it is tested
        for net in getattr(tr.cv, "r", []):
            net[-1].weight.normal_(0, 0.5)
            net[-1].bias.fill_(0.3)
        if hasattr(tr.cv, "eta"):
            tr.cv.eta.fill_(0.7)
        if hasattr(tr.cv, "alpha"):
            tr.cv.alpha.fill_(-0.6)
    return tr


def _exact_logit_gradient(tr, x):
    """d(-ELBO)/d(encoder logits) by enumerating all 2^4 latent configurations."""
    m = tr.model
    logits = m.enc[0](x - m.x_mean).detach().requires_grad_(True)
    bs = th.tensor(list(itertools.product([0.0, 1.0], repeat=logits.shape[-1])))
    q = FAMILY.log_prob(logits.expand(len(bs), -1), bs).exp()
    integrand = m.log_joint_minus_q(x.expand(len(bs), -1), [bs], [logits.expand(len(bs), -1)])
    (g,) = th.autograd.grad(-(q * integrand).sum(), logits)
    return g


UNBIASED = ["reinforce", "rebar", "relax", "reinforce-loo", "arm", "disarm", "arms", "double-cv"]


@pytest.mark.parametrize("estimator", UNBIASED)
def test_encoder_gradient_unbiased_by_enumeration(digits, estimator):
    """Through the trainer's own draw (what step() applies, per example), against the
    gradient of the ELBO enumerated over the 16 latent configurations."""
    tr = _trainer(digits, estimator, samples=3)
    x = digits["train"][:1]
    n = 40_000
    xs = x.expand(n, -1)
    _, leaves, surrogates, _, _ = tr.surrogates(xs, tr.gen)
    (g,) = tr.logit_gradients(leaves, surrogates)  # what step() applies, per example
    exact = _exact_logit_gradient(tr, x)[0]
    se = g.std(0) / math.sqrt(n)
    z = (g.mean(0) - exact) / se
    assert z.abs().max() < 4, (g.mean(0), exact, z)
    assert (exact.abs() > 4 * se).any()


def test_concrete_is_biased_here(digits):
    tr = _trainer(digits, "concrete")
    x = digits["train"][:1]
    n = 40_000
    _, leaves, surrogates, _, _ = tr.surrogates(x.expand(n, -1), tr.gen)
    (g,) = th.autograd.grad(surrogates[0].sum(), leaves[0])
    z = (g.mean(0) - _exact_logit_gradient(tr, x)[0]) / (g.std(0) / math.sqrt(n))
    assert z.abs().max() > 10


def _applied_encoder_gradients(tr, x):
    """The encoder gradients one ``step()`` hands to the optimizer."""
    seen = []
    enc = [p for layer in range(tr.model.n_layers) for p in tr.model.encoder_parameters(layer)]
    handle = tr.opt.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in enc]))
    tr.step(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("model", ["linear1", "linear2"])
def test_concrete_step_descends_the_batch_mean_relaxed_objective(digits, model):
    """Each layer's encoder gradient is d/dtheta of the batch mean of that layer's relaxed
    loss: not divided by the batch size twice, nor by the number of layers."""
    tr = _trainer(digits, "concrete", model=model, latents=6)
    m, x = tr.model, digits["train"][:6]
    state = tr.gen.get_state()
    us = [uniform_noise((len(x), 6), tr.gen) for _ in range(m.n_layers)]  # step()'s first draw
    logits, _, bs = m.sample(x, us)
    expected = []
    for layer in range(m.n_layers):
        z = logits[layer] + th.logit(us[layer])
        temp = tr.cv.log_temperature[layer].exp().detach()
        loss = m.relaxed_loss(x, bs, logits, layer, z, us, temp).mean()
        expected += th.autograd.grad(loss, m.encoder_parameters(layer), retain_graph=True)
    tr.gen.set_state(state)
    applied = _applied_encoder_gradients(tr, x)
    for got, want in zip(applied, expected, strict=True):
        assert th.allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_measuring_variance_does_not_change_training(digits, estimator):
    cfg = VAEConfig(dataset="digits", latents=8, seed=2, var_samples=3)
    plain, measured = VAETrainer(cfg, estimator, digits), VAETrainer(cfg, estimator, digits)
    x = digits["train"][:24]
    for _ in range(3):
        plain.step(x)
        measured.step(x)
        assert measured.log10_variance(x) is not None
    for p, q in zip(plain.model.parameters(), measured.model.parameters(), strict=True):
        assert th.equal(p, q)


def test_iwae_bounds_order(digits):
    tr = VAETrainer(VAEConfig(dataset="digits", latents=16), "rebar", digits)
    for _ in range(200):
        tr.step(digits["train"][:24])
    elbo = tr.mean_elbo("test")
    iwae = {k: tr.mean_iwae("test", k) for k in (1, 10, 100)}
    assert iwae[1] == pytest.approx(elbo, abs=1.5)  # both one-sample averages
    assert elbo < iwae[10] < iwae[100]


@pytest.mark.parametrize("model", ["linear1", "linear2", "nonlinear"])
def test_short_training_improves_elbo(model):
    # the nonlinear VAE gains ~19 nats in 150 steps, the linear ones ~3 in 300 (asserted: 1)
    steps = 150 if model == "nonlinear" else 300
    cfg = VAEConfig(
        dataset="digits", model=model, latents=16, steps=steps, eval_every=steps // 2, var_samples=4
    )
    results = run_vae(cfg, progress=False)
    for estimator, curve in results["curves"].items():
        first = VAETrainer(cfg, estimator, load_dataset("digits")).mean_elbo("train")
        assert curve["train_elbo"][-1] > first + 1.0, (estimator, first, curve["train_elbo"])
    assert {r["estimator"] for r in results["runs"]} == set(PAPER_ESTIMATORS)


def test_cli_writes_outputs(tmp_path, capsys):
    out = tmp_path / "vae"
    code = main(
        [
            "vae",
            "--dataset",
            "digits",
            "--latents",
            "8",
            "--steps",
            "60",
            "--eval-every",
            "30",
            "--estimators",
            "rebar",
            "relax",
            "arms",
            "--samples",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        for key in (
            "estimator",
            "train_elbo",
            "valid_elbo",
            "test_iwae100",
            "final_log10_var",
            "wall_s",
        ):
            assert key in run
    evals = {r["estimator"]: r["f_evals_per_example"] for r in results["runs"]}
    assert evals == {"rebar": 4, "relax": 4, "arms": 3}
    assert all(r["f_evals_per_step"] == 24 * r["f_evals_per_example"] for r in results["runs"])
    for png in ("elbo.png", "variance.png"):
        assert mpimg.imread(out / png).ndim == 3
    assert "relax" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "deep"], "invalid choice: 'deep'"),
        (["--estimators", "gumbel"], "invalid choice: 'gumbel'"),
        (["--latents", "0"], "--latents: invalid value 0: expected an integer >= 1"),
        (["--batch-size", "5000"], "larger than the training set"),
        (["--dataset", "cifar"], "invalid choice: 'cifar' (choose from 'mnist5k', 'digits')"),
        (["--lr", "0"], "--lr must be a positive number, got 0.0"),
        (["--estimators", "disarm", "--model", "linear2"], "disarm estimates one stochastic"),
        (["--samples", "1"], "--samples: invalid value 1: expected an integer >= 2"),
        (["--seeds", "0"], "--seeds: invalid value 0: expected an integer >= 1"),
        (["--binarization", "soft"], "invalid choice: 'soft'"),
        (["--protocol", "arms"], "invalid choice: 'arms'"),
        (["--activation", "relu"], "invalid choice: 'relu'"),
        (["--inputs", "scaled"], "invalid choice: 'scaled'"),
        (["--init", "he"], "invalid choice: 'he'"),
        (["--prior-lr", "-1"], "--prior-lr must be a positive number, got -1.0"),
    ],
)
def test_bad_input(tmp_path, capsys, args, needle):
    code = main(["vae", "--dataset", "digits", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


def test_multi_sample_estimators_train():
    """DisARM, REINFORCE-LOO and Double-CV through step(): the nonlinear VAE's ELBO rises and
    Double-CV's alpha moves off 0 (ARMS and ARM go through step() in the variance-measurement
    check)."""
    cfg = VAEConfig(
        dataset="digits",
        model="nonlinear",
        latents=16,
        steps=150,
        eval_every=75,
        var_samples=2,
        estimators=("disarm", "reinforce-loo", "double-cv"),
        samples=3,
    )
    results = run_vae(cfg, progress=False)
    for estimator, curve in results["curves"].items():
        first = VAETrainer(cfg, estimator, load_dataset("digits")).mean_elbo("train")
        assert curve["train_elbo"][-1] > first + 1.0, (estimator, first, curve["train_elbo"])
    scalars = {r["estimator"]: r["estimator_scalars"] for r in results["runs"]}
    assert scalars["disarm"] == {} and scalars["double-cv"]["alpha"] < -0.01


def test_the_prior_by_sgd_and_the_networks_by_adam(digits):
    """--prior-lr: one step moves the prior's logits by exactly -prior_lr times the decoder
    loss's gradient (SGD), and the networks by Adam; LeakyReLU where asked."""
    cfg = VAEConfig(dataset="digits", model="nonlinear", latents=8, prior_lr=0.5,
                    activation="leaky-relu")  # fmt: skip
    tr = VAETrainer(cfg, "disarm", digits)
    assert any(isinstance(m, th.nn.LeakyReLU) for m in tr.model.enc[0])
    prior = tr.model.prior.detach().clone()
    state = tr.gen.get_state()
    *_, decoder_loss, _ = tr.surrogates(digits["train"][:24], tr.gen)  # step()'s own draw
    (grad,) = th.autograd.grad(decoder_loss, tr.model.prior)
    tr.gen.set_state(state)
    tr.step(digits["train"][:24])
    th.testing.assert_close(tr.model.prior.detach(), prior - 0.5 * grad)
    assert all(p is not tr.model.prior for g in tr.opt.param_groups for p in g["params"])


@pytest.mark.parametrize("inputs", ["centred", "raw"])
def test_what_the_networks_read(digits, inputs):
    """centred: the encoder reads x minus the training mean, the decoder 2b - 1; raw: x and b."""
    tr = VAETrainer(VAEConfig(dataset="digits", latents=4, inputs=inputs), "reinforce", digits)
    m, x = tr.model, digits["train"][:3]
    b = th.tensor([[0.0, 1.0, 1.0, 0.0]]).expand(3, -1)
    want_x, want_b = (
        (x - x.new_tensor(digits["train"].mean(0)), 2 * b - 1) if inputs == "centred" else (x, b)
    )
    th.testing.assert_close(m.enc_input(0, x, None), want_x)
    log_px = -th.nn.functional.binary_cross_entropy_with_logits(
        m.dec[0](want_b), x, reduction="none"
    )
    log_p = log_px.sum(-1) + FAMILY.log_prob(m.prior.expand(3, -1), b)
    log_q = FAMILY.log_prob(m.enc[0](want_x), b)
    th.testing.assert_close(m.log_joint_minus_q(x, [b], [m.enc[0](want_x)]), log_p - log_q)


def test_glorot_init_is_kerass_default(digits):
    """--init glorot: every network layer's weights within Glorot's bound, biases zero; the
    torch default's biases are not."""
    glorot = VAETrainer(VAEConfig(dataset="digits", model="nonlinear", init="glorot"), "disarm",
                        digits).model  # fmt: skip
    for lin in [
        m for m in [*glorot.enc.modules(), *glorot.dec.modules()] if isinstance(m, th.nn.Linear)
    ]:
        bound = math.sqrt(6 / (lin.in_features + lin.out_features))
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
        assert (lin.bias == 0).all()
    torch_default = VAETrainer(VAEConfig(dataset="digits", model="nonlinear"), "disarm", digits)
    assert (torch_default.model.enc[0][0].bias != 0).any()


def test_static_binarisation_is_the_threshold_and_dynamic_draws_from_the_grey_levels():
    from sklearn.datasets import load_digits

    static = load_dataset("digits")
    assert set(static) == {"train", "valid", "test"}
    assert static["train"].sum() + static["valid"].sum() + static["test"].sum() == float(
        (load_digits().data > 8).sum()
    )
    dynamic = load_dataset("digits", binarization="dynamic")
    grey = dynamic["train"]
    assert ((grey > 0) & (grey < 1)).any()  # grey levels kept for training
    for split in ("train_binary", "valid", "test"):  # evaluated on one fixed binarisation
        assert set(dynamic[split].unique().tolist()) <= {0.0, 1.0}
    assert th.equal(dynamic["test"], load_dataset("digits", binarization="dynamic")["test"])
    gen = th.Generator().manual_seed(0)
    draws = th.stack([binarize(grey[:20], gen) for _ in range(2000)])
    assert not th.equal(draws[0], draws[1])  # a new binarisation each batch
    assert (draws.mean(0) - grey[:20]).abs().max() < 0.05


def test_disarm_protocol_from_the_cli_seeds_with_standard_errors(tmp_path, capsys):
    """--protocol disarm sets DisARM's settings (dynamic binarisation, batch 50, lr 1e-4, its
    estimators); flags given go over them; two seeds give each number a standard error."""
    out = tmp_path / "vae"
    argv = ["vae", "--protocol", "disarm", "--dataset", "digits", "--model", "nonlinear",
            "--latents", "8", "--steps", "20", "--eval-every", "10", "--seeds", "2",
            "--var-samples", "2", "--estimators", "disarm", "reinforce-loo", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    assert (cfg["protocol"], cfg["binarization"], cfg["batch_size"], cfg["lr"]) == (
        "disarm", "dynamic", 50, 1e-4,
    )  # fmt: skip
    # its reference code's
    assert (cfg["activation"], cfg["prior_lr"], cfg["inputs"], cfg["init"]) == (
        "leaky-relu", 1e-2, "raw", "glorot",
    )  # fmt: skip
    assert (cfg["latents"], cfg["steps"], cfg["seeds"]) == (8, 20, 2)  # the flags given
    assert sorted((r["estimator"], r["seed"]) for r in results["runs"]) == [
        ("disarm", 0), ("disarm", 1), ("reinforce-loo", 0), ("reinforce-loo", 1),
    ]  # fmt: skip
    row = results["summary"]["disarm"]
    assert row["f_evals_per_example"] == 2 and row["test_iwae100"]["n"] == 2
    assert row["test_iwae100"]["se"] > 0 and "train_elbo_se" in results["curves"]["disarm"]
    table = capsys.readouterr().out
    assert "(dynamic)" in table and " +- " in table
    assert mpimg.imread(out / "elbo.png").ndim == 3
