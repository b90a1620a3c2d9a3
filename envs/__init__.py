"""Environments: registration of the project's own gymnasium envs.

Importing this package registers ``relax_rl/BernoulliToy-v0`` (the seed's toy problem as a
one-step bandit; ``gym.make("relax_rl/BernoulliToy-v0", target=0.45)`` overrides t) and
``relax_rl/Chain-v0`` (a short chain whose exact policy gradient is a finite sum).
"""

from gymnasium.envs.registration import register, registry

from envs.chain import ChainEnv
from envs.toy import BernoulliToyEnv

TOY_ENV_ID = "relax_rl/BernoulliToy-v0"
CHAIN_ENV_ID = "relax_rl/Chain-v0"

if TOY_ENV_ID not in registry:
    register(id=TOY_ENV_ID, entry_point="envs.toy:BernoulliToyEnv")
if CHAIN_ENV_ID not in registry:
    register(id=CHAIN_ENV_ID, entry_point="envs.chain:ChainEnv")

from envs.factory import check_env_id, make_env, reward_threshold  # noqa: E402

__all__ = [
    "CHAIN_ENV_ID",
    "TOY_ENV_ID",
    "BernoulliToyEnv",
    "ChainEnv",
    "check_env_id",
    "make_env",
    "reward_threshold",
]
