"""RL agents (REINFORCE, A2C, RELAX; LAX for continuous actions): thin subclasses of the one
shared on-policy base in ``relax_rl``. They land with the RL-agents issue; the estimators they
will use are in :mod:`relax_rl.estimators`."""
