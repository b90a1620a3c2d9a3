"""Hyperparameter configs: YAML keyed by env id (rl-zoo style), validated against the agent.

A file ``configs/<algo>.yaml`` maps env ids (and named presets such as ``paper``) to settings::

    CartPole-v1:
      n_envs: 8
      total_steps: 500000
      learning_rate: 7.0e-4
      policy_kwargs: {net_arch: [64, 64], activation_fn: tanh}

A file may start from another algo's file with a top-level ``inherit: <algo>`` (``relax.yaml``:
``inherit: a2c``) and state only what differs: :func:`inherited`.

Keys are the agent's constructor arguments (along its class hierarchy: :func:`algo_parameters`)
plus the run keys in :data:`RUN_KEYS`. Unknown keys and values of the wrong type are refused with
a one-line message naming them.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from relax_rl.errors import UsageError
from relax_rl.policies import ACTIVATIONS
from relax_rl.schedules import LinearSchedule, is_schedule_text, parse_schedule


@dataclass
class RunSettings:
    """Settings of the run rather than of the agent: the one source of their types, defaults
    and meaning (``train``'s and ``compare``'s flags and ``relax-rl params`` are made from it)."""

    n_envs: int = field(
        default=1, metadata={"help": "envs stepped side by side (a VecEnv)", "min": 1}
    )
    total_steps: int = field(default=100_000, metadata={"help": "env steps to train for", "min": 1})
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "mean return of the last 100 episodes that counts as solved (none: the "
            "env's reward_threshold)"
        },
    )
    stop_when_solved: bool = field(
        default=False, metadata={"help": "stop at the threshold", "flag": "--until-solved"}
    )
    checkpoint_freq: int = field(
        default=50_000,
        metadata={"help": "env steps between checkpoints and summary updates", "min": 1},
    )
    eval_episodes: int = field(
        default=10,
        metadata={
            "help": "episodes per evaluation: at the end (0: none) and every eval_freq",
            "min": 0,
        },
    )
    eval_freq: int = field(
        default=0,
        metadata={
            "help": "env steps between evaluations during training (0: none; SB3's "
            "EvalCallback: evaluations.npz, best_model.zip)",
            "min": 0,
        },
    )
    eval_envs: int = field(
        default=1, metadata={"help": "envs the evaluations run on, side by side", "min": 1}
    )
    eval_deterministic: bool = field(
        default=True,
        metadata={"help": "evaluate the greedy policy (false: actions sampled as in training)"},
    )
    vec_env: str = field(
        default="dummy",
        metadata={
            "help": "dummy (one process), subproc (a process per env) or envpool",
            "choices": ("dummy", "subproc", "envpool"),
        },
    )
    grad_var_freq: int = field(
        default=50,
        metadata={
            "help": "updates between measurements of the update's gradient variance (0: off; "
            "needs 4+ envs)",
            "min": 0,
        },
    )
    env_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "keyword arguments of the env's constructor (rl-zoo3's env_kwargs), e.g. "
            "--set env_kwargs.d=128",
            "cli": False,
        },
    )
    discretize: int | None = field(
        default=None,
        metadata={
            "help": "bins per dimension of a Box action space: the env's actions as "
            "MultiDiscrete([K] * d), bins evenly over the bounds (Tang & Agrawal 2020: K = 11)",
            "min": 2,
        },
    )
    normalize: bool = field(
        default=False,
        metadata={
            "help": "wrap the env in SB3's VecNormalize (rl-zoo3's normalize): running "
            "statistics saved with every checkpoint and the model, frozen for evaluation"
        },
    )
    normalize_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "VecNormalize's options (norm_obs, norm_reward, clip_obs, clip_reward, "
            "epsilon; gamma is the agent's), e.g. --set normalize_kwargs.norm_reward=false",
            "cli": False,
        },
    )
    capture_video: bool = field(
        default=False,
        metadata={
            "help": "record an episode as mp4 into OUT/videos/ after each periodic evaluation "
            "and at the end (pip install 'relax-rl[video]')"
        },
    )
    tensorboard: bool = field(
        default=False,
        metadata={
            "help": "also write SB3's TensorBoard logs, every metric of progress.csv and wandb, "
            "into OUT/tensorboard/ (pip install 'relax-rl[tensorboard]')"
        },
    )
    log_interval: int = field(
        default=100,
        metadata={
            "help": "updates between rows of progress.csv, stdout and wandb (SB3 A2C's 100; "
            "gradient-variance measurements in between are averaged)",
            "min": 1,
        },
    )


_RUN_TYPES = typing.get_type_hints(RunSettings)
#: The run keys with their types and defaults, and what each means (from :class:`RunSettings`).
RUN_KEYS: dict[str, tuple[type, Any]] = {
    f.name: (
        next(t for t in typing.get_args(_RUN_TYPES[f.name]) or (_RUN_TYPES[f.name],)),
        f.default,
    )
    for f in fields(RunSettings)
}
RUN_KEY_DOCS = {f.name: f.metadata["help"] for f in fields(RunSettings)}
POLICY_KWARGS = {
    "net_arch",
    "activation_fn",
    "ortho_init",
    "share_features_extractor",
    "log_std_init",  # a Gaussian policy's initial log std (Box actions; SB3's name)
}
NOT_CONFIGURABLE = {
    "self",
    "policy",
    "env",
    "verbose",
    "seed",
    "device",
    "_init_setup_model",
    "tensorboard_log",
    "kwargs",
    "args",
}


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def _takes_kwargs(init: Any) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())


def _declaring_classes(algo_cls: type) -> list[type]:
    """The classes that declare ``algo_cls``'s constructor arguments, nearest first: its MRO up
    to the first ``__init__`` without ``**kwargs`` (an agent passes its base's arguments
    through ``**kwargs``, SB3 style), never past ``object`` or into another package's classes
    (SB3's: the agents set those arguments themselves) once an ``__init__`` is found."""
    home = {"relax_rl", _package(algo_cls)}
    classes: list[type] = []
    init_found = False
    for cls in algo_cls.__mro__:
        if init_found and (cls is object or _package(cls) not in home):
            break
        classes.append(cls)  # (one without its own __init__ still documents in its docstring)
        if "__init__" in vars(cls):
            init_found = True
            if cls is object or not _takes_kwargs(cls.__init__):
                break
    return classes


def algo_parameters(algo_cls: type) -> dict[str, inspect.Parameter]:
    """The configurable parameters of the agent's constructor, with their annotations
    evaluated: its ``__init__``'s explicit, typed parameters, then, where that takes
    ``**kwargs``, its bases' along the MRO (:func:`_declaring_classes`); the nearest class's
    declaration of a name wins (its default and type). A class that fixes a base's argument
    itself must not leave it to ``**kwargs``: it would be listed as configurable."""
    params: dict[str, inspect.Parameter] = {}
    for cls in _declaring_classes(algo_cls):
        if "__init__" not in vars(cls):
            continue
        for name, p in inspect.signature(cls.__init__, eval_str=True).parameters.items():
            if name not in NOT_CONFIGURABLE and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(name, p)
    return params


#: configs/ (installed as relax_rl.configs, so an installed relax-rl has it too), or the folder
#: in RELAX_RL_CONFIGS.
CONFIG_DIR = Path(
    os.environ.get("RELAX_RL_CONFIGS") or str(importlib.resources.files("relax_rl.configs"))
)


def zoo_settings(algo: str, entry: str | None, required: bool = False) -> dict[str, Any]:
    """``configs/<algo>.yaml``'s settings for ``entry`` (an env id or a preset name), its
    ``inherit`` applied: empty where there is none, unless ``required`` (a preset the user
    named)."""
    path = CONFIG_DIR / f"{algo}.yaml"
    data = inherited(load_config_file(path), path) if path.exists() else {}
    if entry is None or (entry not in data and not required):
        return {}
    return select(data, entry, path)


def resolve_settings(
    algo: str,
    env_id: str,
    *,
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's settings, unvalidated (:func:`validate` checks them), from the lowest priority
    to the highest: ``configs/<algo>.yaml``'s entry for ``env_id`` (or the named ``preset``),
    ``config_file``, then ``overrides`` (``--set`` and the flags). ``train``, ``compare`` and
    :meth:`relax_rl.training.RunSpec.create` all resolve settings here.

    ``config_file`` is a mapping of settings, or, as rl-zoo's files and ``configs/``'s, a
    mapping of env ids (and presets) to settings (:func:`file_entry`). With ``inherit:
    <parent>`` it starts from ``configs/<parent>.yaml``'s entry in place of
    ``configs/<algo>.yaml``'s: the file then states its whole base, as a file in ``configs/``
    does."""
    base = algo
    own = {}
    if config_file is not None:
        own = file_entry(load_config_file(config_file), preset or env_id, config_file)
    if INHERIT in own:
        base = _parent_file(own.pop(INHERIT), config_file, CONFIG_DIR).stem
    settings = zoo_settings(base, preset if preset is not None else env_id, preset is not None)
    return merge(merge(settings, own), overrides or {})


# A key of a config file that reads as a gymnasium env id (Name-vN, ns/Name-vN, module:Name-vN):
# the file maps env ids to settings (rl-zoo's layout), not settings to values.
_ENV_ID_KEY = re.compile(r"^(?:[\w.:-]+[/:])?[\w.-]+-v\d+$")


def file_entry(data: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    """The settings a ``--config`` file gives a run on env (or preset) ``key``: the file's
    entry for ``key`` when it maps env ids to settings (rl-zoo's layout, as ``configs/``), else
    the file itself (a mapping of settings). Its top-level ``inherit`` holds either way.

    :param data: the loaded file.
    :param key: the env id, or the preset named.
    :param path: the file (for messages).
    """
    inherit = {INHERIT: data[INHERIT]} if INHERIT in data else {}
    entries = {k: v for k, v in data.items() if k != INHERIT}
    keyed = key in entries or any(_ENV_ID_KEY.match(str(k)) for k in entries)
    if not keyed:
        return dict(data)
    if key not in entries:
        raise UsageError(
            f"config file {path} maps env ids to settings and has no entry {key!r}; it has: "
            f"{', '.join(map(str, entries))}"
        )
    entry = entries[key] or {}
    if not isinstance(entry, Mapping):
        raise UsageError(f"entry {key!r} in {path} must be a mapping of settings")
    return {**inherit, **entry}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read one YAML config file (a mapping of env ids / presets to settings)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder; give a YAML file") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"config file {path} must map env ids to settings, got a {type(data).__name__}"
        )
    return data


#: The top-level key of a config file that names the ``configs/<algo>.yaml`` it starts from.
INHERIT = "inherit"


def _parent_file(value: Any, path: Path | None, config_dir: Path) -> Path:
    """``config_dir/<value>.yaml``, the file that ``inherit: <value>`` in ``path`` names (a
    name, not a path: a config file starts from one of the algos' own files)."""
    names = sorted(p.stem for p in config_dir.glob("*.yaml") if p.is_file())
    if not isinstance(value, str) or value not in names:
        what = "names no config file" if isinstance(value, str) else "is not an algo name"
        raise UsageError(
            f"{INHERIT}: {value!r} in {path} {what}; valid: {', '.join(names) or 'none'} "
            f"(the files in {config_dir})"
        )
    return config_dir / f"{value}.yaml"


def inherited(
    data: Mapping[str, Any], path: Path, *, _chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The entries of the loaded config file ``path`` with its ``inherit: <parent>`` applied
    (``<parent>.yaml`` beside it, itself resolved the same way), without the ``inherit`` key.

    Each entry starts from the parent's entry of the same key, if the parent has one, and the
    child's keys override it, merged as :func:`merge` does: a mapping value (``policy_kwargs``,
    ``env_kwargs``) merges by key, any other value replaces the parent's. An entry only the
    parent has is inherited whole (the parent's entries first, then the child's own)."""
    if INHERIT not in data:
        return dict(data)
    parent = _parent_file(data[INHERIT], path, path.parent)
    chain = (*_chain, path.resolve())
    if parent.resolve() in chain:
        cycle = " -> ".join(p.stem for p in (*chain, parent))
        raise UsageError(
            f"{INHERIT}: {data[INHERIT]!r} in {path} makes a cycle ({cycle}); a file cannot "
            "start from itself or from a file that starts from it"
        )
    out = inherited(load_config_file(parent), parent, _chain=chain)
    for key, entry in data.items():
        if key == INHERIT:
            continue
        base = out.get(key)
        if isinstance(base, Mapping) and (entry is None or isinstance(entry, Mapping)):
            entry = merge(dict(base), entry or {})
        out[key] = entry  # (an entry that is not a mapping is refused by select)
    return out


def select(data: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    """The settings under ``key`` (an env id or preset name) of a loaded config file, its
    ``inherit`` applied (:func:`inherited`)."""
    data = inherited(data, path)
    if key not in data:
        raise UsageError(
            f"no entry {key!r} in {path}; it has: {', '.join(map(str, data)) or 'nothing'}"
        )
    entry = data[key] or {}
    if not isinstance(entry, dict):
        raise UsageError(f"entry {key!r} in {path} must be a mapping of settings")
    return dict(entry)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML (``[64, 64]``, ``true``; numbers
    in scientific notation such as ``1e-3``, strings to YAML 1.1, become numbers where the key
    takes one: :func:`validate`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: the value is not valid YAML") from None
        target = out
        *parents, leaf = key.split(".")  # policy_kwargs.net_arch=[10,10]
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``policy_kwargs`` entries merge rather than replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _annotation_types(param: inspect.Parameter) -> tuple[Any, ...]:
    ann = param.annotation
    return (
        typing.get_args(ann)
        if typing.get_origin(ann) in (typing.Union, types.UnionType)
        else (ann,)
    )


def _expected_type(param: inspect.Parameter) -> type | None:
    """The scalar type a config value must have (``float | Schedule`` takes a float), or None
    for anything else (lists, mappings: checked elsewhere or by the agent)."""
    types_ = _annotation_types(param)
    return next((t for t in (bool, float, int, str) if t in types_), None)


def _takes_schedule(param: inspect.Parameter) -> bool:
    """SB3's ``float | Schedule`` arguments (``Schedule`` is a callable of the progress)."""
    return any(typing.get_origin(t) is Callable for t in _annotation_types(param))


def _check_type(key: str, value: Any, expected: type | None, optional: bool) -> Any:
    if expected is None or (value is None and optional):
        return value
    if expected in (float, int) and isinstance(value, str):
        # YAML 1.1 reads 1e-3 and 3e-4 (no dot) as strings; take what Python's float() takes.
        with contextlib.suppress(ValueError):
            value = float(value)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UsageError(
        f"{key}={value!r} has the wrong type: expected {expected.__name__}, "
        f"got {type(value).__name__}"
    )


def validate(settings: Mapping[str, Any], algo_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``settings`` into run keys and agent kwargs, checking names and types.

    :return: ``(run, agent_kwargs)``; ``run`` has every key of :data:`RUN_KEYS`.
    """
    params = algo_parameters(algo_cls)
    run = {k: default for k, (_, default) in RUN_KEYS.items()}
    agent: dict[str, Any] = {}
    for key, value in settings.items():
        if key in RUN_KEYS:
            typ, default = RUN_KEYS[key]
            run[key] = _check_type(key, value, typ, optional=default is None)
        elif key == "policy_kwargs":
            if value is not None:  # (config.yaml writes the default as null)
                agent[key] = _policy_kwargs(value)
        elif key in params:
            p = params[key]
            optional = type(None) in _annotation_types(p)
            sizes = list[int] in _annotation_types(p) and not (value is None and optional)
            if sizes and not (isinstance(value, list) and _valid_net_arch(value)):
                raise UsageError(
                    f"{key}={value!r} has the wrong type: expected a list of layer sizes "
                    "such as [64, 64]"
                )
            if is_schedule_text(value) and _takes_schedule(p):
                agent[key] = parse_schedule(key, value)
            elif is_schedule_text(value):
                scheduled = [k for k, q in params.items() if _takes_schedule(q)]
                raise UsageError(
                    f"{key}={value!r}: {key} takes no schedule; {algo_cls.__name__}'s scheduled "
                    f"settings: {', '.join(scheduled) or 'none'}"
                )
            else:
                agent[key] = _check_type(key, value, _expected_type(p), optional)
        else:
            valid = sorted({*RUN_KEYS, *params, "policy_kwargs"})
            raise UsageError(
                f"unknown config key {key!r} for {algo_cls.__name__}; valid: {', '.join(valid)}"
            )
    run["normalize_kwargs"] = _normalize_kwargs(run["normalize_kwargs"])
    for f in fields(RunSettings):
        value, low, choices = run[f.name], f.metadata.get("min"), f.metadata.get("choices")
        if low is not None and value is not None and value < low:
            raise UsageError(f"{f.name} must be >= {low}, got {value}")
        if choices is not None and value not in choices:
            raise UsageError(f"unknown {f.name} {value!r}; valid: {', '.join(choices)}")
    if run["threshold"] is not None and not math.isfinite(run["threshold"]):
        raise UsageError(f"threshold must be a finite number, got {run['threshold']}")
    if run["eval_freq"] > 0 and run["eval_episodes"] == 0:
        raise UsageError(
            f"eval_freq={run['eval_freq']} evaluates 0 episodes; give eval_episodes >= 1 "
            "(or eval_freq 0)"
        )
    if run["capture_video"]:
        from relax_rl.evaluation import check_video_support

        check_video_support()
    if run["tensorboard"]:
        try:
            import tensorboard  # noqa: F401  (SB3's writer needs it)
        except ImportError:
            raise UsageError(
                "--tensorboard needs TensorBoard; install it with: "
                "pip install 'relax-rl[tensorboard]'"
            ) from None
    return run, agent


def _normalize_kwargs(value: dict | None) -> dict | None:
    from relax_rl.envs.factory import NORMALIZE_OPTIONS

    if value is None:
        return None
    out = {}
    for key, option in value.items():
        if key not in NORMALIZE_OPTIONS:
            raise UsageError(
                f"unknown normalize_kwargs key {key!r}; valid: {', '.join(NORMALIZE_OPTIONS)}"
            )
        out[key] = _check_type(f"normalize_kwargs.{key}", option, NORMALIZE_OPTIONS[key], False)
    return out


def _policy_kwargs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"policy_kwargs must be a mapping, got {value!r}")
    out = dict(value)
    for key in out:
        if key not in POLICY_KWARGS:
            raise UsageError(
                f"unknown policy_kwargs key {key!r}; valid: {', '.join(sorted(POLICY_KWARGS))}"
            )
    arch = out.get("net_arch")
    if arch is not None and not _valid_net_arch(arch):
        raise UsageError(
            f"policy_kwargs.net_arch={arch!r} is not a list of layer sizes (e.g. [64, 64]) "
            "or a mapping {pi: [...], vf: [...]}"
        )
    log_std = out.get("log_std_init")
    if log_std is not None and (isinstance(log_std, bool) or not isinstance(log_std, (int, float))):
        raise UsageError(f"policy_kwargs.log_std_init={log_std!r} is not a number")
    act = out.get("activation_fn")
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise UsageError(f"unknown activation_fn {act!r}; valid: {', '.join(ACTIVATIONS)}")
        out["activation_fn"] = ACTIVATIONS[act]
    return out


def _valid_net_arch(arch: Any) -> bool:
    def sizes(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(n, int) and n > 0 for n in x)

    if isinstance(arch, dict):
        return set(arch) <= {"pi", "vf"} and all(sizes(v) for v in arch.values())
    return sizes(arch)


def to_yaml_safe(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with classes (activation functions) written back as their names."""
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out[key] = to_yaml_safe(value)
        elif isinstance(value, type):
            out[key] = names.get(value, value.__name__)
        elif isinstance(value, LinearSchedule):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def parameter_docs(algo_cls: type) -> dict[str, str]:
    """``:param name: text`` of the agent's class docstrings, the text on one line; the nearest
    class along the MRO that documents a name wins. The classes that declare the arguments
    (:func:`_declaring_classes`) come first in the MRO, so a subclass documents only its own
    (SB3 style), and one that re-declares a base's argument (REINFORCE's explicit signature)
    without documenting it keeps the base's text."""
    docs: dict[str, str] = {}
    for cls in algo_cls.__mro__:
        lines = (cls.__doc__ or "").splitlines()
        for i, line in enumerate(lines):
            head = line.strip()
            if not head.startswith(":param ") or ":" not in head[7:]:
                continue
            name, _, text = head[7:].partition(":")
            indent = len(line) - len(line.lstrip())
            more = []
            for nxt in lines[i + 1 :]:  # continuation lines are indented deeper
                if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                more.append(nxt.strip())
            docs.setdefault(name.strip(), " ".join([text.strip(), *more]))
    return docs
