"""RELAX's optimal kappa: cross-fitted over the envs (each env's kappa from all OTHER envs'
samples, shrunk by a jackknife over envs), with each fold's own standardisation of the
advantages under ``normalize_advantage``; from the running moments of earlier batches below
``MIN_CROSS_FIT_ENVS`` envs. And ``cv_scale_decay``'s scale from the advantages as the
estimator uses them."""

import numpy as np
import pytest
import torch as th
from conftest import run_updates

from relax_rl.agents import A2C, RELAX
from relax_rl.control_variate import OptimalKappa
from relax_rl.control_variate import cross_fitted_kappa as _cross_fitted_kappa
from relax_rl.envs import TOY_ENV_ID, make_env

TINY = {"net_arch": [8], "activation_fn": th.nn.Tanh}


def _fold_kappa(gh, hh, clusters, advantages=None):
    """One fold's kappa written out: the advantages standardised over the fold (as
    ``batch_advantages`` does), the ratio, and its positive-part James-Stein shrinkage by the
    jackknife over the fold's clusters (each left-out fold standardised anew)."""

    def ratio(keep):
        x = gh[keep]
        if advantages is not None:
            a = advantages[keep]
            x = x * ((a - a.mean()) / (a.std(ddof=1) + 1e-8) if a.size > 1 else a)
        return -x.sum() / hh[keep].sum()

    ids = np.unique(clusters)
    if ids.size < 2 or hh.sum() <= 0:
        return 0.0
    kappa = ratio(np.ones(gh.size, bool))
    loo = np.array([ratio(clusters != c) for c in ids])
    se2 = (ids.size - 1) / ids.size * ((loo - loo.mean()) ** 2).sum()
    return kappa * max(0.0, 1 - se2 / kappa**2)


@pytest.mark.parametrize("standardised", [False, True])
def test_each_envs_kappa_is_the_other_envs_shrunk_ratio(standardised):
    """Leave one env out: each env's samples get the kappa of all the other envs' samples,
    shrunk by the jackknife over those envs; with advantages, standardised by those envs'
    mean and std (the fold's, not the batch's)."""
    rng = np.random.default_rng(0)
    for n_envs, steps in [(4, 5), (3, 3), (2, 4), (9, 2)]:
        env = np.tile(np.arange(n_envs), steps)
        hh = rng.random(env.size)
        gh = -0.8 * hh + 0.3 * rng.normal(size=env.size)
        a = rng.normal(2.0, 3.0, size=env.size) if standardised else None
        if n_envs == 9:
            hh[env == 4] = 0.0  # an env without h
        kappa = _cross_fitted_kappa(gh, hh, env, env, a)
        for k in range(n_envs):
            other = env != k
            folds_a = None if a is None else a[other]
            expected = _fold_kappa(gh[other], hh[other], env[other], folds_a)
            assert np.allclose(kappa[env == k], expected, atol=1e-12), (n_envs, k)
        if n_envs == 2:  # one env behind each kappa: no jackknife, no kappa
            assert not kappa.any()


def _relax(n_envs, n_steps=4, seed=0, **kwargs):
    return RELAX(
        "MlpPolicy",
        make_env("CartPole-v1", n_envs, seed),
        n_steps=n_steps,
        seed=seed,
        policy_kwargs=TINY,
        **kwargs,
    )


@pytest.mark.parametrize("normalize_advantage", [False, True])
def test_an_envs_kappa_does_not_depend_on_its_own_samples(normalize_advantage):
    """Changing one env's advantages leaves that env's kappa as it was (it is a function of
    the other envs' samples only, also under normalize_advantage, where the batch's mean and
    std would carry them in) and moves the others' (whose fold it is in)."""
    model = _relax(8, n_steps=16, normalize_advantage=normalize_advantage)
    model.learn(2048)
    data = model.rollout_buffer.get_all()
    model.losses(data)
    before = model._kappa_terms[2].clone()
    mine = data.env_index == 0
    changed = data._replace(advantages=th.where(mine, 3 * data.advantages + 1, data.advantages))
    model.losses(changed)
    after = model._kappa_terms[2]
    assert before.abs().min() > 0  # the kappas are in use
    th.testing.assert_close(after[mine], before[mine], rtol=1e-6, atol=0)
    assert not th.allclose(after[~mine], before[~mine])


def test_few_envs_take_kappa_from_the_running_moments():
    """Below MIN_CROSS_FIT_ENVS envs the optimal kappa is the running moments' of earlier
    batches, one value for the whole batch; from there on, leave one env out."""
    few = _relax(OptimalKappa.MIN_CROSS_FIT_ENVS - 1)
    few.learn(320)
    cv = few.control_variate
    expected = float(-cv.kappa_rule.mean_gh / cv.kappa_rule.mean_hh)
    few.losses(few.rollout_buffer.get_all())
    kappa = few._kappa_terms[2]
    assert expected != 0
    th.testing.assert_close(kappa, th.full_like(kappa, expected))
    enough = _relax(OptimalKappa.MIN_CROSS_FIT_ENVS)
    enough.learn(320)
    data = enough.rollout_buffer.get_all()
    enough.losses(data)
    g, h, kappa = enough._kappa_terms
    gh = (g * h).double().sum(1).detach().numpy()
    hh = h.double().pow(2).sum(1).detach().numpy()
    env = data.env_index.numpy()
    expected = _cross_fitted_kappa(gh, hh, env, env)
    th.testing.assert_close(kappa, th.from_numpy(expected).float())
    assert len(set(expected.tolist())) > 1  # one kappa per env


def test_relax_adds_no_variance_with_few_envs():
    """3 envs x 3 steps on the toy bandit: RELAX's update gradient, after phi has trained
    (policy lr 0), is far less variable than A2C's on the very same batches (same seed, same
    policy and critic). Cross-fitted over halves (one env and a half each) it had about 5x
    A2C's variance here."""
    kw = dict(n_steps=3, gamma=1.0, ent_coef=0.0, max_grad_norm=None, learning_rate=0.0)
    env = lambda: make_env(TOY_ENV_ID, 3, 2, env_kwargs={"target": 0.2})  # noqa: E731
    relax = RELAX("MlpPolicy", env(), cv_learning_rate=3e-3, seed=2, policy_kwargs=TINY, **kw)
    with th.no_grad():  # away from uniform (as tests/test_rl_gradients.py's toy)
        relax.policy.action_net.bias.copy_(th.tensor([0.8, -0.8]))
    a2c = A2C("MlpPolicy", env(), seed=2, policy_kwargs=TINY, **kw)
    a2c.policy.load_state_dict(relax.policy.state_dict())
    n_phi, n = 400, 400
    g_relax, r_relax = run_updates(relax, n_phi + n)
    g_a2c, r_a2c = run_updates(a2c, n_phi + n)
    losses = [[r.get("train/value_loss") for r in records] for records in (r_relax, r_a2c)]
    assert losses[0] == losses[1]  # the very same batches
    ratio = float(g_relax[n_phi:].var(0).sum() / g_a2c[n_phi:].var(0).sum())
    assert ratio < 0.5, ratio


def test_scale_tracks_the_advantages_as_the_estimator_uses_them():
    """cv_scale_decay: c_hat's scale is the RMS of the advantages as f uses them, standardised
    under normalize_advantage (RMS about 1), not the raw ones."""
    model = _relax(4, cv_scale_decay=0.0, normalize_advantage=True)  # decay 0: the last batch's
    model.learn(64)
    data = model.rollout_buffer.get_all()
    used = model.batch_advantages(data).pow(2).mean().sqrt()
    raw = data.advantages.pow(2).mean().sqrt()
    assert abs(float(raw) - float(used)) > 0.1
    th.testing.assert_close(model.control_variate.scale, used)
