"""relax-rl compare / plot: a tiny grid, its report and figures, resume, failures, bad input."""

import json

import matplotlib.image as mpimg
import pytest

from relax_rl.cli import main
from relax_rl.compare import parse_seeds

GRID = [
    "compare",
    "--algos",
    "a2c",
    "relax",
    "--env",
    "CartPole-v1",
    "--seeds",
    "0-1",
    "--total-steps",
    "600",
    "--set",
    "n_envs=2",
    "--set",
    "policy_kwargs.net_arch=[8]",
    "--grad-var-freq",
    "5",
    "--jobs",
    "2",
]


def test_tiny_compare_report_figures_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*GRID, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| a2c | 0/2 |" in report and "| relax | 0/2 |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 4 and set(summary["aggregates"]) == {"a2c", "relax"}
    assert summary["aggregates"]["relax"]["grad_log10_var"] is not None
    for png in ("returns.png", "grad_variance.png"):
        assert mpimg.imread(out / png).ndim == 3
    stamp = (out / "a2c-s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*GRID, "--out", str(out)]) == 0  # finished runs are not run again
    assert (out / "a2c-s0" / "summary.json").stat().st_mtime_ns == stamp
    assert "seed" not in capsys.readouterr().err

    plot_out = tmp_path / "plots"
    assert main(["plot", str(out / "a2c-s0"), str(out / "relax-s1"), "--out", str(plot_out)]) == 0
    assert (plot_out / "returns.png").exists() and (plot_out / "report.md").exists()


def test_a_crashing_run_is_reported_and_others_go_on(tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--algos",
        "a2c",
        "--env",
        "CartPole-v1",
        "--seeds",
        "0",
        "--total-steps",
        "300",
        "--set",
        "n_envs=2",
        "--set",
        "n_steps=0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "1 failed" in report and "needs n_envs=1" in report


@pytest.mark.parametrize(
    "text,seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]), ("0-1,7", [0, 1, 7])]
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seeds", "4-1"], "malformed seed range '4-1'"),
        (["--seeds", "a-b"], "malformed seed range"),
        (["--algos", "ppo"], "unknown algo 'ppo'"),
        (["--env", "CartPol-v1"], "did you mean CartPole-v1"),
        (["--backend", "slurm"], "unknown backend 'slurm'"),
    ],
)
def test_compare_bad_input(tmp_path, capsys, args, needle):
    base = {"--algos": ["a2c"], "--env": ["CartPole-v1"], "--seeds": ["0"]}
    for i in range(0, len(args), 2):
        base[args[i]] = [args[i + 1]]
    argv = ["compare", "--out", str(tmp_path / "o")]
    for key, values in base.items():
        argv += [key, *values]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


def test_plot_refuses_a_folder_without_summary(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
