"""The report's comparison statistics come from rliable (IQM with stratified bootstrap CIs,
probability of improvement, performance profiles) and bench/solve.py's tests from scipy."""

import importlib.util
import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from relax_rl import report
from relax_rl.plotting import plot_aggregates, plot_performance_profile


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    """500 bootstrap resamples in place of the reports' 2,000: every interval here is checked
    against rliable's at the same count, or by which side of a value it lies (by a margin far
    above the resampling noise), and the test suite stays fast."""
    monkeypatch.setattr(report, "BOOTSTRAP_REPS", 500)


ROOT = Path(__file__).resolve().parents[1]
# Eight runs: the IQM drops the two lowest and the two highest and averages 2, 4, 8, 16 -> 7.5
# (the median is 6, the mean 132.875: the outlier seed moves only the mean).
EIGHT = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 1000.0]


def _summaries(
    algo: str,
    returns: list[float],
    solved_at: list[int | None] | None = None,
    budget: int = 100_000,
):
    """Finished runs that each ran their whole ``budget`` of env steps (20 steps an episode)."""
    solved_at = solved_at or [None] * len(returns)
    return [
        {
            "algo": algo,
            "seed": seed,
            "status": "completed",
            "env_id": "CartPole-v1",
            "final_mean_return_100": ret,
            "solved_at_env_steps": at,
            "solved_at_episodes": None if at is None else at // 20,
            "total_env_steps": budget,
            "episodes": budget // 20,
            "env_steps_per_s": 1000.0,
        }
        for seed, (ret, at) in enumerate(zip(returns, solved_at, strict=True))
    ]


def test_iqm_is_the_mean_of_the_middle_half_with_rliable_bootstrap_ci():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    agg = report.aggregate(_summaries("a", EIGHT))["a"]
    assert np.random.rand() == expected_next  # the seeded bootstrap leaves others' draws alone
    iqm = agg["final_mean_return_100_iqm"]
    assert iqm["iqm"] == pytest.approx(7.5) and iqm["runs"] == 8
    assert agg["final_mean_return_100"]["median"] == pytest.approx(6.0)  # kept beside it
    low, high = iqm["ci"]
    assert low <= 7.5 <= high and low < high
    # the same interval as rliable's own stratified bootstrap with the report's settings
    np.random.seed(report.BOOTSTRAP_SEED)
    _, ci = rly.get_interval_estimates(
        {"a": np.asarray(EIGHT).reshape(-1, 1)},
        lambda s: np.array([metrics.aggregate_iqm(s)]),
        reps=report.BOOTSTRAP_REPS,
    )
    assert [low, high] == pytest.approx(ci["a"][:, 0].tolist())
    assert report.aggregate(_summaries("a", EIGHT))["a"]["final_mean_return_100_iqm"] == iqm


def test_steps_to_solve_counts_an_unsolved_run_at_its_budget():
    solved_at = [1000, 2000, None, 3000, None]
    agg = report.aggregate(_summaries("a", [1.0] * 5, solved_at))["a"]
    steps = agg["env_steps_to_solve_iqm"]
    # 1000, 2000, 3000, 100000, 100000: the IQM averages 2000, 3000 and one censored run
    assert steps["runs"] == 5 and steps["iqm"] == pytest.approx(35_000.0)
    assert steps["censored"] == 2 and steps["budget"] == 100_000
    assert steps["lower_bounds"] == ["iqm"]  # it rests on a censored run: at least that
    quartiles = agg["env_steps_to_solve"]
    assert quartiles["median"] == pytest.approx(3000.0) and quartiles["q3"] == 100_000
    assert quartiles["lower_bounds"] == ["q3"] and quartiles["censored"] == 2
    episodes = agg["episodes_to_solve"]  # censored at the episodes the run ran
    assert episodes["median"] == pytest.approx(150.0) and episodes["q3"] == 5000
    assert episodes["censored"] == 2 and episodes["lower_bounds"] == ["q3"]


def test_an_algo_solving_one_seed_fast_ranks_below_one_solving_every_seed(tmp_path):
    one = _summaries("one_fast", [1.0] * 5, [1000, None, None, None, None])
    every = _summaries("every_seed", [1.0] * 5, [20_000] * 5)
    agg = report.aggregate(one + every)
    fast, steady = agg["one_fast"], agg["every_seed"]
    assert steady["env_steps_to_solve_iqm"]["iqm"] < fast["env_steps_to_solve_iqm"]["iqm"]
    assert steady["env_steps_to_solve"]["median"] < fast["env_steps_to_solve"]["median"]
    assert fast["env_steps_to_solve_iqm"]["iqm"] == 100_000  # the middle runs never solved
    assert fast["env_steps_to_solve_iqm"]["lower_bounds"] == ["iqm"]
    assert fast["env_steps_to_solve_iqm"]["censored"] == 4
    assert steady["env_steps_to_solve_iqm"]["lower_bounds"] == []
    assert steady["env_steps_to_solve_iqm"]["censored"] == 0
    json.dumps(agg)
    report.write_report(tmp_path, one + every, agg)
    text = (tmp_path / "report.md").read_text()
    medians, rliable_part = text.split("## Aggregates (rliable)")
    assert "an unsolved one censored at its budget" in medians
    assert "| one_fast | 1/5 | ≥ 100,000 [≥ 100,000, ≥ 100,000] (4 censored at 100,000) |" in (
        medians
    )
    assert "| every_seed | 5/5 | 20,000 [20,000, 20,000] |" in medians
    header = "IQM env steps to solve, unsolved runs censored at the budget (100,000 env steps)"
    assert header in rliable_part and "solved seeds" not in text
    assert "| 1/5 | ≥ 100,000 [" in rliable_part and "(4 censored) |" in rliable_part
    assert "| 5/5 | 20,000 [20,000, 20,000] |" in rliable_part


def test_steps_to_solve_leaves_out_unfinished_runs_and_needs_a_threshold_and_a_budget():
    runs = _summaries("a", [1.0] * 3, [None, 500, None], budget=100_352)
    runs[1]["total_env_steps"] = 500  # stopped when solved: not its budget, and not used
    interrupted = {**runs[0], "status": "interrupted", "total_env_steps": 10}
    values, censored = report.steps_to_solve([*runs, interrupted])
    assert values.tolist() == [100_352, 500, 100_352]  # what the runs ran, not less
    assert censored.tolist() == [True, False, True]
    assert report.steps_to_solve([{**r, "threshold": None} for r in runs]) is None
    assert (
        report.steps_to_solve([{k: v for k, v in runs[0].items() if k != "total_env_steps"}])
        is None
    )
    assert report.steps_to_solve([interrupted]) is None


def test_probability_of_improvement_of_a_dominating_algo_is_one():
    summaries = _summaries("lo", [1.0, 2.0, 3.0, 4.0]) + _summaries("hi", [5.0, 6.0, 7.0])
    agg = report.aggregate(summaries)
    assert agg["hi"]["probability_of_improvement"]["lo"] == {
        "p": 1.0,
        "ci": [1.0, 1.0],
        "runs": [3, 4],
    }
    assert agg["lo"]["probability_of_improvement"]["hi"]["p"] == 0.0
    assert agg["lo"]["probability_of_improvement"]["hi"]["ci"] == [0.0, 0.0]


def test_probability_of_improvement_both_ways_is_rliables_and_sums_to_one():
    x, y = [1.0, 5.0, 3.0, 3.5], [2.0, 3.0, 4.0]
    agg = report.aggregate(_summaries("x", x) + _summaries("y", y))
    direct = metrics.probability_of_improvement(np.c_[x], np.c_[y])  # 6.5 of 12 pairs
    assert agg["x"]["probability_of_improvement"]["y"]["p"] == pytest.approx(direct)
    assert direct == pytest.approx(6.5 / 12)
    assert agg["y"]["probability_of_improvement"]["x"]["p"] == pytest.approx(1 - direct)
    lo, hi = agg["x"]["probability_of_improvement"]["y"]["ci"]
    assert agg["y"]["probability_of_improvement"]["x"]["ci"] == pytest.approx([1 - hi, 1 - lo])


def test_a_single_run_algo_gets_its_point_and_no_ci(tmp_path):
    summaries = _summaries("one", [7.0], [500]) + _summaries("many", [1.0, 2.0, 3.0])
    agg = report.aggregate(summaries)
    json.dumps(agg)  # summary.json takes it as it is
    assert agg["one"]["final_mean_return_100_iqm"] == {"iqm": 7.0, "ci": None, "runs": 1}
    assert agg["one"]["env_steps_to_solve_iqm"] == {
        "iqm": 500.0,
        "ci": None,
        "runs": 1,
        "censored": 0,
        "budget": None,
        "lower_bounds": [],
    }
    many = agg["many"]["env_steps_to_solve_iqm"]  # none solved: all three at the budget
    assert many["iqm"] == 100_000 and many["censored"] == 3 and many["lower_bounds"] == ["iqm"]
    poi = agg["one"]["probability_of_improvement"]["many"]
    assert poi == {"p": 1.0, "ci": None, "runs": [1, 3]}
    report.write_report(tmp_path, summaries, agg)
    text = (tmp_path / "report.md").read_text()
    assert "| one | 1 | 7.0 (no CI: 1 run) | 1/1 | 500 (no CI: 1 run) |" in text
    assert "| many | 3 | 2.0 [" in text
    scores = report.final_returns(summaries)
    taus, profiles, bands = report.performance_profile(scores)
    assert profiles["one"].shape == taus.shape and bands["many"].shape == (2, taus.size)
    assert profiles["many"][0] == 1.0 and profiles["many"][-1] == 0.0
    assert np.array_equal(bands["one"][0], profiles["one"])  # one run: no band
    plot_performance_profile(
        taus, profiles, bands, tmp_path / "pp.png", runs={"one": 1, "many": 3}, threshold=5.0
    )
    plot_aggregates(agg, tmp_path / "agg.png")
    for png in ("pp.png", "agg.png"):
        assert mpimg.imread(tmp_path / png).ndim == 3


def test_report_has_the_rliable_section(tmp_path):
    summaries = _summaries("a2c", EIGHT) + _summaries("relax", [x + 1 for x in EIGHT])
    report.write_report(tmp_path, summaries, report.aggregate(summaries))
    text = (tmp_path / "report.md").read_text()
    assert "| a2c | 0/8 |" in text  # the per-algo table of medians stays
    rliable_part = text.split("## Aggregates (rliable)")[1]
    assert "IQM: interquartile mean" in rliable_part
    assert "| a2c | 8 | 7.5 [" in rliable_part and "| relax | 8 | 8.5 [" in rliable_part
    assert "| P(row > column) | a2c | relax |" in rliable_part
    assert "| a2c | - | " in rliable_part and "| relax | " in rliable_part


def test_no_finished_run_gives_no_estimates_and_still_figures(tmp_path):
    summaries = [{"algo": "a2c", "seed": 0, "status": "failed", "error": "boom"}]
    agg = report.aggregate(summaries)["a2c"]
    assert agg["final_mean_return_100_iqm"] is None and agg["probability_of_improvement"] == {}
    taus, profiles, bands = report.performance_profile(report.final_returns(summaries))
    plot_performance_profile(taus, profiles, bands, tmp_path / "pp.png", runs={})
    plot_aggregates(report.aggregate(summaries), tmp_path / "agg.png")
    assert (tmp_path / "pp.png").exists() and (tmp_path / "agg.png").exists()


def _bench_solve():
    spec = importlib.util.spec_from_file_location("bench_solve", ROOT / "bench" / "solve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tests_are_scipys():
    solve = _bench_solve()
    assert solve.sign_test(4, 1) == pytest.approx(0.375)  # 2 * (1 + 5) / 32
    assert solve.sign_test(0, 0) == 1.0
    # exact: the 2 of the C(12, 6) = 924 arrangements as extreme as a complete separation
    a, b = [1.0, 2, 3, 4, 5, 6], [7.0, 8, 9, 10, 11, 12]
    assert solve.rank_sum_test(a, b) == pytest.approx(2 / 924)
    assert solve.rank_sum_test([math.inf] * 3, [math.inf] * 3) == 1.0  # never vs never


def test_bench_counts_an_unsolved_run_as_the_max_steps_budget(capsys):
    solve = _bench_solve()

    def runs(agent, solved_at):
        return [
            {
                "agent": agent,
                "seed": seed,
                "solved_at_env_steps": at,
                "solved_at_episodes": None if at is None else at // 20,
                "env_steps": 100_008 if at is None else at,  # a rollout past the budget
                "max_steps": 100_000,
                "episodes": 5000 if at is None else at // 20,
                "final_mean_return_100": 1.0,
            }
            for seed, at in enumerate(solved_at)
        ]

    results = runs("one_fast", [1000, None, None, None, None]) + runs("every", [20_000] * 5)
    budget = solve.step_budget(results)
    assert budget == 100_008  # never less than the steps an unsolved run was given
    values, censored = solve.to_solve(results[:5], "solved_at_env_steps", budget)
    assert values == [1000.0] + [100_008.0] * 4 and censored == [False] + [True] * 4
    assert solve._fmt_censored(values, censored) == ">= 100,008 (1,000 to >= 100,008)"
    assert solve._fmt_censored([20_000.0] * 2, [False] * 2) == "20,000 (20,000 to 20,000)"
    solve.compare(results, "one_fast", "every", budget)
    out = capsys.readouterr().out
    steps = out.split("episodes to solve")[0]
    assert "an unsolved run censored at its budget, 100,008 env steps" in steps
    assert "one_fast: 1/5 solved, 4 censored; IQM >= 100,008 [" in steps
    assert "every: 5/5 solved, 0 censored; IQM 20,000 [" in steps
    # every's runs all beat one_fast's censored ones: P = 0.8 * 1 + 0.2 * 0 = 0.8
    assert "P(every solves in fewer env steps than one_fast) = 0.80" in steps


def test_return_difference_is_the_difference_of_iqms_with_a_bootstrap_ci():
    x = [v + 10.0 for v in EIGHT]
    est = report.return_difference(x, EIGHT)
    assert est["point"] == pytest.approx(10.0) and est["runs"] == [8, 8]
    low, high = est["ci"]
    assert low < 10.0 < high  # the runs are unrelated draws: the CI does not know the shift
    assert report.return_difference(x, [1.0])["ci"] is None  # one run: no interval
    assert report.return_difference([], EIGHT) is None


def _steps(values, censored):
    return np.asarray(values, dtype=float), np.asarray(censored, dtype=bool)


def test_solve_ratio_says_which_side_its_censored_runs_bound():
    solved = _steps([100, 200, 300, 400], [False] * 4)
    # X's middle runs never solved (censored at 1,000): its IQM, so the ratio, is a lower bound
    slow = _steps([100, 1000, 1000, 400], [False, True, True, False])
    est = report.solve_ratio(slow, solved)
    assert est["point"] == pytest.approx(700 / 250) and est["bound"] == ">="
    assert report.solve_ratio(solved, slow)["bound"] == "<="
    assert report.solve_ratio(slow, slow)["bound"] == "?"
    assert report.solve_ratio(solved, solved)["bound"] is None
    # a censored run trimmed away by the IQM bounds nothing
    tail = _steps([100, 200, 300, 400, 5000], [False] * 4 + [True])
    assert report.solve_ratio(tail, solved)["bound"] is None


def test_solve_sooner_scores_censored_pairs_as_gehans_test():
    a = _steps([100, 300], [False, False])
    b = _steps([200, 250], [False, True])  # the second never solved within 250 steps
    # 100 < 200: A; 100 <= 250 (B unsolved by then): A; 300 > 200: B; 300 vs unsolved-at-250:
    # cannot be ordered, half
    assert report.solve_sooner_probability(a, b)["point"] == pytest.approx(2.5 / 4)
    assert report.solve_sooner_probability(b, a)["point"] == pytest.approx(1.5 / 4)
    both = _steps([500, 500], [True, True])
    assert report.solve_sooner_probability(both, both)["point"] == 0.5
    # without censoring it is rliable's probability of improvement on -steps (fewer is better)
    x, y = [120.0, 80.0, 300.0, 90.0], [100.0, 200.0, 150.0]
    direct = metrics.probability_of_improvement(-np.c_[x], -np.c_[y])
    est = report.solve_sooner_probability(_steps(x, [False] * 4), _steps(y, [False] * 3))
    assert est["point"] == pytest.approx(direct)


def test_seeds_needed_follows_the_power_formula_and_only_for_an_unresolved_difference():
    from scipy import stats

    est = {"point": 1.0, "ci": [-1.0, 3.0], "runs": [5, 5]}
    z, zp = stats.norm.ppf(0.975), stats.norm.ppf(report.POWER)
    sigma2 = (2.0 / z) ** 2 / 0.4
    assert report.seeds_needed(est, 0.0) == math.ceil(2 * sigma2 * (z + zp) ** 2)
    assert report.seeds_needed({**est, "ci": [0.2, 1.8]}, 0.0) is None  # resolved already
    assert report.seeds_needed({**est, "ci": None}, 0.0) is None
    assert report.seeds_needed({**est, "point": 0.0}, 0.0) == report.MAX_SEEDS_NEEDED + 1
    ratio = {"point": 2.0, "ci": [0.5, 8.0], "runs": [3, 3]}  # on the log scale: 1 and [-2, 3]
    assert report.seeds_needed(ratio, 1.0, log=True) > 3


def test_seeds_needed_gives_about_its_power_in_new_experiments(monkeypatch):
    """The promise behind the number: at the seeds it names, about POWER of new experiments'
    CIs exclude 0. Pilot: 6 runs per algo at the normal quantiles (a typical sample: effect 1,
    spread 2), unresolved; then 60 experiments of that many seeds drawn from the same normals
    (200 bootstrap resamples each, to keep the test cheap)."""
    from scipy import stats

    quantiles = 2.0 * stats.norm.ppf((np.arange(6) + 0.5) / 6)
    pilot = report.return_difference(1.0 + quantiles, quantiles)
    assert pilot["ci"][0] < 0 < pilot["ci"][1]
    n = report.seeds_needed(pilot, 0.0)
    assert 40 <= n <= 120  # 2 sigma^2 (1.96 + 0.84)^2 / 1 with sigma^2 ~ 4 x the IQM's ~1.2
    monkeypatch.setattr(report, "BOOTSTRAP_REPS", 200)
    rng = np.random.default_rng(0)
    resolved = [
        report.return_difference(rng.normal(1.0, 2.0, n), rng.normal(0.0, 2.0, n))["ci"][0] > 0
        for _ in range(60)
    ]
    assert 0.6 <= np.mean(resolved) <= 0.95  # POWER 0.8; binomial sd at 60 draws ~0.05


def test_until_solved_reports_solving_sooner_not_final_returns(tmp_path):
    fast = _summaries("fast", [200.0] * 4, [1000, 1200, 1100, 900])
    slow = _summaries("slow", [200.0, 200.0, 150.0, 200.0], [3000, 2500, None, 4000])
    runs = [{**s, "stop_when_solved": True} for s in fast + slow]
    agg = report.aggregate(runs)
    assert agg["fast"]["probability_of_improvement"] is None  # final returns sit at the threshold
    (diff,) = report.differences(runs)
    assert diff["return_difference"] is None
    assert diff["solve_sooner"]["point"] == 1.0 and diff["solve_ratio"]["point"] < 1.0
    report.write_report(tmp_path, runs, agg, diffs=[diff])
    text = (tmp_path / "report.md").read_text()
    assert "No probability of improvement on the final mean return" in text
    assert "| P(row > column) |" not in text
    row = next(line for line in text.splitlines() if line.startswith("| fast vs slow |"))
    assert row.endswith("| fast solves sooner |")
    assert "IQM final return X - Y" not in text


def test_report_names_what_a_difference_would_need(tmp_path):
    a = _summaries("a2c", [10.0, 30.0, 20.0, 50.0, 40.0])
    b = _summaries("relax", [12.0, 25.0, 48.0, 33.0, 70.0])
    runs = [{**s, "threshold": None} for s in a + b]
    report.write_report(tmp_path, runs, report.aggregate(runs))
    text = (tmp_path / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| a2c vs relax |"))
    assert "return: unresolved, ~" in row and "seeds per algo" in row
    assert "P(X solves sooner)" not in text  # no threshold: nothing to solve


def test_paired_reduction_is_over_runs_with_its_standard_error(tmp_path):
    from scipy import stats

    est = report.paired_reduction([0.1, 0.3, 0.5, None], measurements=120)
    se = 0.2 / math.sqrt(3)
    assert est["mean"] == pytest.approx(0.3) and est["se"] == pytest.approx(se)
    half = stats.t.ppf(0.975, 2) * se
    assert est["ci"] == pytest.approx([0.3 - half, 0.3 + half])
    assert est["runs"] == 3 and est["measurements"] == 120
    assert report.paired_reduction([0.4], 10)["ci"] is None
    assert report.paired_reduction([None], 0) is None
    runs = _summaries("relax", [1.0, 2.0, 3.0])
    for run, red in zip(runs, [0.1, 0.3, 0.5], strict=True):
        run.update(mean_grad_log10_var_reduction=red, grad_log10_var_reduction_measurements=40)
    agg = report.aggregate(runs)
    assert agg["relax"]["grad_log10_var_reduction_over_runs"] == est
    report.write_report(tmp_path, runs, agg)
    text = (tmp_path / "report.md").read_text()
    assert f"| relax | +0.30 ± {se:.2f} | [{0.3 - half:+.2f}, {0.3 + half:+.2f}] | 2.00x [" in text
    assert "| 3 | 120 |" in text
