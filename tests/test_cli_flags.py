"""Flags generated from the typed configs: one source for each default (CleanRL's pattern)."""

import dataclasses

import pytest

from relax_rl.cli import build_parser
from relax_rl.cli.flags import dataclass_from_args, flag_name, given_overrides
from relax_rl.config import RUN_KEYS, RunSettings
from relax_rl.experiments.toy import ToyConfig
from relax_rl.experiments.vae import VAEConfig
from relax_rl.tracking import TrackingConfig


def _options(command: str) -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {opt: action for action in sub._actions for opt in action.option_strings}


@pytest.mark.parametrize(
    "command,cls,required",
    [("toy", ToyConfig, []), ("vae", TrackingConfig, [])],
)
def test_no_flags_give_the_dataclass_defaults(command, cls, required):
    args = build_parser().parse_args([command, *required])
    prefix = "wandb-" if cls is TrackingConfig else ""
    assert dataclass_from_args(cls, args, prefix=prefix) == cls()


def test_vae_flags_go_over_the_protocols_settings():
    """No flag: the dataclass's defaults (the seed paper's protocol); --protocol disarm: its
    settings; a flag given goes over them, one not given does not."""
    from relax_rl.cli.experiments import vae_config
    from relax_rl.experiments.vae import PROTOCOLS

    parser = build_parser()
    assert vae_config(parser.parse_args(["vae"])) == VAEConfig()
    assert tuple(VAEConfig.__dataclass_fields__["protocol"].metadata["choices"]) == tuple(PROTOCOLS)
    cfg = vae_config(parser.parse_args(["vae", "--protocol", "disarm", "--lr", "3e-4",
                                        "--estimators", "disarm", "relax"]))  # fmt: skip
    assert (cfg.protocol, cfg.batch_size, cfg.binarization, cfg.seeds) == (
        "disarm",
        50,
        "dynamic",
        5,
    )
    assert (cfg.lr, cfg.estimators) == (3e-4, ("disarm", "relax"))


@pytest.mark.parametrize(
    "command,cls,prefix",
    [
        ("toy", ToyConfig, ""),
        ("vae", VAEConfig, ""),
        ("train", RunSettings, ""),
        ("compare", RunSettings, ""),
        ("train", TrackingConfig, "wandb-"),
        ("compare", TrackingConfig, "wandb-"),
    ],
)
def test_every_field_is_a_flag_with_its_help_and_choices(command, cls, prefix):
    options = _options(command)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):  # (a mapping: --set only)
            assert flag_name(f, prefix) not in options
            continue
        action = options[flag_name(f, prefix)]
        assert f.metadata["help"].split(" (")[0] in action.help
        if "choices" in f.metadata:
            assert list(action.choices) == list(f.metadata["choices"])


def test_run_key_flags_override_only_when_given():
    parser = build_parser()
    args = parser.parse_args(["train", "--algo", "a2c", "--env", "CartPole-v1"])
    assert given_overrides(args, RunSettings) == {}
    args = parser.parse_args(
        ["train", "--algo", "a2c", "--env", "CartPole-v1", "--n-envs", "4", "--until-solved"]
    )
    assert given_overrides(args, RunSettings) == {"n_envs": 4, "stop_when_solved": True}
    # the help shows the one default
    assert "(default 100,000" in _options("train")["--total-steps"].help
    assert RUN_KEYS["total_steps"] == (int, 100_000)


def test_changing_a_default_changes_the_flag(monkeypatch):
    """The flag reads the dataclass's default: nothing else holds it."""
    fields = {f.name: f for f in dataclasses.fields(ToyConfig)}
    monkeypatch.setattr(fields["steps"], "default", 123)
    args = build_parser().parse_args(["toy"])
    assert args.steps == 123


def test_a_reader_that_goes_away_is_not_an_error():
    """`relax-rl params | head`: the pipe closes before the output is written; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "relax_rl", "params", "--algo", "relax"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # (before the interpreter has started: its first write finds no reader)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err
