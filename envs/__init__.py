"""Environments: registration of the project's own gymnasium envs.

Importing this package registers ``relax_rl/BernoulliToy-v0`` (the seed's toy problem as a
one-step bandit; ``gym.make("relax_rl/BernoulliToy-v0", target=0.45)`` overrides t).
"""

from gymnasium.envs.registration import register, registry

from envs.toy import BernoulliToyEnv

TOY_ENV_ID = "relax_rl/BernoulliToy-v0"

if TOY_ENV_ID not in registry:
    register(id=TOY_ENV_ID, entry_point="envs.toy:BernoulliToyEnv")

__all__ = ["TOY_ENV_ID", "BernoulliToyEnv"]
