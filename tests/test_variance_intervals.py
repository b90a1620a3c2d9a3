"""The variance decomposition's intervals: percentile bootstrap over the states, paired between
an agent's estimator and the plain one on the same samples, on synthetic per-sample gradients
whose terms are known."""

import numpy as np
import pytest
import torch as th

from relax_rl.cli.variance import format_decomposition
from relax_rl.decomposition import (
    BOOTSTRAP_RESAMPLES,
    Decomposition,
    _nested_anova,
    _StateStats,
)

P = 10  # parameters: each term is P x its per-coordinate variance


def _grads(rng, n, k=4, m=4, state=1.0, action=0.7, trajectory=0.5):
    """``(N, K, M, P)``: a state effect, an action effect within it, a continuation effect."""
    s = rng.normal(0, state, (n, 1, 1, P))
    a = rng.normal(0, action, (n, k, 1, P))
    e = rng.normal(0, trajectory, (n, k, m, P))
    return th.as_tensor(1.0 + s + a + e)


def _counts(n, seed):
    return np.random.default_rng([seed, 1]).multinomial(
        n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES
    )


def test_the_terms_are_unbiased_and_their_intervals_cover_them_at_32_states():
    """200 designs of 32 states: the mean estimate is within 3% of each true term, and each
    term's 95% interval holds it in at least 85% of the designs (measured: 90-96%)."""
    truth = {"state": P * 1.0, "action": P * 0.49, "trajectory": P * 0.25}
    rng = np.random.default_rng(0)
    estimates = {t: [] for t in truth}
    covered = dict.fromkeys(truth, 0)
    for r in range(200):
        d = _nested_anova("x", _StateStats.of(_grads(rng, 32)), _counts(32, r))
        for t, value in truth.items():
            estimates[t].append(getattr(d, t))
            low, high = d.intervals[t]
            covered[t] += low <= value <= high
    for t, value in truth.items():
        assert np.mean(estimates[t]) == pytest.approx(value, rel=0.03), t
        assert covered[t] >= 170, (t, covered[t])


def test_the_design_as_measured_is_the_all_ones_resample():
    """The point estimates are the classic nested-ANOVA ones (no bootstrap in them)."""
    grads = _grads(np.random.default_rng(1), 6, k=3, m=2).double()
    n, k, m, _ = grads.shape
    am, sm = grads.mean(2), grads.mean((1, 2))
    w_tau = float(((grads - am[:, :, None]) ** 2).sum((2, 3)).mean() / (m - 1))
    w_a = float(((am - sm[:, None]) ** 2).sum((1, 2)).mean() / (k - 1))
    w_s = float(((sm - sm.mean(0)) ** 2).sum() / (n - 1))
    d = _nested_anova("x", _StateStats.of(grads), _counts(n, 0))
    assert d.trajectory == pytest.approx(w_tau)
    assert d.action == pytest.approx(w_a - w_tau / m)
    assert d.state == pytest.approx(w_s - w_a / k)
    assert d.signal == pytest.approx(float(sm.mean(0).pow(2).sum()) - w_s / n)


def test_a_term_that_is_not_there_is_unresolved_and_never_a_negative_share():
    """No action effect: the action term comes out near 0, sometimes below; its interval
    reaches 0 (not resolved), its share is 0 or small and never negative, shares sum to 1."""
    rng = np.random.default_rng(2)
    negatives = 0
    for r in range(20):
        grads = _grads(rng, 16, action=0.0)
        d = _nested_anova("x", _StateStats.of(grads), _counts(16, r)).as_dict()
        assert not d["resolved_action"] and d["resolved_state"] and d["resolved_trajectory"]
        shares = [d[f"share_{t}"] for t in ("state", "action", "trajectory")]
        assert min(shares) >= 0 and sum(shares) == pytest.approx(1.0)
        negatives += d["action"] < 0
    assert negatives > 0  # (the case the clipping is for does occur)


def test_the_paired_ratio_resolves_a_reduction_the_separate_intervals_cannot():
    """Two estimators on the same samples, the second carrying extra action noise: the
    log10 ratio's paired interval lies below 0 while the two totals' intervals overlap."""
    from relax_rl.decomposition import paired_log10_ratio

    rng = np.random.default_rng(3)
    ours = _grads(rng, 16, action=0.3)
    plain = ours + th.as_tensor(rng.normal(0, 0.35, (16, 4, 1, P)))
    counts = _counts(16, 0)
    a = _nested_anova("ours", _StateStats.of(ours), counts)
    b = _nested_anova("plain", _StateStats.of(plain), counts)
    assert a.intervals["total"][1] > b.intervals["total"][0]  # separately: overlapping
    low, high = paired_log10_ratio(_StateStats.of(ours), _StateStats.of(plain), counts)
    assert low < np.log10(a.total / b.total) < high < 0


def test_the_printed_table_marks_unresolved_terms_and_shows_intervals():
    d = Decomposition("RELAX", 1.0, -0.01, 2.0, 16, 4, 4, 0.5)
    d.intervals = {"state": (0.5, 1.5), "action": (-0.1, 0.05), "trajectory": (1.5, 2.5),
                   "total": (2.5, 3.5)}  # fmt: skip
    d.log10_vs_paired, d.log10_vs_paired_interval = -0.4, (-0.6, -0.2)
    result = {"algo": "relax", "env_id": "E", "points": [
        {"env_steps": 100, "estimators": [d.as_dict()]}]}  # fmt: skip
    text = format_decomposition(result)
    assert "0.48 [0.40, 0.54]" in text  # log10 of 2.99 [2.5, 3.5]
    assert "0%?" in text and "-0.40 [-0.60, -0.20]" in text
    assert "not resolved at this design" in text
    assert "33%" in text and "67%" in text  # shares of the terms clipped at 0, never "-1%"


def test_the_window_is_the_continuation_length():
    """``window`` = the agent's n_steps is the default design; a shorter one measures the
    estimator of samples nearer their rollout's end (other numbers, the same states)."""
    from relax_rl.agents import ALGOS
    from relax_rl.decomposition import decompose
    from relax_rl.envs import CHAIN_ENV_ID, make_env

    model = ALGOS["a2c"]("MlpPolicy", make_env(CHAIN_ENV_ID, 4, 0), n_steps=3, seed=0,
                         policy_kwargs={"net_arch": [8]})  # fmt: skip
    default = decompose(model, CHAIN_ENV_ID, n_states=6, n_actions=2, n_continuations=2)[0]
    same = decompose(model, CHAIN_ENV_ID, n_states=6, n_actions=2, n_continuations=2, window=3)
    short = decompose(model, CHAIN_ENV_ID, n_states=6, n_actions=2, n_continuations=2, window=1)
    assert same[0].as_dict() == default.as_dict()
    assert short[0].total != default.total
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        decompose(model, CHAIN_ENV_ID, n_states=6, n_actions=2, n_continuations=2, window=0)
