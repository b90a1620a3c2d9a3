"""Group baselines (RLOO, GRPO): the group advantages, the envs in groups (one seed per group,
rounds of one episode per env), and the agents' gradients through the real update path
(``train()``, ``conftest.run_updates``) against exact ones:

- RLOO is unbiased: ``E[grad pg_loss] = -grad J`` on bandits of every action space (a
  Box included) and ``-grad J / 3`` on the 3-step chain, for per-step and whole-episode returns;
- Dr. GRPO (``scale_rewards="none"``) is RLOO scaled by ``(k - 1) / k``;
- the clipped update of GRPO, Dr. GRPO and RLOO off-policy (the actor moved between collection
  and update, the clip holding part of the mass) equals the clipped surrogate's gradient
  enumerated over every action of every member of a group; GRPO's std scaling is not a multiple
  of the true gradient (its bias, stated in its docs).
"""

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import assert_unbiased, run_updates, spread_action_bias
from stable_baselines3.common.vec_env import VecNormalize
from test_off_policy import BANDIT_ID, CLIP, MOVES, MoveActor, TableBandit
from test_rl_gradients import exact_gradient

from relax_rl.agents import GRPO, RLOO
from relax_rl.envs import (
    CHAIN_ENV_ID,
    GAUSSIAN_BANDIT_ENV_ID,
    MATCH_ENV_ID,
    make_env,
)
from relax_rl.estimators import group_advantages
from relax_rl.groups import GROUP_WAITING, GroupVecEnv, group_env

TINY = {"net_arch": [8], "activation_fn": th.nn.Tanh}
K, N_GROUPS = 4, 16  # 64 samples per update
UPDATES = 160


# ---------------------------------------------------------------- the advantages
def test_leave_one_out_and_group_mean_advantages():
    r = th.tensor([[1.0, 2.0, 4.0, 9.0], [3.0, 3.0, 3.0, 3.0]])
    loo = group_advantages(r, "loo")
    expected = th.stack([r[:, i] - (r.sum(-1) - r[:, i]) / 3 for i in range(4)], -1)
    th.testing.assert_close(loo, expected)
    th.testing.assert_close(group_advantages(r, "mean"), loo * 3 / 4)
    grpo = group_advantages(r, "mean", "group", eps=0.0)
    th.testing.assert_close(grpo[0], (r[0] - r[0].mean()) / r[0].std())
    assert th.equal(grpo[1], th.zeros(4))  # all equal: 0, not 0/0
    batch = group_advantages(r, "mean", "batch", eps=0.0)
    th.testing.assert_close(batch, (r - r.mean(-1, keepdim=True)) / r.std())


def test_batch_scale_takes_only_valid_entries():
    r = th.tensor([[1.0, 3.0], [0.0, 0.0]])
    valid = th.tensor([[True, True], [False, False]])
    out = group_advantages(r, "mean", "batch", eps=0.0, valid=valid)
    th.testing.assert_close(out[0], th.tensor([-1.0, 1.0]) / th.tensor([1.0, 3.0]).std())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"baseline": "median"}, "unknown baseline 'median'; valid: loo, mean"),
        ({"scale": "std"}, "unknown scale 'std'; valid: none, group, batch"),
    ],
)
def test_bad_group_options_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        group_advantages(th.zeros(2, 3), **kwargs)
    with pytest.raises(ValueError, match="groups of >= 2 samples"):
        group_advantages(th.zeros(2, 1))


# ---------------------------------------------------------------- the envs in groups
def test_groups_share_their_start_and_play_rounds():
    """CartPole in 2 groups of 3: members of a group start alike, groups differ; an env whose
    episode ended waits (reward 0, done, flagged) until every env has ended its episode; then
    a new round from new seeds."""
    env = GroupVecEnv(make_env("CartPole-v1", 6, 0), 3, seed=1)
    obs = env.reset()
    assert np.array_equal(obs[0], obs[1]) and np.array_equal(obs[0], obs[2])
    assert not np.array_equal(obs[0], obs[3])
    first_seeds = env.group_seeds.copy()
    lengths = np.zeros(6, int)
    ended = np.zeros(6, bool)
    rng = np.random.default_rng(0)
    for _ in range(600):
        obs, rewards, dones, infos = env.step(rng.integers(0, 2, 6))
        waiting = np.array([info.get(GROUP_WAITING, False) for info in infos])
        assert np.array_equal(waiting, ended)  # exactly the envs whose episode had ended
        assert (rewards[waiting] == 0).all() and dones[waiting].all()
        lengths += ~waiting
        ended |= dones
        if ended.all():
            break
    assert ended.all() and env.at_round_start
    assert len(set(lengths)) > 1  # the members' episodes differ in length
    assert not np.array_equal(env.group_seeds, first_seeds)
    assert np.array_equal(obs[3], obs[4]) and np.array_equal(obs[3], obs[5])


def test_groups_over_subprocesses():
    """The same rounds over SubprocVecEnv (a group reset is one call per group)."""
    env = GroupVecEnv(make_env("CartPole-v1", 4, 0, vec_env="subproc"), 2, seed=3)
    try:
        obs = env.reset()
        assert np.array_equal(obs[0], obs[1]) and not np.array_equal(obs[0], obs[2])
        ended, waited = np.zeros(4, bool), False
        rng = np.random.default_rng(0)
        while not ended.all():
            obs, _, dones, infos = env.step(rng.integers(0, 2, 4))
            waited |= any(info.get(GROUP_WAITING, False) for info in infos)
            ended |= dones
        assert waited  # some env waited for its group
        assert env.at_round_start and np.array_equal(obs[2], obs[3])
    finally:
        env.close()


class _IgnoresSeed(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.random.random(2).astype(np.float32), {}  # the global generator: no seed

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, True, False, {}


IGNORES_SEED_ID = "relax_rl_test/IgnoresSeed-v0"
if IGNORES_SEED_ID not in gym.registry:
    gym.register(IGNORES_SEED_ID, entry_point=_IgnoresSeed)


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: RLOO("MlpPolicy", make_env(IGNORES_SEED_ID, 4, 0)), "ignores the seed"),
        (lambda: RLOO("MlpPolicy", make_env("CartPole-v1", 6, 0), group_size=4), "multiple"),
        (lambda: GRPO("MlpPolicy", make_env("CartPole-v1", 4, 0), group_size=1), ">= 2"),
        (
            lambda: RLOO("MlpPolicy", VecNormalize(make_env("CartPole-v1", 4, 0))),
            r"VecNormalize\(GroupVecEnv\(venv, 4\)\)",
        ),
        (lambda: RLOO("MlpPolicy", gym.make("CartPole-v1")), "got one env: give n_envs"),
        (lambda: GRPO("MlpPolicy", "CartPole-v1", scale_rewards="std"), "unknown scale_rewards"),
        (lambda: RLOO("MlpPolicy", "CartPole-v1", returns="all"), "unknown returns 'all'"),
        (lambda: GRPO("MlpPolicy", "CartPole-v1", kl_coef=-1.0), "kl_coef must be >= 0"),
    ],
    ids=[
        "ignores-seed",
        "not-a-multiple",
        "group-of-1",
        "normalized-first",
        "one-env",
        "scale",
        "returns",
        "kl",
    ],
)
def test_bad_group_settings_are_refused_in_one_line(build, needle):
    with pytest.raises(ValueError, match=needle) as err:
        RLOO.learn(build(), 8) if needle == "ignores the seed" else build()
    assert "\n" not in str(err.value)


def test_envpool_is_refused_in_one_line():
    pytest.importorskip("envpool")
    with pytest.raises(ValueError, match="use vec_env dummy or subproc") as err:
        RLOO("MlpPolicy", make_env("CartPole-v1", 4, 0, vec_env="envpool"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_a_rollout_is_one_round_and_counts_only_running_steps(cls):
    model = cls(
        "MlpPolicy", make_env("CartPole-v1", 4, 0), group_size=2, seed=0, policy_kwargs=TINY
    )
    model.learn(1)  # one rollout
    buffer = model.rollout_buffer
    lengths = buffer.running[: buffer.pos].sum(0)
    episodes = sorted(int(e["l"]) for e in model.ep_info_buffer)
    assert sorted(lengths.tolist()) == episodes and len(episodes) == 4
    assert model.num_timesteps == lengths.sum() == buffer.get_all().observations.shape[0]
    assert buffer.pos == max(episodes)
    obs = buffer.observations[0]
    assert np.array_equal(obs[0], obs[1]) and np.array_equal(obs[2], obs[3])


def test_group_seeds_follow_the_agent_seed():
    def seeds(seed):
        model = RLOO("MlpPolicy", make_env("CartPole-v1", 4, 123), group_size=2, seed=seed)
        model.learn(1)
        return model.rollout_buffer.observations[0].copy()

    assert np.array_equal(seeds(3), seeds(3))
    assert not np.array_equal(seeds(3), seeds(4))  # whatever make_env's own seed was


# ---------------------------------------------------------------- unbiasedness, through train()
def _agent(cls, env_id, k=K, n_groups=N_GROUPS, seed=2, env_kwargs=None, **kwargs):
    """Policy held (lr 0), one step on the whole rollout, no gradient clip, no entropy bonus,
    gamma 1: each update is one draw of the estimator."""
    kwargs.setdefault("n_epochs", 1)
    kwargs.setdefault("batch_size", None)
    model = cls(
        "MlpPolicy",
        make_env(env_id, k * n_groups, seed, env_kwargs=env_kwargs),
        group_size=k,
        gamma=1.0,
        ent_coef=0.0,
        max_grad_norm=None,
        learning_rate=0.0,
        clip_range=CLIP,
        seed=seed,
        policy_kwargs=TINY,
        **kwargs,
    )
    spread_action_bias(model)
    return model


def _bandit_gradient(model, space: str) -> th.Tensor:
    """``-grad J`` of :class:`TableBandit` over ``space`` (contexts equally likely)."""
    env = TableBandit(space)
    spec, actor = model.policy.action_spec, model.policy.actor_parameters()
    j = th.zeros(())
    for c in range(2):
        logits, _ = model.policy.logits_and_values(th.eye(2)[c : c + 1])
        p = spec.log_prob(logits.expand(len(env.actions), -1), env.actions).exp()
        j = j + 0.5 * (p * th.tensor(env.rewards[c], dtype=th.float32)).sum()
    return -th.cat([g.reshape(-1) for g in th.autograd.grad(j, actor)])


@pytest.mark.parametrize("space", ["discrete", "multibinary", "multidiscrete"])
def test_rloo_unbiased_on_every_discrete_space(space):
    model = _agent(RLOO, BANDIT_ID, env_kwargs={"space": space})
    grads, _ = run_updates(model, UPDATES)
    assert_unbiased(grads, _bandit_gradient(model, space))


@pytest.mark.parametrize("returns", ["to_go", "episode"])
def test_rloo_unbiased_over_several_steps(returns):
    """The 3-step chain (8 action sequences): per-step and whole-episode returns."""
    model = _agent(RLOO, CHAIN_ENV_ID, returns=returns)
    with th.no_grad():
        model.policy.action_net.bias.copy_(th.tensor([0.8, -0.8]))
    grads, _ = run_updates(model, UPDATES)
    assert_unbiased(grads, exact_gradient(model, CHAIN_ENV_ID))


def test_rloo_unbiased_on_a_gaussian_bandit():
    d, target = 2, 0.5
    model = _agent(RLOO, GAUSSIAN_BANDIT_ENV_ID, env_kwargs={"d": d, "target": target})
    with th.no_grad():
        model.policy.log_std.fill_(math.log(0.7))
    grads, _ = run_updates(model, UPDATES)
    logits, _ = model.policy.logits_and_values(th.ones(1, 1))
    mean, log_std = logits[0, :d], logits[0, d:]
    j = -((mean - target) ** 2).sum() - (2 * log_std).exp().sum()
    expected = -th.cat(
        [g.reshape(-1) for g in th.autograd.grad(j, model.policy.actor_parameters())]
    )
    assert_unbiased(grads, expected)


@pytest.mark.parametrize("k", [2, 4])
def test_dr_grpo_is_rloo_scaled_by_k_minus_1_over_k(k):
    model = _agent(
        GRPO,
        BANDIT_ID,
        k=k,
        n_groups=64 // k,
        env_kwargs={"space": "discrete"},
        scale_rewards="none",
    )
    grads, _ = run_updates(model, UPDATES)
    assert_unbiased(grads, _bandit_gradient(model, "discrete") * (k - 1) / k)


def exact_group_clipped_gradient(
    model, space, delta, k, scale, baseline="mean"
) -> tuple[th.Tensor, float]:
    """GRPO's expected ``grad pg_loss`` at ``theta`` for groups of ``k`` collected at
    ``theta - delta`` (the action head's bias), enumerated over every action of every member:
    ``-grad sum_c p(c) sum_{b_1..b_k} prod_i pi_old(b_i|c) (1/k) sum_i min(r_i A_i,
    clip(r_i) A_i)``, ``A`` the group advantage of the members' rewards; and the probability
    mass the clip holds."""
    env = TableBandit(space)
    spec, actor = model.policy.action_spec, model.policy.actor_parameters()
    n = len(env.actions)
    tuples = th.tensor(list(itertools.product(range(n), repeat=k)))  # (n^k, k)
    objective, held = th.zeros(()), 0.0
    for c in range(2):
        logits, _ = model.policy.logits_and_values(th.eye(2)[c : c + 1])
        logits = logits.expand(n, -1)
        old = (logits - delta).detach()
        p_old = spec.log_prob(old, env.actions).exp().detach()
        r = th.exp(spec.log_prob(logits, env.actions) - spec.log_prob(old, env.actions))
        rewards = th.tensor(env.rewards[c], dtype=th.float32)[tuples]
        a = group_advantages(rewards, baseline, scale, eps=getattr(model, "scale_eps", 0.0))
        rt = r[tuples]
        clipped = th.min(rt * a, th.clamp(rt, 1 - CLIP, 1 + CLIP) * a).mean(-1)
        weight = p_old[tuples].prod(-1)
        objective = objective + 0.5 * (weight * clipped).sum()
        with th.no_grad():
            hold = ((a > 0) & (rt > 1 + CLIP)) | ((a < 0) & (rt < 1 - CLIP))
            held += 0.5 * float((weight * hold.float().mean(-1)).sum())
    grads = th.autograd.grad(-objective, actor)
    return th.cat([g.reshape(-1) for g in grads]), held


OFF_POLICY = {
    "grpo": (GRPO, {"scale_rewards": "group"}, "mean", "group"),
    "dr-grpo": (GRPO, {"scale_rewards": "none"}, "mean", "none"),
    "rloo": (RLOO, {}, "loo", "none"),
}


@pytest.mark.parametrize("name", list(OFF_POLICY))
def test_clipped_group_update_off_policy_equals_its_enumerated_surrogate(name):
    """The policy moved between collection and update (the clip holding part of the mass):
    the mean of ``train()``'s gradient is the clipped surrogate's, enumerated over every action
    of every member of a group of 3."""
    cls, kwargs, baseline, scale = OFF_POLICY[name]
    k = 3
    model = _agent(cls, BANDIT_ID, k=k, n_groups=22, env_kwargs={"space": "discrete"}, **kwargs)
    delta = th.tensor(MOVES["discrete"]["mixed"])
    mover = MoveActor(delta)
    grads, records = run_updates(model, UPDATES, callback=mover)
    assert np.mean([r["train/clip_fraction"] for r in records if "train/clip_fraction" in r]) > 0
    with th.no_grad():
        model.policy.action_net.bias.copy_(mover.old + delta)
    expected, held = exact_group_clipped_gradient(model, "discrete", delta, k, scale, baseline)
    assert 0.1 < held < 0.9, held
    assert_unbiased(grads, expected)


def test_grpo_std_scaling_is_not_a_multiple_of_the_gradient():
    """What GRPO's docs state, on the bandit: its expected estimate (enumerated, at ratio 1) is
    not parallel to the true gradient (Dr. GRPO's is: (k - 1) / k of it)."""
    model = _agent(GRPO, BANDIT_ID, k=3, n_groups=2, env_kwargs={"space": "discrete"})
    true = _bandit_gradient(model, "discrete")
    zero = th.zeros(5)
    grpo, _ = exact_group_clipped_gradient(model, "discrete", zero, 3, "group")
    dr, _ = exact_group_clipped_gradient(model, "discrete", zero, 3, "none")
    th.testing.assert_close(dr, true * 2 / 3)
    cosine = float(th.nn.functional.cosine_similarity(grpo, true, dim=0))
    assert cosine < 0.999, cosine


# ---------------------------------------------------------------- zero-std groups
class _ConstantBandit(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action):
        return np.ones(1, np.float32), 1.0, True, False, {}


CONSTANT_ID = "relax_rl_test/ConstantBandit-v0"
if CONSTANT_ID not in gym.registry:
    gym.register(CONSTANT_ID, entry_point=_ConstantBandit)


def test_zero_std_groups_give_zero_and_are_logged():
    """Every group's rewards equal: advantage 0, gradient 0 (no NaN even with eps 0)."""
    model = _agent(GRPO, CONSTANT_ID, k=4, n_groups=4, scale_rewards="group", scale_eps=0.0)
    grads, records = run_updates(model, 3)
    assert th.equal(grads, th.zeros_like(grads))
    assert all(r["train/zero_std_group_fraction"] == 1.0 for r in records)


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_zero_std_group_fraction_is_the_share_of_equal_groups(cls):
    model = _agent(cls, BANDIT_ID, k=2, n_groups=32, env_kwargs={"space": "discrete"})
    _, records = run_updates(model, 1)
    returns = model.rollout_buffer.returns[0].reshape(32, 2)
    share = float((returns[:, 0] == returns[:, 1]).mean())
    assert 0 < share < 1
    assert records[0]["train/zero_std_group_fraction"] == share


# ---------------------------------------------------------------- every action space, KL
@pytest.mark.parametrize("cls", [RLOO, GRPO])
@pytest.mark.parametrize(
    ("env_id", "env_kwargs"),
    [
        ("CartPole-v1", None),
        (MATCH_ENV_ID, {"d": 8}),
        (BANDIT_ID, {"space": "multidiscrete"}),
        ("Pendulum-v1", None),
    ],
    ids=["discrete", "multibinary", "multidiscrete", "box"],
)
def test_trains_on_every_action_space(cls, env_id, env_kwargs):
    model = cls(
        "MlpPolicy",
        make_env(env_id, 4, 0, env_kwargs=env_kwargs),
        group_size=2,
        seed=0,
        policy_kwargs=TINY,
        max_episode_steps=200,
    )
    before = th.cat([p.detach().clone().reshape(-1) for p in model.policy.actor_parameters()])
    model.learn(300)
    after = th.cat([p.detach().reshape(-1) for p in model.policy.actor_parameters()])
    assert th.isfinite(after).all() and not th.equal(before, after)


def test_grpo_kl_penalty_to_its_reference_policy(tmp_path):
    model = GRPO(
        "MlpPolicy",
        make_env(BANDIT_ID, 8, 0, env_kwargs={"space": "discrete"}),
        group_size=4,
        kl_coef=0.5,
        learning_rate=3e-2,
        n_epochs=4,
        batch_size=None,
        seed=0,
        policy_kwargs=TINY,
    )
    initial = {k: v.clone() for k, v in model.policy.state_dict().items()}
    _, records = run_updates(model, 5)
    kls = [r["train/kl_ref"] for r in records if "train/kl_ref" in r]
    assert kls and kls[-1] > 0  # the policy has moved away from its reference
    reference = model.reference_policy.state_dict()
    assert all(th.equal(reference[k], v) for k, v in initial.items())  # the initial policy
    model.save(tmp_path / "m")
    loaded = GRPO.load(tmp_path / "m")
    assert all(th.equal(loaded.reference_policy.state_dict()[k], v) for k, v in initial.items())
    model.ref_update_interval = 1
    run_updates(model, 1)
    now = model.policy.state_dict()
    assert all(th.equal(model.reference_policy.state_dict()[k], now[k]) for k in now)


def test_group_env_keeps_an_env_already_in_groups():
    venv = GroupVecEnv(make_env("CartPole-v1", 4, 0), 2)
    assert group_env(venv, 2) is venv
    with pytest.raises(ValueError, match="in groups of 2, the agent's group_size is 4"):
        group_env(venv, 4)


# ---------------------------------------------------------------- the variance decomposition
def test_decomposition_of_rloo_adds_up_with_the_baseline_noise_in_the_trajectory_term():
    """On a one-step bandit without reward noise, RLOO's per-sample gradient still varies for a
    fixed (state, action): its baseline is made of partners' fresh samples. The nested design
    puts that in the trajectory term, and its three terms add up to the directly measured
    variance."""
    from relax_rl.decomposition import decompose, direct_variance

    model = RLOO(
        "MlpPolicy", make_env(MATCH_ENV_ID, 4, 0, env_kwargs={"d": 6}), seed=0, policy_kwargs=TINY
    )
    spread_action_bias(model)
    totals = [decompose(model, MATCH_ENV_ID, {"d": 6}, 24, 4, 4, seed=s)[0] for s in range(6)]
    assert all(t.estimator == "RLOO" and t.trajectory > 0 and t.action > 0 for t in totals)
    summed = np.array([t.total for t in totals])
    direct = np.array(
        [direct_variance(model, MATCH_ENV_ID, 400, {"d": 6}, seed=100 + s) for s in range(3)]
    )
    se = math.sqrt(summed.var(ddof=1) / len(summed) + direct.var(ddof=1) / len(direct))
    assert abs(summed.mean() - direct.mean()) < 4 * se + 0.02 * direct.mean(), (summed, direct)


# ---------------------------------------------------------------- the CLI
def test_cli_train_resume_compare_eval_plot_params(tmp_path, capsys):
    """``train`` (the summary's ``solved_at_env_steps`` as for every agent), a continued run,
    ``compare`` with the variance decomposition, ``eval``, ``plot`` and ``params``."""
    import json

    from relax_rl.cli import main

    env = ["--env", MATCH_ENV_ID, "--set", "env_kwargs.d=6", "--seed", "0"]
    run = tmp_path / "run"
    args = ["train", "--algo", "rloo", *env, "--total-steps", "400", "--n-envs", "8"]
    assert main([*args, "--checkpoint-freq", "200", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and "solved_at_env_steps" in summary
    assert main(["train", "--resume", str(run), "--total-steps", "200"]) == 0
    assert json.loads((run / "summary.json").read_text())["total_env_steps"] >= 600
    grid = tmp_path / "grid"
    args = ["compare", "--algos", "rloo", "grpo", "--env", MATCH_ENV_ID, "--seeds", "0"]
    args += ["--set", "env_kwargs.d=6", "--n-envs", "8", "--total-steps", "400"]
    assert main([*args, "--variance", "1", "--out", str(grid)]) == 0
    report = (grid / "report.md").read_text()
    assert "| rloo | RLOO | 1 |" in report and "| grpo | GRPO | 1 |" in report, report
    assert main(["eval", str(grid / "grpo-s0"), "--episodes", "2"]) == 0
    assert main(["plot", str(grid), "--out", str(tmp_path / "plots")]) == 0
    capsys.readouterr()
    assert main(["params", "--algo", "grpo", "--env", MATCH_ENV_ID]) == 0
    out = capsys.readouterr().out
    assert "scale_rewards" in out and "Dr. GRPO" in out
    # a setting every run of a grid would fail on is refused before any run starts
    bad = tmp_path / "bad"
    args = ["compare", "--algos", "a2c", "rloo", "--env", MATCH_ENV_ID, "--seeds", "0"]
    assert main([*args, "--n-envs", "6", "--out", str(bad)]) == 2
    assert "not a multiple of group_size=4" in capsys.readouterr().err
    assert not bad.exists()


def test_grpo_batch_scale_with_per_step_returns_trains():
    """``scale_rewards="batch"`` with ``returns="to_go"``: the rollout's std of the valid
    returns-to-go, one factor per rollout."""
    model = GRPO(
        "MlpPolicy",
        make_env("CartPole-v1", 4, 0),
        group_size=2,
        scale_rewards="batch",
        returns="to_go",
        learning_rate=1e-2,
        seed=0,
        policy_kwargs=TINY,
    )
    _, records = run_updates(model, 3)
    buffer = model.rollout_buffer
    valid = buffer.running[: buffer.pos]
    returns = th.from_numpy(buffer.returns[: buffer.pos])
    centred = returns.reshape(buffer.pos, 2, 2) - returns.reshape(buffer.pos, 2, 2).mean(-1, True)
    expected = centred.reshape(buffer.pos, 4) / (returns[th.from_numpy(valid)].std() + 1e-4)
    th.testing.assert_close(
        th.from_numpy(buffer.advantages[: buffer.pos])[th.from_numpy(valid)],
        expected[th.from_numpy(valid)],
    )
    assert all("train/zero_std_group_fraction" in r for r in records)
