"""RL agents: thin subclasses of :class:`relax_rl.on_policy.GumbelOnPolicyAlgorithm` that differ
only in their policy-gradient surrogate (and RELAX in its control variate)."""

from relax_rl.agents.a2c import A2C
from relax_rl.agents.grpo import GRPO
from relax_rl.agents.ppo import PPO
from relax_rl.agents.reinforce import REINFORCE
from relax_rl.agents.relax import RELAX
from relax_rl.agents.relax_ppo import RELAXPPO
from relax_rl.agents.rloo import RLOO

ALGOS = {
    "reinforce": REINFORCE,
    "a2c": A2C,
    "relax": RELAX,
    "ppo": PPO,
    "relax-ppo": RELAXPPO,
    "rloo": RLOO,
    "grpo": GRPO,
}

__all__ = ["A2C", "ALGOS", "GRPO", "PPO", "REINFORCE", "RELAX", "RELAXPPO", "RLOO"]
