"""Command-line flags generated from a typed config dataclass (CleanRL's pattern): each field is
one flag, its default and help written once, on the field.

A field's ``metadata`` may hold ``help`` (the flag's help text), ``cli`` (False: no flag),
``choices`` (valid values),
``min`` (the smallest valid number), ``type`` (a parser for the value), ``metavar`` and ``flag``
(the flag's name when it is not ``--field-name``)::

    @dataclass
    class ToyConfig:
        steps: int = field(default=10_000, metadata={"help": "optimisation steps"})

    add_dataclass_flags(parser, ToyConfig)        # --steps N (default 10000)
    cfg = dataclass_from_args(ToyConfig, args)    # ToyConfig(steps=args.steps, ...)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def bounded(parse: type, low: float | int) -> Any:
    """argparse type: ``parse`` the text and refuse a value below ``low``, in one line."""
    kind = "an integer" if parse is int else "a number"

    def check(text: str) -> Any:
        try:  # (an integer may be written 1e4, as config values may)
            value = parse(text) if parse is not int else _integer(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected {kind} >= {low}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"invalid value {value}: expected {kind} >= {low}")
        return value

    return check


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def flag_name(f: dataclasses.Field, prefix: str = "") -> str:
    return f.metadata.get("flag") or "--" + prefix + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    return f"{value:_}".replace("_", ",") if isinstance(value, int) and value > 9999 else str(value)


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    exclude: Iterable[str] = (),
    overrides: bool = False,
    default_note: str = "",
) -> None:
    """Add one flag per field of the dataclass ``cls``.

    :param prefix: put before each flag's name (``wandb-`` gives ``--wandb-mode``).
    :param exclude: fields that get no flag.
    :param overrides: the flags override settings from elsewhere (config files): their
        argparse default is ``None`` ("not given") and the help shows the field's default.
    :param default_note: appended to each default in the help (e.g. "; configs may set it").
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init or not f.metadata.get("cli", True):
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        default = _default(f)
        meta = f.metadata
        choices = meta.get("choices")
        if choices is None and typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
        kwargs: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name}
        help_text = meta.get("help", "")
        if choices is not None:
            kwargs["choices"] = list(choices)
        if tp is bool:
            kwargs["action"] = "store_const" if overrides else argparse.BooleanOptionalAction
            if overrides:
                kwargs["const"] = True
        elif typing.get_origin(tp) in (tuple, list):
            kwargs["nargs"] = "*" if default == () or default == [] else "+"
            kwargs["type"] = meta.get("type", typing.get_args(tp)[0])
            kwargs["metavar"] = meta.get("metavar", "NAME")
        else:
            kwargs["type"] = meta.get("type", tp if choices is None else type(choices[0]))
            if "min" in meta:
                kwargs["type"] = bounded(kwargs["type"], meta["min"])
            kwargs["metavar"] = meta.get(
                "metavar", f.name.upper() if tp is str else tp.__name__.upper()
            )
            if choices is not None:
                kwargs.pop("metavar")
        if "metavar" in meta and "metavar" not in kwargs:
            kwargs["metavar"] = meta["metavar"]
        kwargs["default"] = None if overrides else default
        if kwargs.get("nargs") and choices is not None:
            help_text = f"{help_text}: one or more of {', '.join(map(str, choices))}"
        # (a switch shows no default; a None default's meaning is in the help)
        if tp is not bool and default is not None:
            help_text = f"{help_text} (default {_shown(default)}{default_note})".lstrip()
        kwargs["help"] = help_text
        parser.add_argument(flag_name(f, prefix), **kwargs)


def given_overrides(
    args: argparse.Namespace, cls: type, *, prefix: str = "", exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The fields of ``cls`` whose flag (added with ``overrides=True``) was given."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init or not f.metadata.get("cli", True):
            continue
        value = getattr(args, prefix.replace("-", "_") + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def dataclass_from_args(
    cls: type, args: argparse.Namespace, *, prefix: str = "", **fixed: Any
) -> Any:
    """An instance of ``cls`` from the flags :func:`add_dataclass_flags` added (lists become
    tuples where the field is a tuple); ``fixed`` sets fields that have no flag."""
    hints = typing.get_type_hints(cls)
    values = dict(fixed)
    for f in dataclasses.fields(cls):
        dest = prefix.replace("-", "_") + f.name
        if f.name in values or not f.init or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        tp, _ = _unwrap_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)
