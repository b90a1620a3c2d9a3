"""YAML hyperparameters per algorithm, keyed by env id and preset (installed as
relax_rl.configs)."""
