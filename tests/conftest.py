import contextlib
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import torch
from stable_baselines3.common.logger import Logger

os.environ.setdefault("WANDB_MODE", "disabled")
# Small networks: one thread is faster than two contending ones, and the numbers repeat.
torch.set_num_threads(1)


#: tests that take 5 s or more (the 20 slowest `make test` prints): run first, so that the
#: end of a parallel run is short tests that balance over the workers, not one long test
#: keeping one worker busy while the others are idle (longest-processing-time-first)
SLOW_FIRST = (
    "test_compare.py::test_ray_backend_",
    "test_rl_gradients.py::test_relax_variants_unbiased_with_trained_control_variate",
    "test_toy.py::test_targets_on_a_shorter_run",
    "test_compare.py::test_tiny_compare_report_figures_and_resume",
    "test_compare.py::test_ctrl_c_stops_the_grid",
    "test_groups.py::test_decomposition_of_rloo",
    "test_video.py::test_eval_render_watches",
    "test_cli_train.py::test_a_module_env_id_from_the_current_folder",
    "test_compare.py::test_tracked_compare_puts_every_run",
    "test_readme.py::test_readme_example_runs",
    "test_tracking.py::test_offline_by_default",
    "test_tune.py::test_tune_writes_trials",
    "test_tune.py::test_options_the_fixed_settings_rule_out",
    "test_vae.py::test_short_training_improves_elbo",
    "test_groups.py::test_groups_over_subprocesses",
    "test_compare.py::test_sigterm_to_the_main_process",
    "test_factorised.py::test_decomposition_adds_up",
    "test_relax_kappa.py::test_relax_adds_no_variance_with_few_envs",
    "test_ppo.py::test_cli_compare_eval_plot_variance_with_ppo",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(name in item.nodeid for name in SLOW_FIRST))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Wait for ``ready()`` while ``proc`` runs (a wait, not a timing assertion: a loaded CI
    machine is slow); fail with the process's stderr if it ends first, or after 10 minutes.
    A wait that fails kills ``proc`` and the process group it leads: a failed test leaves no
    grid running behind it."""
    deadline = time.monotonic() + 600
    try:
        while not ready():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, f"{what}: not in 600 s"
            time.sleep(0.1)
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:  # (started with start_new_session=True)
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait(timeout=60)


#: agents with a group baseline: one whole episode per env per rollout (no ``n_steps``), no
#: critic (no ``use_baseline``), envs in groups
GROUP_AGENTS = ("grpo", "rloo")


def agent_kwargs(name: str, group_size: int = 2, **kwargs):
    """``kwargs`` for ``ALGOS[name]`` as a test parametrised over every agent gives them: a group
    agent drops ``n_steps`` and ``use_baseline`` and takes groups of ``group_size``."""
    if name in GROUP_AGENTS:
        kwargs.pop("n_steps", None)
        kwargs.pop("use_baseline", None)
        kwargs.setdefault("group_size", group_size)
    return kwargs


def run_updates(model, n_updates: int, callback=None) -> tuple[torch.Tensor, list[dict]]:
    """Drive the real update path (``learn()``: collect, then ``train()``) for ``n_updates``
    updates, with ``callback`` as ``learn`` takes it. Returns ``(n_updates, P)``: the actor
    gradient each update handed to the policy's optimizer (after clipping, as ``step()`` sees
    it), and per update the values it logged."""
    actor = model.policy.actor_parameters()
    grads: list[torch.Tensor] = []
    records: list[dict] = []
    pending: dict = {}

    def on_step(*_):
        flat = [torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in actor]
        grads.append(torch.cat(flat).detach().cpu().clone())
        records.append(dict(pending))
        pending.clear()

    class Recorder(Logger):
        def record(self, key, value, exclude=None):
            pending[key] = value
            super().record(key, value, exclude)

        def record_mean(self, key, value, exclude=None):
            pending[key] = value
            super().record_mean(key, value, exclude)

    model.set_logger(Recorder(folder=None, output_formats=[]))
    handle = model.policy.optimizer.register_step_pre_hook(on_step)
    try:
        for _ in range(n_updates):
            model.learn(1, reset_num_timesteps=False, callback=callback)  # one update
    finally:
        handle.remove()
    return torch.stack(grads), records


def assert_unbiased(estimates: torch.Tensor, expected: torch.Tensor) -> None:
    """The mean of ``estimates`` (one row per draw) is ``expected`` within 4.5 standard errors
    in every coordinate (~40 coordinates: 4.5 keeps the family-wise error tiny), and the test
    has the power to tell ``expected`` from zero somewhere."""
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    z = (estimates.mean(0) - expected) / se.clamp_min(1e-12)
    assert z.abs().max() < 4.5, z
    assert (expected.abs() > 4 * se).any(), "the test cannot tell the gradient from zero"


def held_bandit_agent(cls, env, seed: int, n_steps: int = 1, **kwargs):
    """An agent on a one-step bandit whose policy does not move (learning rate 0), without
    gradient clipping or entropy bonus, gamma 1, a tiny tanh network: each update's gradient
    is one draw of its batch estimator at a fixed policy. ``kwargs`` go to the agent."""
    return cls(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        gamma=1.0,
        ent_coef=0.0,
        max_grad_norm=None,
        learning_rate=0.0,
        seed=seed,
        policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.Tanh},
        **kwargs,
    )


def spread_action_bias(model, spread: float = 0.8) -> None:
    """Set the action head's bias evenly over ``[-spread, spread]``: a policy away from uniform,
    so that the gradient is large."""
    with torch.no_grad():
        bias = model.policy.action_net.bias
        bias.copy_(torch.linspace(-spread, spread, bias.numel()))


def compare_eval_plot(tmp_path, capsys, plain: str, corrected: str, settings: list[str]) -> None:
    """``compare`` (with the variance decomposition at the end), ``eval`` and ``plot`` through
    the CLI, on the agent ``plain`` and its control-variate version ``corrected``, one seed."""
    from relax_rl.cli import main

    grid = tmp_path / "grid"
    args = ["compare", "--algos", plain, corrected, *settings, "--seeds", "0", "--n-envs", "4"]
    assert main([*args, "--variance", "1", "--out", str(grid)]) == 0
    report = (grid / "report.md").read_text()
    paired = f"| {corrected} | {plain.upper()} (same samples) | 1 |"
    assert paired in report, report
    assert main(["eval", str(grid / f"{corrected}-s0"), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out
    assert main(["plot", str(grid), "--out", str(tmp_path / "plots")]) == 0
    summary = json.loads((grid / f"{plain}-s0" / "summary.json").read_text())
    assert summary["status"] == "completed"
