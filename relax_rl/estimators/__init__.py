"""Gradient estimators for discrete (and reparameterisable) random variables.

Pure tensor functions shared by the toy problem, the discrete VAE and the RL agents.
"""

from relax_rl.estimators.control_variates import RebarControlVariate, RelaxToyControlVariate
from relax_rl.estimators.distributions import (
    BERNOULLI,
    CATEGORICAL,
    GAUSSIAN,
    BernoulliFamily,
    CategoricalFamily,
    DiscreteFamily,
    GaussianFamily,
    bernoulli_conditional,
    bernoulli_log_prob,
    bernoulli_sample,
    categorical_conditional,
    categorical_log_prob,
    categorical_sample,
    categorical_score,
    conditional_gumbel_max,
    gaussian_log_prob,
    gaussian_sample,
    gumbel,
    gumbel_max,
    uniform_noise,
)
from relax_rl.estimators.estimators import (
    concrete,
    lax,
    rebar,
    reinforce,
    relax,
    relax_from_values,
    straight_through,
)
from relax_rl.estimators.variance import (
    estimate_with_variance_loss,
    log10_total_variance,
)

__all__ = [
    "BERNOULLI",
    "CATEGORICAL",
    "GAUSSIAN",
    "BernoulliFamily",
    "CategoricalFamily",
    "DiscreteFamily",
    "GaussianFamily",
    "RebarControlVariate",
    "RelaxToyControlVariate",
    "bernoulli_conditional",
    "bernoulli_log_prob",
    "bernoulli_sample",
    "categorical_conditional",
    "categorical_log_prob",
    "categorical_sample",
    "categorical_score",
    "concrete",
    "conditional_gumbel_max",
    "estimate_with_variance_loss",
    "gaussian_log_prob",
    "gaussian_sample",
    "gumbel",
    "gumbel_max",
    "lax",
    "log10_total_variance",
    "rebar",
    "reinforce",
    "relax",
    "relax_from_values",
    "straight_through",
    "uniform_noise",
]
