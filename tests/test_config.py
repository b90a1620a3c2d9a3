"""Config files (``inherit``) and config validation along the agents' class hierarchy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from relax_rl import config as cfg
from relax_rl.agents import ALGOS
from relax_rl.errors import UsageError

SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def _one_line_error(call: Any, *needles: str) -> str:
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configs/ folder of our own: ``base.yaml``, and ``child.yaml`` inheriting it."""
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "Env-v0": {
                    "n_envs": 8,
                    "gamma": 0.99,
                    "policy_kwargs": {"net_arch": [64, 64], "activation_fn": "tanh"},
                },
                "OnlyInBase-v0": {"n_envs": 4},
                "paper": {"n_steps": 0},
            }
        )
    )
    (tmp_path / "child.yaml").write_text(
        "inherit: base\n"
        "Env-v0:\n"
        "  gamma: 0.9\n"
        "  policy_kwargs: {activation_fn: relu}\n"
        "OnlyInChild-v0:\n"
        "  n_envs: 2\n"
        "paper:\n"  # an empty entry: the parent's as it is
    )
    monkeypatch.setattr(cfg, "CONFIG_DIR", tmp_path)
    return tmp_path


def test_an_entry_starts_from_the_parents_and_mappings_merge_by_key(config_dir: Path) -> None:
    assert cfg.zoo_settings("child", "Env-v0") == {
        "n_envs": 8,
        "gamma": 0.9,
        "policy_kwargs": {"net_arch": [64, 64], "activation_fn": "relu"},
    }
    assert cfg.zoo_settings("child", "OnlyInBase-v0") == {"n_envs": 4}  # inherited whole
    assert cfg.zoo_settings("child", "OnlyInChild-v0") == {"n_envs": 2}
    assert cfg.zoo_settings("child", "paper", required=True) == {"n_steps": 0}
    assert cfg.resolve_settings("child", "OnlyInBase-v0") == {"n_envs": 4}


def test_inherit_chains_and_is_never_an_entry(config_dir: Path) -> None:
    (config_dir / "grandchild.yaml").write_text("inherit: child\nEnv-v0: {n_envs: 1}\n")
    assert cfg.zoo_settings("grandchild", "Env-v0")["n_envs"] == 1
    assert cfg.zoo_settings("grandchild", "Env-v0")["gamma"] == 0.9
    assert cfg.zoo_settings("grandchild", "OnlyInBase-v0") == {"n_envs": 4}
    assert cfg.zoo_settings("grandchild", "inherit") == {}
    message = _one_line_error(
        lambda: cfg.zoo_settings("grandchild", "inherit", required=True), "no entry 'inherit'"
    )
    assert "'inherit'" not in message.split("it has:")[1]
    assert "Env-v0, OnlyInBase-v0, paper, OnlyInChild-v0" in message
    # select() on the file as loaded (the benchmarks' way) applies inherit too
    path = config_dir / "grandchild.yaml"
    assert cfg.select(cfg.load_config_file(path), "paper", path) == {"n_steps": 0}


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        ({"bad": "inherit: nothing\n"}, ["'nothing'", "names no config file", "valid: ", "base"]),
        ({"bad": "inherit: [base]\n"}, ["['base']", "is not an algo name", "valid: "]),
        ({"bad": "inherit: ../base\n"}, ["'../base'", "names no config file"]),
        ({"bad": "inherit: bad\n"}, ["makes a cycle (bad -> bad)"]),
        (
            {"bad": "inherit: other\n", "other": "inherit: bad\n"},
            ["other.yaml", "makes a cycle (bad -> other -> bad)"],
        ),
    ],
)
def test_bad_inherit_is_refused_in_one_line(
    config_dir: Path, files: dict[str, str], needles: list[str]
) -> None:
    for name, text in files.items():
        (config_dir / f"{name}.yaml").write_text(text)
    _one_line_error(lambda: cfg.zoo_settings("bad", "Env-v0"), *needles)


def test_a_config_file_of_ones_own_may_inherit(config_dir: Path, tmp_path_factory) -> None:
    mine = tmp_path_factory.mktemp("mine") / "mine.yaml"
    mine.write_text("inherit: child\ngamma: 0.5\n")
    # configs/child.yaml's entry in place of configs/base.yaml's, then the file's keys
    settings = cfg.resolve_settings("base", "Env-v0", config_file=mine, overrides={"n_envs": 3})
    assert settings == {
        "n_envs": 3,
        "gamma": 0.5,
        "policy_kwargs": {"net_arch": [64, 64], "activation_fn": "relu"},
    }
    assert cfg.resolve_settings("base", "x", preset="paper", config_file=mine)["n_steps"] == 0
    mine.write_text("inherit: 3\n")
    _one_line_error(lambda: cfg.resolve_settings("base", "Env-v0", config_file=mine), "3")


@pytest.mark.parametrize(("child", "parent"), [("relax", "a2c"), ("relax-ppo", "ppo")])
def test_shipped_files_state_only_what_differs(child: str, parent: str) -> None:
    own = yaml.safe_load((SHIPPED / f"{child}.yaml").read_text())
    assert own["inherit"] == parent
    base = yaml.safe_load((SHIPPED / f"{parent}.yaml").read_text())
    repeated = [
        f"{entry}.{key}"
        for entry, settings in own.items()
        if entry != "inherit"
        for key, value in (settings or {}).items()
        if key in base.get(entry, {}) and base[entry][key] == value
    ]
    assert not repeated


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_shipped_entry_validates(algo: str) -> None:
    path = SHIPPED / f"{algo}.yaml"
    data = cfg.load_config_file(path)
    for entry in cfg.inherited(data, path):
        cfg.validate(cfg.select(data, entry, path), ALGOS[algo])


# A dummy hierarchy, SB3 style: each class documents its own arguments and passes the rest on.
class _Base:
    """A base agent.

    :param learning_rate: the base's step size.
    :param n_steps: the base's steps per update.
    :param gamma: discount factor.
    """

    def __init__(
        self,
        policy: str,
        env: Any,
        learning_rate: float = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        hidden: list[int] | None = None,
        verbose: int = 0,
    ) -> None:
        pass


class _Mid(_Base):
    """A subclass that changes a default.

    :param n_steps: the mid's steps per update.
    :param cv_scale: the mid's own option.
    """

    def __init__(
        self, policy: str, env: Any, cv_scale: float = 1.0, n_steps: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(policy, env, n_steps=n_steps, **kwargs)


class _Leaf(_Mid):
    """A subclass that documents only its own argument.

    :param kappa_mode: the leaf's own option.
    """

    def __init__(self, policy: str, env: Any, kappa_mode: str = "optimal", **kwargs: Any) -> None:
        super().__init__(policy, env, **kwargs)


class _Sealed(_Base):
    """Takes no ``**kwargs``: the base's arguments are not its own."""

    def __init__(self, policy: str, env: Any, kappa: float = 0.0) -> None:
        super().__init__(policy, env)


class _Mixin:
    def __init__(self, *args: Any, cv_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)


class _WithMixin(_Mixin, _Base):
    def __init__(self, policy: str, env: Any, kappa_mode: str = "x", **kwargs: Any) -> None:
        super().__init__(policy, env, **kwargs)


class _Foreign:
    def __init__(self, foreign_option: int = 0, **kwargs: Any) -> None:
        pass


_Foreign.__module__ = "another_package.algos"  # as SB3's classes are to relax_rl's


class _OnForeign(_Foreign):
    def __init__(self, own: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)


def test_parameters_walk_the_hierarchy_while_kwargs_pass_them_on() -> None:
    params = cfg.algo_parameters(_Leaf)
    assert list(params) == ["kappa_mode", "cv_scale", "n_steps", "learning_rate", "gamma", "hidden"]
    assert params["n_steps"].default == 1  # the nearest class's default wins
    assert params["learning_rate"].default == 7e-4 and params["learning_rate"].annotation is float
    assert params["hidden"].annotation == list[int] | None  # evaluated in the base's module
    assert list(cfg.algo_parameters(_Sealed)) == ["kappa"]
    assert set(cfg.algo_parameters(_WithMixin)) == {
        "kappa_mode",
        "cv_learning_rate",
        *cfg.algo_parameters(_Base),
    }
    assert list(cfg.algo_parameters(_OnForeign)) == ["own"]
    # the agents: SB3's own arguments (use_sde, rollout_buffer_class, ...) are never listed
    for algo_cls in ALGOS.values():
        assert not {"use_sde", "rollout_buffer_class", "_init_setup_model"} & set(
            cfg.algo_parameters(algo_cls)
        )


def test_docs_come_from_the_nearest_class_that_documents_the_name() -> None:
    docs = cfg.parameter_docs(_Leaf)
    assert docs["kappa_mode"] == "the leaf's own option."
    assert docs["cv_scale"] == "the mid's own option."
    assert docs["n_steps"] == "the mid's steps per update."
    assert docs["learning_rate"] == "the base's step size."
    # REINFORCE re-declares A2C's arguments without documenting them: A2C's text
    assert "discount" in cfg.parameter_docs(ALGOS["reinforce"])["gamma"]


def test_validation_knows_the_inherited_keys_and_their_types() -> None:
    run, kwargs = cfg.validate(
        {"learning_rate": 1, "n_steps": 2.0, "cv_scale": 3, "hidden": [8], "n_envs": 2}, _Leaf
    )
    assert kwargs == {"learning_rate": 1.0, "n_steps": 2, "cv_scale": 3.0, "hidden": [8]}
    assert run["n_envs"] == 2
    message = _one_line_error(
        lambda: cfg.validate({"bogus": 1}, _Leaf), "unknown config key 'bogus' for _Leaf"
    )
    assert all(k in message for k in ("learning_rate", "gamma", "cv_scale", "kappa_mode"))
    _one_line_error(
        lambda: cfg.validate({"gamma": "high"}, _Leaf),
        "gamma='high' has the wrong type: expected float",
    )
    _one_line_error(lambda: cfg.validate({"hidden": "8"}, _Leaf), "list of layer sizes")
    _one_line_error(lambda: cfg.validate({"gamma": 0.9}, _Sealed), "unknown config key 'gamma'")
