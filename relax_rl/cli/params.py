"""``relax-rl params``: the keys an algorithm takes, their defaults and meaning."""

from __future__ import annotations

import argparse

from relax_rl.cli.common import (
    algo_class,
)
from relax_rl.errors import UsageError


def add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="list an algorithm's hyperparameters, their defaults and a config's values",
        description="Every key train and compare take for ALGO (the agent's constructor "
        "arguments and the run keys), its default, the value configs/<algo>.yaml sets for "
        "--env (or --preset), and what it means.",
    )
    p.add_argument("--algo", required=True, help="reinforce, a2c or relax")
    p.add_argument("--env", default=None, help="also show configs/<algo>.yaml's entry for ENV")
    p.add_argument("--preset", default=None, help="or the entry of a named preset (paper)")
    p.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    from relax_rl import config as cfg

    algo_cls = algo_class(args.algo)
    if args.env is not None:
        from relax_rl.envs import check_env_id

        try:
            check_env_id(args.env)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    entry = args.preset or args.env
    configured = cfg.zoo_settings(args.algo, entry, required=args.preset is not None)
    path = cfg.CONFIG_DIR / f"{args.algo}.yaml"
    docs = cfg.parameter_docs(algo_cls)
    rows = [(k, repr(d), cfg.RUN_KEY_DOCS[k]) for k, (_, d) in cfg.RUN_KEYS.items()]
    rows += [
        (k, "-" if p.default is p.empty else repr(p.default), docs.get(k, ""))
        for k, p in cfg.algo_parameters(algo_cls).items()
    ]
    width = max(len(k) for k, _, _ in rows)
    source = f"{path.name}[{entry}]" if configured else None
    print(f"{algo_cls.__name__}: key, default{', ' + source if source else ''}, meaning")
    for key, default, doc in rows:
        value = f"  {source}: {configured[key]!r}" if key in configured else ""
        print(f"{key:<{width}}  {default:<12}{value}  {doc}")
    return 0
