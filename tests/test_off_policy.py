"""PPO-family gradients OFF-policy, through the real update path (``train()``).

PPO reuses a rollout: from the second minibatch on, the policy being updated is not the one that
acted (ratio != 1, some samples held by the clip). Here the actor is moved between collection
and update (a callback shifts the action head's bias after the rollout's advantages are
computed, and back before the next rollout), so that the first and only epoch already runs at
``theta != theta_old``. Learning rate 0: every update is one draw of the estimator at the same
``(theta_old, theta)`` and the same critic, and the mean of many draws is compared with PPO's
clipped-surrogate gradient enumerated exactly over every context and action,

``E_old[grad pg_loss] = -grad_theta sum_c p(c) sum_b pi_old(b|c) min(r A, clip(r) A)``

(per dimension: ``sum_d min(r_d A, clip(r_d) A)``), with ``A = R(c, b) - V(c)``. Two moves: one
that keeps every ratio inside the clip range, one that holds part of the probability mass by
the clip ("mixed"). RELAX-PPO's correction has mean 0 only averaged over every action, so any
action-dependent factor on it (the clip indicator, a wrong ratio) shows up here as a bias.
For ``Box`` actions (LAX-PPO) the target is PPO's own estimate on the very same batches.
"""

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import assert_unbiased, held_bandit_agent, run_updates, spread_action_bias
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from relax_rl.agents import PPO, RELAXPPO
from relax_rl.envs import GAUSSIAN_BANDIT_ENV_ID, make_env

CLIP = 0.2
N_ENVS = 64  # many samples per update, few updates: the same power for less overhead
WARMUP, UPDATES = 60, 160  # phi's updates before the measured ones


class TableBandit(gym.Env):
    """Two one-hot contexts, any discrete action space, a fixed N(0, 1) reward per (context,
    action) that is not a sum over the action's dimensions."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)

    def __init__(self, space: str = "discrete") -> None:
        self.action_space = SPACES[space]
        self.actions = _enumerate(self.action_space)
        self.rewards = np.random.default_rng(11).standard_normal((2, len(self.actions)))
        self.context = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(2))
        return np.eye(2, dtype=np.float32)[self.context], {}

    def step(self, action):
        table = self.actions.reshape(len(self.actions), -1).numpy()
        row = np.flatnonzero((table == np.asarray(action).reshape(-1)).all(-1))
        reward = float(self.rewards[self.context, int(row[0])])
        return np.eye(2, dtype=np.float32)[self.context], reward, True, False, {}


SPACES = {
    "discrete": spaces.Discrete(5),
    "multibinary": spaces.MultiBinary(3),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
}
BANDIT_ID = "relax_rl_test/TableBandit-v0"
if BANDIT_ID not in gym.registry:
    gym.register(BANDIT_ID, entry_point=TableBandit)


def _enumerate(space) -> th.Tensor:
    """Every action of ``space`` as rows (``(n,)`` for Discrete, else ``(n, D)``)."""
    if isinstance(space, spaces.Discrete):
        return th.arange(int(space.n))
    sizes = [2] * int(space.n) if isinstance(space, spaces.MultiBinary) else list(space.nvec)
    return th.tensor(list(itertools.product(*[range(int(n)) for n in sizes])))


class MoveActor(BaseCallback):
    """Acts with ``theta_old``, updates at ``theta = theta_old + delta`` on the action head's
    bias: moved after each rollout (its advantages already computed), back before the next."""

    def __init__(self, delta: th.Tensor) -> None:
        super().__init__()
        self.delta = delta
        self.old: th.Tensor | None = None

    def _bias(self) -> th.Tensor:
        return self.model.policy.action_net.bias

    def _on_rollout_start(self) -> None:
        if self.old is None:
            self.old = self._bias().detach().clone()
        with th.no_grad():
            self._bias().copy_(self.old)

    def _on_rollout_end(self) -> None:
        with th.no_grad():
            self._bias().copy_(self.old + self.delta)

    def _on_step(self) -> bool:
        return True


def _agent(cls, env_id, seed=2, env_kwargs=None, **kwargs):
    """Policy held (lr 0), one epoch of one minibatch (the whole rollout), raw advantages, no
    gradient clipping and no entropy: each update is one draw of the estimator."""
    env = make_env(env_id, N_ENVS, seed, env_kwargs=env_kwargs)
    model = held_bandit_agent(
        cls,
        env,
        seed,
        batch_size=N_ENVS,
        n_epochs=1,
        normalize_advantage=False,
        clip_range=CLIP,
        **kwargs,
    )
    spread_action_bias(model)
    return model


def exact_clipped_gradient(model, space: str, delta: th.Tensor) -> tuple[th.Tensor, float]:
    """PPO's expected ``grad pg_loss`` at ``theta`` (the policy as it is now) for rollouts
    of :class:`TableBandit` over ``space`` collected at ``theta - delta`` (the action head's
    bias), and the probability mass the clip holds (of a (sample, dimension) term, per
    dimension)."""
    env = TableBandit(space)
    spec, actor = model.policy.action_spec, model.policy.actor_parameters()
    every = env.actions
    per_dimension = model.ratio == "per_dimension"
    objective, held = th.zeros(()), 0.0
    for c in range(2):
        obs = th.eye(2)[c : c + 1]
        logits, value = model.policy.logits_and_values(obs)
        logits = logits.expand(len(every), -1)
        old = (logits - delta).detach()  # the bias enters the logits additively
        advantage = th.tensor(env.rewards[c], dtype=th.float32) - value.detach()
        p_old = spec.log_prob(old, every).exp()
        if per_dimension:
            r = th.exp(
                spec.log_prob_per_dimension(logits, every) - spec.log_prob_per_dimension(old, every)
            )
            a = advantage.unsqueeze(-1)
        else:
            r, a = th.exp(spec.log_prob(logits, every) - spec.log_prob(old, every)), advantage
        clipped = th.min(r * a, th.clamp(r, 1 - CLIP, 1 + CLIP) * a)
        if per_dimension:
            clipped = clipped.sum(-1)
        objective = objective + 0.5 * (p_old * clipped).sum()
        with th.no_grad():
            hold = ((a > 0) & (r > 1 + CLIP)) | ((a < 0) & (r < 1 - CLIP))
            held += 0.5 * float((p_old * hold.float().reshape(len(every), -1).mean(-1)).sum())
    grads = th.autograd.grad(-objective, actor)
    return th.cat([g.reshape(-1) for g in grads]), held


# the action head's bias moves: a small one (every ratio inside [0.8, 1.2]) and a large one
MOVES = {
    "discrete": {"inside": [0.06, -0.04, 0.0, 0.03, -0.05], "mixed": [0.5, -0.4, 0.1, 0.3, -0.5]},
    "multibinary": {"inside": [0.05, -0.03, 0.04], "mixed": [0.6, -0.5, 0.3]},
    "multidiscrete": {
        "inside": [0.04, -0.03, 0.0, 0.03, -0.03],
        "mixed": [0.5, -0.4, 0.2, 0.4, -0.4],
    },
}
RELAX_PPO = {"cv_learning_rate": 3e-3, "cv_zero_init": False}
PER_DIMENSION_CV = {**RELAX_PPO, "cv_per_dimension": True}
CASES = [
    # (space, agent, kwargs): every PPO-family estimator on every discrete space
    ("discrete", PPO, {}),
    ("discrete", RELAXPPO, RELAX_PPO),
    ("discrete", RELAXPPO, {**RELAX_PPO, "cv_linear_term": True}),
    *[
        case
        for space in ("multibinary", "multidiscrete")
        for case in (
            (space, PPO, {}),
            (space, PPO, {"ratio": "per_dimension"}),
            (space, RELAXPPO, RELAX_PPO),
            (space, RELAXPPO, PER_DIMENSION_CV),
            (space, RELAXPPO, {**PER_DIMENSION_CV, "ratio": "per_dimension"}),
            (
                space,
                RELAXPPO,
                {**PER_DIMENSION_CV, "cv_logit_term": True, "cv_centred": True},
            ),
        )
    ],
]


def _case_id(case) -> str:
    space, cls, kwargs = case
    name = "ppo" if cls is PPO else "relax-ppo"
    if kwargs.get("cv_per_dimension"):
        name += "-cv-per-dim"
    if kwargs.get("cv_linear_term"):
        name += "-linear"
    if kwargs.get("cv_logit_term"):
        name += "-logit-centred"
    return f"{space}-{name}-{kwargs.get('ratio', 'joint')}-ratio"


# PPO's own estimate once (the mixed clip), every RELAX-PPO setting at both moves
RUNS = [(c, m) for c in CASES for m in ("inside", "mixed") if c[1] is RELAXPPO or m == "mixed"]


@pytest.mark.parametrize(("case", "move"), RUNS, ids=[f"{_case_id(c)}-{m}" for c, m in RUNS])
def test_clipped_surrogate_gradient_unbiased_off_policy(case, move):
    space, cls, kwargs = case
    model = _agent(cls, BANDIT_ID, env_kwargs={"space": space}, **kwargs)
    delta = th.tensor(MOVES[space][move])
    mover = MoveActor(delta)
    if cls is RELAXPPO:  # phi trained first, on off-policy batches (the policy does not move)
        run_updates(model, WARMUP, callback=mover)
        assert abs(model.control_variate.kappa.item()) > 0.05
    grads, _ = run_updates(model, UPDATES, callback=mover)
    with th.no_grad():
        model.policy.action_net.bias.copy_(mover.old + delta)  # theta, as train() saw it
    expected, held = exact_clipped_gradient(model, space, delta)
    if move == "inside":
        assert held == 0.0
    else:  # the clip holds part of the mass, not all of it
        assert 0.1 < held < 0.9, held
    assert_unbiased(grads, expected)


def test_ppo_family_off_policy_is_really_off_policy():
    """The harness moves the policy: the ratios of the update differ from 1."""
    model = _agent(PPO, BANDIT_ID, env_kwargs={"space": "discrete"})
    delta = th.tensor(MOVES["discrete"]["mixed"])
    _, records = run_updates(model, 3, callback=MoveActor(delta))
    assert all(r["train/clip_fraction"] > 0 for r in records if "train/clip_fraction" in r)


GAUSSIAN_MOVES = {"inside": [0.02, -0.02], "mixed": [0.4, -0.3]}


@pytest.mark.parametrize("move", ["inside", "mixed"])
def test_lax_ppo_off_policy_equals_ppo_in_the_mean(move):
    """LAX-PPO (RELAX-PPO on a Box action) and PPO on the very same batches (same seeds, the
    policy held and moved alike): the paired difference, LAX's correction at ratio != 1, has
    mean 0."""
    kwargs = {"env_kwargs": {"d": 2, "target": 0.5}}
    lax = _agent(RELAXPPO, GAUSSIAN_BANDIT_ENV_ID, **kwargs, **RELAX_PPO)
    ppo = _agent(PPO, GAUSSIAN_BANDIT_ENV_ID, **kwargs)
    ppo.policy.load_state_dict(lax.policy.state_dict())
    delta = th.tensor(GAUSSIAN_MOVES[move])
    lax_mover, ppo_mover = MoveActor(delta), MoveActor(delta)
    run_updates(lax, WARMUP, callback=lax_mover)
    assert abs(lax.control_variate.kappa.item()) > 0.05
    run_updates(ppo, WARMUP, callback=ppo_mover)  # the same batches from here on
    g_lax, _ = run_updates(lax, UPDATES, callback=lax_mover)
    g_ppo, records = run_updates(ppo, UPDATES, callback=ppo_mover)
    clipped = np.mean([r["train/clip_fraction"] for r in records if "train/clip_fraction" in r])
    assert (clipped == 0) if move == "inside" else (0.05 < clipped < 0.95), clipped
    difference = g_lax - g_ppo
    se = difference.std(0) / math.sqrt(len(difference))
    assert float(se.max()) > 1e-3, "the correction is 0: nothing is tested"
    z = difference.mean(0) / se.clamp_min(1e-12)
    assert z.abs().max() < 4.5, z


def test_relax_ppo_refuses_a_per_dimension_ratio_on_a_gaussian():
    with pytest.raises(ValueError, match="ratio='per_dimension' needs a control variate") as err:
        _agent(
            RELAXPPO,
            GAUSSIAN_BANDIT_ENV_ID,
            env_kwargs={"d": 2},
            ratio="per_dimension",
            cv_per_dimension=True,
        )
    assert "\n" not in str(err.value)
