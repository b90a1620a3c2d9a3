"""Where the policy gradient's variance comes from: the state, the action, or the rest of the
trajectory (Tucker et al. 2018, "The Mirage of Action-Dependent Baselines", Sec. 3).

For one sample of the update's estimator, ``g(s, a, tau)`` (a state from the on-policy state
distribution, an action drawn there, and the continuation the advantage is computed from), the
law of total variance splits ``Var(g)`` (the trace of its covariance, summed over the actor's
parameters: the project's one convention) into

- ``Sigma_s = Var_s(E[g | s])``: the state term;
- ``Sigma_a = E_s[Var_a(E[g | s, a])]``: the action term, the only one an action-dependent
  control variate such as RELAX's can reduce;
- ``Sigma_tau = E_{s,a}[Var_tau(g | s, a)]``: the trajectory term (later actions, the env's
  randomness).

Measured by a nested design at a fixed policy: ``N`` states from the policy's own episodes
(copies of the env at those moments), ``K`` actions per state (fresh noise, the agent's own
sampler), ``M`` continuations per action (the copy stepped with that action, then the policy,
the env's random number generator reseeded per continuation), and for each the per-sample
gradient of the agent's update (:meth:`~relax_rl.on_policy.GumbelOnPolicyAlgorithm.losses`:
its advantage estimator over the continuation, its control variate). The three terms come from
the nested (random-effects) ANOVA estimators, unbiased for each term:
``Sigma_tau = W_tau``, ``Sigma_a = W_a - W_tau / M``, ``Sigma_s = W_s - W_a / K``, with
``W_tau`` the mean within-action variance, ``W_a`` the mean variance of the action means within
a state and ``W_s`` the variance of the state means. Each term, the total and (for an agent with
a control variate) the log10 ratio of its total to the plain estimator's on the same samples
come with a 95% percentile-bootstrap interval over the states (resampled together for every
estimator: the ratio's interval is paired). A term near 0 can come out negative (estimation
noise): its interval then reaches 0, the design has not resolved it, and its share is 0.

Which envs: those whose state can be copied (:func:`copy_env`: ``copy.deepcopy`` of the env
object, plus MuJoCo's ``set_state``), checked by stepping a copy beside the original: pure
Python envs (the project's own: toy, Chain, bandits, MultiBinaryMatch, ParallelCartPole;
gymnasium's classic control: CartPole, Acrobot, MountainCar, Pendulum) and gymnasium's MuJoCo
envs. Box2D envs are refused in one line.

The advantage over a continuation is the agent's: with ``n_steps > 0``, the GAE(lambda) of an
``n_steps`` window starting at the state (the first step of a rollout; later steps of a rollout
bootstrap sooner), bootstrapped with V at the end and at time-limit truncations; with
``n_steps = 0``, the return to the end of the episode (minus V(s) with a baseline). A group
baseline (RLOO, GRPO) compares that return with ``group_size - 1`` partners of the sample's own
from the same state (fresh actions and continuations: :func:`_group_advantages`), so its
baseline's noise is part of the trajectory term.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th

from relax_rl.buffers import GumbelRolloutSamples, compute_gae
from relax_rl.envs import make_env, normalize_env
from relax_rl.envs.factory import build_env
from relax_rl.estimators import reinforce, uniform_noise
from relax_rl.groups import GroupRolloutMixin

if TYPE_CHECKING:
    from relax_rl.on_policy import GumbelOnPolicyAlgorithm

TERMS = ("state", "action", "trajectory")


#: bootstrap resamples of the states behind every interval, and the intervals' level
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
#: fewest states whose percentile intervals hold near their level: measured on synthetic
#: gradients with known terms (200 designs each, K = M = 4), the state term's 95% interval
#: covered 77% of the time at 8 states, 85% at 16, 90% at 32 and 92% at 64 (the action and
#: trajectory terms' 86-96% throughout); below it the variance command warns
MIN_STATES_FOR_INTERVALS = 32


@dataclass
class Decomposition:
    """The three terms (and their sum) of one estimator's variance, with the design's sizes
    and, for each, a percentile-bootstrap interval over the states (:func:`_nested_anova`)."""

    estimator: str
    state: float
    action: float
    trajectory: float
    n_states: int
    n_actions: int
    n_continuations: int
    #: ``||E g||^2``, the squared norm of the estimator's mean (unbiased: the grand mean's
    #: squared norm minus its variance); ``total / signal`` is the variance in units of the
    #: squared gradient, comparable between estimators that scale the gradient differently
    signal: float | None = None
    #: ``{"total" | term: (low, high)}`` at :data:`CONFIDENCE`
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: against the plain estimator on the same samples (an agent with a control variate):
    #: ``log10(total / plain total)`` and its interval over the same resamples (paired)
    log10_vs_paired: float | None = None
    log10_vs_paired_interval: tuple[float, float] | None = None

    @property
    def total(self) -> float:
        return self.state + self.action + self.trajectory

    def resolved(self, term: str) -> bool:
        """Whether the term's interval excludes 0 (a term whose interval reaches 0 is not
        resolved by the design: more states, or actions and continuations, would be)."""
        interval = self.intervals.get(term)
        return interval is None or interval[0] > 0

    def as_dict(self) -> dict[str, Any]:
        total = self.total
        # Shares of the terms clipped at 0: an estimate below 0 is a term the design did not
        # resolve (its interval says so), never a negative share.
        clipped = {t: max(getattr(self, t), 0.0) for t in TERMS}
        whole = sum(clipped.values())
        out: dict[str, Any] = {
            "estimator": self.estimator,
            "total": total,
            **{t: getattr(self, t) for t in TERMS},
            "n_states": self.n_states,
            "n_actions": self.n_actions,
            "n_continuations": self.n_continuations,
            "signal": self.signal,
            "confidence": CONFIDENCE,
            "log10_vs_paired": self.log10_vs_paired,
            "ci_log10_vs_paired": _listed(self.log10_vs_paired_interval),
        }
        out["log10_total"] = math.log10(total) if total > 0 else None
        out["ci_total"] = _listed(self.intervals.get("total"))
        for t in TERMS:  # shares of the total, log10 of the positive terms, intervals
            out[f"share_{t}"] = clipped[t] / whole if whole > 0 else None
            value = getattr(self, t)
            out[f"log10_{t}"] = math.log10(value) if value > 0 else None
            out[f"ci_{t}"] = _listed(self.intervals.get(t))
            out[f"resolved_{t}"] = self.resolved(t)
        return out


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def copy_env(env: gym.Env) -> gym.Env:
    """A copy of ``env`` in its current state: ``copy.deepcopy``, and for a MuJoCo env its
    positions and velocities set again with ``set_state`` (a deep copy of MuJoCo's data does
    not carry the simulator's state over: its copy steps elsewhere)."""
    clone = copy.deepcopy(env)
    inner, source = clone.unwrapped, env.unwrapped
    if hasattr(inner, "set_state") and hasattr(source, "data"):
        inner.set_state(source.data.qpos.copy(), source.data.qvel.copy())
    return clone


def check_copyable(
    env_id: str, env_kwargs: dict[str, Any] | None = None, discretize: int | None = None
) -> None:
    """Refuse, in one line, an env whose state cannot be copied, or whose copy does not step
    as the original does (checked on a few steps)."""
    env = build_env(env_id, env_kwargs, discretize)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        env.step(env.action_space.sample())
        clone = copy_env(env)
        for _ in range(3):
            action = env.action_space.sample()
            first, second = env.step(action), clone.step(action)
            if not (np.array_equal(first[0], second[0]) and first[1] == second[1]):
                raise ValueError("its copy steps elsewhere")
            if first[2] or first[3]:
                break
    except Exception as exc:  # e.g. Box2D's worlds: no deepcopy
        raise ValueError(
            f"{env_id}: its state cannot be copied ({type(exc).__name__}: {exc}), so the "
            "variance decomposition cannot restart it; supported: pure-Python envs (the "
            "project's own, gymnasium's classic control, SimpleSpread) and MuJoCo envs"
        ) from None
    finally:
        env.close()


def _state_pool(
    model: GumbelOnPolicyAlgorithm,
    env: gym.Env,
    n: int,
    rng: np.random.Generator,
    gen: th.Generator,
) -> list[tuple[gym.Env, np.ndarray]]:
    """``n`` states drawn uniformly from the policy's own episodes (whole episodes, until at
    least ``10 n`` states are visited): each a copy of the env at that moment and its
    observation. A visited state is copied with probability 1/4 (copies cost more than steps),
    and the ``n`` are drawn from the copies: a uniform draw from the visited states either
    way."""
    spec = model.policy.action_spec
    visited: list[tuple[gym.Env, np.ndarray]] = []
    steps = 0
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    while True:
        steps += 1
        if rng.random() < 0.25:
            visited.append((copy_env(env), obs))
        with th.no_grad():
            logits, _ = model.policy.logits_and_values(_obs_tensor(model, obs[None]))
            noise = spec.perturb(uniform_noise((1, spec.n_noise), gen).to(logits.device))
            action = spec.sample(logits, noise)[0][0].cpu().numpy()
        obs, _, terminated, truncated, _ = env.step(spec.to_env(action))
        if terminated or truncated:
            if steps >= 10 * n and len(visited) >= n:
                break
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
    picks = rng.choice(len(visited), size=n, replace=False)
    return [visited[i] for i in picks]


def _obs_tensor(model: GumbelOnPolicyAlgorithm, obs: np.ndarray) -> th.Tensor:
    """The observations as the policy sees them (a normalised run's: by its frozen statistics)."""
    venv = model.get_vec_normalize_env()
    if venv is not None:
        obs = venv.normalize_obs(np.asarray(obs))
    return th.as_tensor(np.asarray(obs, dtype=np.float32), device=model.device)


def _reward(model: GumbelOnPolicyAlgorithm, reward: float) -> float:
    """The reward as the update sees it (a normalised run's: scaled by its frozen statistics)."""
    venv = model.get_vec_normalize_env()
    return float(venv.normalize_reward(np.array([reward]))[0]) if venv is not None else reward


def _advantages(
    model: GumbelOnPolicyAlgorithm,
    starts: list[gym.Env],
    first_obs: np.ndarray,
    first_actions: np.ndarray,
    rng: np.random.Generator,
    gen: th.Generator,
    window: int,
) -> np.ndarray:
    """The agent's advantage estimate for each (state copy, first action), over one fresh
    continuation each, all stepped in lockstep."""
    n = len(starts)
    envs = [copy_env(e) for e in starts]
    for e in envs:  # independent randomness per continuation
        e.unwrapped.np_random = np.random.default_rng(int(rng.integers(2**63)))
    spec, gamma = model.policy.action_spec, model.gamma
    rewards = np.zeros((window, n))
    values = np.zeros((window + 1, n))  # V(s_t), and the bootstrap at the end
    alive = np.ones((window + 1, n), dtype=bool)  # step t taken (episode not over before it)
    obs, actions = first_obs, first_actions
    active = np.ones(n, dtype=bool)
    for t in range(window):
        with th.no_grad():
            logits, v = model.policy.logits_and_values(_obs_tensor(model, obs))
        values[t] = v.cpu().numpy() if model.use_baseline else 0.0
        if t > 0:
            noise = spec.perturb(uniform_noise((n, spec.n_noise), gen).to(logits.device))
            actions = spec.sample(logits, noise)[0].cpu().numpy()
        next_obs = np.array(obs, copy=True)
        for i in np.flatnonzero(active):
            o, r, terminated, truncated, _ = envs[i].step(spec.to_env(actions[i]))
            rewards[t, i] = _reward(model, float(r))
            if truncated and not terminated and model.use_baseline:
                with th.no_grad():  # the collect loop's rule at a time-limit cut
                    boot = model.policy.logits_and_values(_obs_tensor(model, o[None]))[1]
                rewards[t, i] += gamma * float(boot)
            if terminated or truncated:
                active[i] = False
            next_obs[i] = o
        alive[t + 1] = active
        obs = next_obs
        if not active.any():
            break
    if active.any() and model.use_baseline:  # the window's end: bootstrap
        with th.no_grad():
            last = model.policy.logits_and_values(_obs_tensor(model, obs))[1]
            values[window] = last.cpu().numpy()  # (on any device)
    # The project's one returns computation: an episode that ended after step t starts anew
    # at t + 1 (no bootstrap across it); the window's end bootstraps with V where alive.
    adv, _ = compute_gae(
        rewards,
        values[:window],
        (~alive[:window]).astype(np.float64),
        values[window] * active,
        (~active).astype(np.float64),
        gamma,
        model.gae_lambda,
    )
    return adv[0]


def _group_advantages(
    model: GroupRolloutMixin,
    pool: list[tuple[gym.Env, np.ndarray]],
    per_state: int,
    returns: np.ndarray,
    rng: np.random.Generator,
    gen: th.Generator,
    length: int,
) -> np.ndarray:
    """A group baseline's advantage for each sample: its return (``returns``, from its state
    on) against ``group_size - 1`` partners of its own, each a fresh action at the same state
    and a fresh continuation (independent of the sample and of other samples' partners), by the
    agent's ``group_advantage``. The group branches at the sample's state: at an episode's
    first step (and on one-step envs) exactly the agent's estimator; later in an episode the
    real members have shared only the start state, which this does not reproduce."""
    spec, device = model.policy.action_spec, model.device
    partners = model.group_size - 1
    rows = len(returns)  # per_state rows per state of the pool, in order
    states = [i for i in range(len(pool)) for _ in range(per_state * partners)]
    obs = np.stack([pool[i][1] for i in states])
    with th.no_grad():
        logits, _ = model.policy.logits_and_values(_obs_tensor(model, obs))
        noise = spec.perturb(uniform_noise((len(states), spec.n_noise), gen).to(device))
        actions = spec.sample(logits, noise)[0].cpu().numpy()
    partner = _advantages(model, [pool[i][0] for i in states], obs, actions, rng, gen, length)
    group = np.concatenate([returns[:, None], partner.reshape(rows, partners)], axis=1)
    group_t = th.as_tensor(group, dtype=th.float32)
    advantages = model.group_advantage(group_t, th.ones_like(group_t, dtype=th.bool))
    return advantages[:, 0].numpy()


class _Logits(th.nn.Module):
    """The policy's logits as a module whose ``policy`` parameters ``functional_call`` swaps."""

    def __init__(self, policy: th.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.policy.logits_and_values(obs)[0]


def _actor_jacobians(model: GumbelOnPolicyAlgorithm, obs: th.Tensor) -> th.Tensor:
    """``d logits / d theta_actor`` per state: ``(N, K, P)`` (``torch.func``: vectorised
    reverse passes)."""
    from torch.func import functional_call, jacrev, vmap

    policy = model.policy
    actor_ids = {id(p) for p in policy.actor_parameters()}
    params = {name: p.detach() for name, p in policy.named_parameters() if id(p) in actor_ids}
    module = _Logits(policy)

    def logits(theta: dict[str, th.Tensor], one_obs: th.Tensor) -> th.Tensor:
        swapped = {f"policy.{name}": value for name, value in theta.items()}
        return functional_call(module, swapped, (one_obs[None],), strict=False)[0]

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, obs)  # name -> (N, K, *shape)
    return th.cat([jac[name].flatten(2) for name in params], dim=2)


def _per_sample_gradients(
    model: GumbelOnPolicyAlgorithm,
    pool: list[tuple[gym.Env, np.ndarray]],
    k: int,
    m: int,
    rng: np.random.Generator,
    gen: th.Generator,
    length: int,
) -> dict[str, th.Tensor]:
    """Per estimator, the actor gradients ``(N, K, M, P)`` of the update's per-sample
    surrogate: ``K`` actions per state of ``pool``, ``M`` continuations per action."""
    spec, device = model.policy.action_spec, model.device
    n = len(pool)
    rows = n * k * m  # sample (i, j, c) at row (i * k + j) * m + c
    state_obs = _obs_tensor(model, np.stack([o for _, o in pool]))
    # K actions per state from fresh noise (u for the sample, v for RELAX's z~), shared by
    # the M continuations of that action
    u = uniform_noise((n * k, spec.n_noise), gen).to(device)
    v = uniform_noise((n * k, spec.n_noise), gen).to(device)
    g = spec.perturb(u)
    with th.no_grad():
        logits, v_s = model.policy.logits_and_values(state_obs.repeat_interleave(k, dim=0))
        # the collecting policy's (PPO: r = 1)
        actions, log_prob_dims = spec.sample(logits, g, per_dimension=True)
        log_probs = spec.sum_dimensions(log_prob_dims)
    adv = _advantages(
        model,
        [pool[i][0] for i in range(n) for _ in range(k * m)],
        np.stack([pool[i][1] for i in range(n) for _ in range(k * m)]),
        np.repeat(actions.cpu().numpy(), m, axis=0),
        rng,
        gen,
        length,
    )
    if isinstance(model, GroupRolloutMixin):
        adv = _group_advantages(model, pool, k * m, adv, rng, gen, length)
    expand = lambda x: x.repeat_interleave(m, dim=0)  # noqa: E731  (per action -> per row)
    advantages = th.as_tensor(adv, dtype=th.float32, device=device)
    # V(s) as the advantages were computed with (RELAX's cv_target=return puts it in c_hat)
    values = expand(v_s.reshape(-1)) if model.use_baseline else th.zeros(rows, device=device)
    data = GumbelRolloutSamples(
        observations=state_obs.repeat_interleave(k * m, dim=0),
        actions=expand(actions),
        values=values,
        log_probs=expand(log_probs),
        advantages=advantages,
        returns=advantages + values,
        noise_u=expand(u),
        noise_v=expand(v),
        # each action draw (with its continuations) its own group: RELAX's kappa for a draw is
        # cross-fitted from the other draws, independent of it
        env_index=th.arange(n * k, device=device).repeat_interleave(m),
        noise_g=expand(g),
        log_prob_dims=expand(log_prob_dims),
    )
    losses = model.losses(data)  # the update's own estimator, sample by sample
    estimators = {type(model).__name__: losses.per_sample_objective}
    if model.paired_baseline:
        plain = f"{model.paired_baseline_name} (same samples)"
        estimators[plain] = reinforce(-losses.advantages, losses.log_prob)
    jac = _actor_jacobians(model, state_obs)  # (N, K_logits, P)
    out = {}
    for name, per_sample in estimators.items():
        (logit_grads,) = th.autograd.grad(per_sample.sum(), losses.logits, retain_graph=True)
        grads = th.einsum("iak,ikp->iap", logit_grads.reshape(n, k * m, -1).detach(), jac)
        out[name] = grads.reshape(n, k, m, -1)
    return out


def _pool(
    model: GumbelOnPolicyAlgorithm,
    env_id: str,
    env_kwargs: dict[str, Any] | None,
    n: int,
    rng: np.random.Generator,
    gen: th.Generator,
    discretize: int | None = None,
) -> list[tuple[gym.Env, np.ndarray]]:
    env = build_env(env_id, env_kwargs, discretize)
    try:
        return _state_pool(model, env, n, rng, gen)
    finally:
        env.close()


def decompose(
    model: GumbelOnPolicyAlgorithm,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    n_states: int = 32,
    n_actions: int = 8,
    n_continuations: int = 8,
    seed: int = 0,
    max_steps: int = 1000,
    discretize: int | None = None,
    window: int | None = None,
) -> list[Decomposition]:
    """The decomposition of the update's estimator at ``model``'s current policy (and, for an
    agent with a control variate, of the plain advantage estimator on the very same samples).

    :param n_states: ``N``, states from the policy's episodes.
    :param n_actions: ``K``, actions per state (>= 2).
    :param n_continuations: ``M``, continuations per action (>= 2).
    :param seed: seed of the states, the noise and the continuations.
    :param max_steps: longest continuation of a whole-episode agent (``n_steps=0``).
    :param discretize: the run's ``discretize`` (its Box actions in bins).
    :param window: the continuation's length (default: an ``n_steps`` agent's ``n_steps``, a
        whole-episode agent's ``max_steps``): GAE over ``window`` steps is the estimator of a
        sample ``window`` steps before its rollout's end (a long rollout's later samples
        bootstrap sooner), so a short window measures those, at a fraction of the env steps.
    """
    if min(n_states, n_actions, n_continuations) < 2:
        raise ValueError("the nested design needs at least 2 states, actions and continuations")
    rng, gen = np.random.default_rng(seed), th.Generator().manual_seed(seed)
    pool = _pool(model, env_id, env_kwargs, n_states, rng, gen, discretize)
    length = _continuation_length(model, max_steps, window)
    grads = _per_sample_gradients(model, pool, n_actions, n_continuations, rng, gen, length)
    # one set of state resamples for every estimator: their intervals and ratio are paired
    counts = np.random.default_rng([seed, 1]).multinomial(
        n_states, np.full(n_states, 1.0 / n_states), size=BOOTSTRAP_RESAMPLES
    )
    stats = {name: _StateStats.of(g) for name, g in grads.items()}
    terms = [_nested_anova(name, st, counts) for name, st in stats.items()]
    if len(terms) == 2:  # the update's estimator and the plain one on the same samples
        ours, plain = terms
        if ours.total > 0 and plain.total > 0:
            ours.log10_vs_paired = math.log10(ours.total / plain.total)
            ours.log10_vs_paired_interval = paired_log10_ratio(
                stats[ours.estimator], stats[plain.estimator], counts
            )
    return terms


def paired_log10_ratio(
    ours: _StateStats, plain: _StateStats, counts: np.ndarray
) -> tuple[float, float] | None:
    """The interval of ``log10(total / plain total)`` for two estimators measured on the same
    samples, over the same resamples of the states (paired: the states' shared variation
    cancels, so a reduction can be resolved where the two totals' own intervals overlap)."""
    ratio = _resampled(ours, counts)[:, :3].sum(1) / _resampled(plain, counts)[:, :3].sum(1)
    return _percentiles(np.log10(ratio[ratio > 0]))


@dataclass
class _StateStats:
    """What the nested ANOVA needs of per-sample gradients ``(N, K, M, P)``, per state: the
    mean within-action variance and the variance of the action means (summed over the
    parameters), and the inner products of the state means. Any multiset of the states (a
    bootstrap resample) has its terms from these alone."""

    within: np.ndarray  # (N,)
    between: np.ndarray  # (N,)
    gram: np.ndarray  # (N, N)
    k: int
    m: int

    @classmethod
    def of(cls, grads: th.Tensor) -> _StateStats:
        grads = grads.double()
        _, k, m, _ = grads.shape
        action_means = grads.mean(2)  # (N, K, P)
        state_means = action_means.mean(1)  # (N, P)
        within = ((grads - action_means[:, :, None]) ** 2).sum((1, 2, 3)) / (k * (m - 1))
        between = ((action_means - state_means[:, None]) ** 2).sum((1, 2)) / (k - 1)
        gram = state_means @ state_means.T
        return cls(within.cpu().numpy(), between.cpu().numpy(), gram.cpu().numpy(), k, m)


def _resampled(stats: _StateStats, counts: np.ndarray) -> np.ndarray:
    """The terms ``(state, action, trajectory, signal)`` for each row of ``counts`` (how many
    times each state is drawn; all ones: the design as measured), ``(B, 4)``."""
    n = counts.shape[1]
    w_tau = counts @ stats.within / n
    w_a = counts @ stats.between / n
    # sum_i c_i ||m_i - mean||^2 / (n - 1), the mean being the resample's
    quad = np.einsum("bi,ij,bj->b", counts, stats.gram, counts)
    w_s = (counts @ np.diag(stats.gram) - quad / n) / (n - 1)
    # Var(grand mean) = Sigma_s / N + Sigma_a / (N K) + Sigma_tau / (N K M) = W_s / N
    signal = quad / n**2 - w_s / n
    return np.stack([w_s - w_a / stats.k, w_a - w_tau / stats.m, w_tau, signal], axis=1)


def _percentiles(values: np.ndarray) -> tuple[float, float] | None:
    if values.size == 0:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _continuation_length(model: GumbelOnPolicyAlgorithm, max_steps: int, window: int | None) -> int:
    """Steps of each continuation: ``window``, else the agent's ``n_steps`` window, else (a
    whole-episode agent) ``max_steps``."""
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        return window
    return model.n_steps if model.n_steps > 0 else max_steps


def _nested_anova(name: str, stats: _StateStats, counts: np.ndarray) -> Decomposition:
    """The three terms by the nested (random-effects) ANOVA estimators, each with a
    percentile-bootstrap interval over resamples of the states (``counts``: how many times
    each state is drawn in each resample)."""
    n = counts.shape[1]
    state, action, trajectory, signal = _resampled(stats, np.ones((1, n)))[0]
    boot = _resampled(stats, counts)
    intervals = {t: _percentiles(boot[:, i]) for i, t in enumerate(TERMS)}
    intervals["total"] = _percentiles(boot[:, :3].sum(1))
    return Decomposition(
        estimator=name,
        state=float(state),
        action=float(action),
        trajectory=float(trajectory),
        n_states=n,
        n_actions=stats.k,
        n_continuations=stats.m,
        signal=float(signal),
        intervals={t: v for t, v in intervals.items() if v is not None},
    )


def direct_variance(
    model: GumbelOnPolicyAlgorithm,
    env_id: str,
    n_samples: int,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    max_steps: int = 1000,
    discretize: int | None = None,
) -> float:
    """``Var(g)`` of the update's estimator measured directly, from ``n_samples`` independent
    (state, action, continuation) samples, each from its own state: what the three terms of
    :func:`decompose` add up to."""
    rng, gen = np.random.default_rng(seed), th.Generator().manual_seed(seed)
    pool = _pool(model, env_id, env_kwargs, n_samples, rng, gen, discretize)
    length = _continuation_length(model, max_steps, None)
    grads = _per_sample_gradients(model, pool, 1, 1, rng, gen, length)
    g = grads[type(model).__name__][:, 0, 0].double()
    return float(((g - g.mean(0)) ** 2).sum() / (n_samples - 1))


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The models a run folder holds, by env steps: its periodic checkpoints and, for a run that
    stopped, ``model.zip``."""
    import json

    found: dict[int, Path] = {}
    for path in (run_dir / "checkpoints").glob("model_*_steps.zip"):
        steps = path.stem.removesuffix("_steps").rpartition("_")[2]
        if steps.isdigit():
            found[int(steps)] = path
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("status", "running") != "running" and (run_dir / "model.zip").is_file():
        found[int(summary["total_env_steps"])] = run_dir / "model.zip"
    return sorted(found.items())


def pick_checkpoints(
    checkpoints: list[tuple[int, Path]], fractions: list[float]
) -> list[tuple[float, int, Path]]:
    """For each fraction of the run's last checkpoint's env steps, the nearest checkpoint (each
    checkpoint at most once)."""
    if not checkpoints:
        return []
    last = checkpoints[-1][0]
    out, used = [], set()
    for fraction in fractions:
        steps, path = min(checkpoints, key=lambda c: abs(c[0] - fraction * last))
        if steps not in used:
            used.add(steps)
            out.append((fraction, steps, path))
    return out


def _load(algo_cls: type, path: Path, config: dict[str, Any]) -> GumbelOnPolicyAlgorithm:
    """A checkpoint, with the VecNormalize statistics saved beside it (frozen) if the run
    normalised its env; ``ValueError`` naming a damaged one."""
    import pickle
    import zipfile

    try:
        return _load_checkpoint(algo_cls, path, config)
    except (zipfile.BadZipFile, KeyError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None
    except pickle.UnpicklingError as exc:
        raise ValueError(f"the statistics beside {path} are corrupt ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path} is corrupt or not {algo_cls.__name__}'s model ({exc})") from None


def _load_checkpoint(algo_cls: type, path: Path, config: dict[str, Any]) -> GumbelOnPolicyAlgorithm:
    if not config.get("normalize"):
        return algo_cls.load(path, device="cpu")
    from relax_rl.training import normalize_stats_path

    # the run's env as its agent takes it (group baselines: its envs in groups), then the
    # frozen statistics over it
    env = make_env(
        config["env_id"],
        config.get("n_envs", 1),
        env_kwargs=config.get("env_kwargs"),
        discretize=config.get("discretize"),
    )
    env = algo_cls.prepare_env(env, config.get("seed"), config)
    venv = normalize_env(env, stats=normalize_stats_path(path), training=False)
    return algo_cls.load(path, env=venv, device="cpu")


def decompose_run(
    run_dir: Path,
    fractions: list[float],
    n_states: int = 32,
    repeats: int = 8,
    seed: int = 0,
    window: int | None = None,
) -> dict[str, Any]:
    """The decomposition at the checkpoints of a run folder nearest to ``fractions`` of its
    length (``repeats`` actions per state and continuations per action), as written to
    ``variance.json``."""
    import yaml

    from relax_rl.agents import ALGOS

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    algo, env_id = config["algo"], config["env_id"]
    env_kwargs, discretize = config.get("env_kwargs"), config.get("discretize")
    check_copyable(env_id, env_kwargs, discretize)
    points = []
    for fraction, steps, path in pick_checkpoints(run_checkpoints(run_dir), fractions):
        model = _load(ALGOS[algo], path, config)
        terms = decompose(
            model,
            env_id,
            env_kwargs,
            n_states,
            repeats,
            repeats,
            seed,
            discretize=discretize,
            window=window,
        )
        points.append(
            {
                "fraction": fraction,
                "env_steps": steps,
                "checkpoint": str(path.relative_to(run_dir)),
                "estimators": [t.as_dict() for t in terms],
            }
        )
    return {
        "algo": algo,
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "discretize": discretize,
        "window": window,
        "points": points,
    }
