"""RL agents: thin subclasses of :class:`relax_rl.on_policy.GumbelOnPolicyAlgorithm` that differ
only in their policy-gradient surrogate (and RELAX in its control variate)."""

from relax_rl.agents.a2c import A2C
from relax_rl.agents.reinforce import REINFORCE
from relax_rl.agents.relax import RELAX

ALGOS = {"reinforce": REINFORCE, "a2c": A2C, "relax": RELAX}

__all__ = ["A2C", "ALGOS", "REINFORCE", "RELAX"]
