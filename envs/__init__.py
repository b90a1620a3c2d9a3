"""Environments: registration of the project's own gymnasium envs.

Importing this package registers ``relax_rl/BernoulliToy-v0`` (the seed's toy problem as a
one-step bandit; ``gym.make("relax_rl/BernoulliToy-v0", target=0.45)`` overrides t) and
``relax_rl/Chain-v0`` (a short chain whose exact policy gradient is a finite sum) and
``relax_rl/ContextualBandit{2,10,50}-v0`` (8 one-hot contexts, that many arms, fixed N(0, 1)
rewards: the ladder on which an action-dependent control variate is measured), and the
factorised tasks ``relax_rl/MultiBinaryMatch-v0`` (match ``d`` random bits in one step; options
``d``, default 32, and ``sigma``) and ``relax_rl/ParallelCartPole-v0`` (``d`` CartPoles, one
bit each; option ``d``, default 4), and ``relax_rl/GaussianBandit-v0`` (a one-step ``Box``
bandit with reward ``-|a - target|^2``: an exact policy gradient for Gaussian policies), and
``relax_rl/SimpleSpread-v0`` (PettingZoo MPE's cooperative ``simple_spread`` as one env with a
joint ``MultiDiscrete([5] * n_agents)`` action and a shared reward; options ``n_agents``,
``max_cycles``, ``local_ratio``, ``reward``; the ``mpe`` extra).
"""

from gymnasium.envs.registration import register, registry

from relax_rl.envs.bandit import ContextualBanditEnv
from relax_rl.envs.chain import ChainEnv
from relax_rl.envs.factorised import MultiBinaryMatchEnv, ParallelCartPoleEnv
from relax_rl.envs.toy import BernoulliToyEnv

TOY_ENV_ID = "relax_rl/BernoulliToy-v0"
CHAIN_ENV_ID = "relax_rl/Chain-v0"
BANDIT_ARMS = (2, 10, 50)
BANDIT_ENV_IDS = {n: f"relax_rl/ContextualBandit{n}-v0" for n in BANDIT_ARMS}
MATCH_ENV_ID = "relax_rl/MultiBinaryMatch-v0"
PARALLEL_CARTPOLE_ENV_ID = "relax_rl/ParallelCartPole-v0"
GAUSSIAN_BANDIT_ENV_ID = "relax_rl/GaussianBandit-v0"
SIMPLE_SPREAD_ENV_ID = "relax_rl/SimpleSpread-v0"

if TOY_ENV_ID not in registry:
    register(id=TOY_ENV_ID, entry_point="relax_rl.envs.toy:BernoulliToyEnv")
if CHAIN_ENV_ID not in registry:
    register(id=CHAIN_ENV_ID, entry_point="relax_rl.envs.chain:ChainEnv")
for _arms, _id in BANDIT_ENV_IDS.items():
    if _id not in registry:
        register(
            id=_id,
            entry_point="relax_rl.envs.bandit:ContextualBanditEnv",
            kwargs={"n_actions": _arms},
        )

if GAUSSIAN_BANDIT_ENV_ID not in registry:
    register(id=GAUSSIAN_BANDIT_ENV_ID, entry_point="relax_rl.envs.bandit:GaussianBanditEnv")
if MATCH_ENV_ID not in registry:
    register(
        id=MATCH_ENV_ID,
        entry_point="relax_rl.envs.factorised:MultiBinaryMatchEnv",
        reward_threshold=0.95,
    )
if PARALLEL_CARTPOLE_ENV_ID not in registry:
    register(
        id=PARALLEL_CARTPOLE_ENV_ID,
        entry_point="relax_rl.envs.factorised:ParallelCartPoleEnv",
        max_episode_steps=500,
        reward_threshold=475.0,
    )
if SIMPLE_SPREAD_ENV_ID not in registry:  # (mpe2 is imported when the env is made)
    register(id=SIMPLE_SPREAD_ENV_ID, entry_point="relax_rl.envs.mpe:SimpleSpreadEnv")

from relax_rl.envs.factory import (  # noqa: E402
    NORMALIZE_OPTIONS,
    check_env_id,
    make_env,
    normalize_env,
    reward_threshold,
)

__all__ = [
    "BANDIT_ENV_IDS",
    "CHAIN_ENV_ID",
    "GAUSSIAN_BANDIT_ENV_ID",
    "MATCH_ENV_ID",
    "NORMALIZE_OPTIONS",
    "PARALLEL_CARTPOLE_ENV_ID",
    "SIMPLE_SPREAD_ENV_ID",
    "TOY_ENV_ID",
    "BernoulliToyEnv",
    "ChainEnv",
    "ContextualBanditEnv",
    "MultiBinaryMatchEnv",
    "ParallelCartPoleEnv",
    "check_env_id",
    "make_env",
    "normalize_env",
    "reward_threshold",
]
