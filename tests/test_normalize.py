"""``normalize`` (SB3's VecNormalize, rl-zoo3's key): statistics saved beside every model,
restored by a continued run, frozen for evaluation and for the variance decomposition."""

import json

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecNormalize

from relax_rl.cli import main
from relax_rl.envs import make_env
from relax_rl.errors import UsageError
from relax_rl.evaluation import evaluate
from relax_rl.training import RunSpec, build, normalize_stats_path, train


class _StopAt:
    """Ctrl-C once the run has taken ``steps`` env steps (a plain SB3 callback)."""

    def __new__(cls, steps: int):
        from stable_baselines3.common.callbacks import BaseCallback

        class Stop(BaseCallback):
            def _on_step(self) -> bool:
                if self.num_timesteps >= steps:
                    raise KeyboardInterrupt
                return True

        return Stop()


def _spec(tmp_path, total=1600, callbacks=(), **settings):
    return RunSpec.create(
        "a2c",
        "Pendulum-v1",
        seed=1,
        out=tmp_path / "run",
        settings={
            "total_steps": total,
            "n_envs": 4,
            "checkpoint_freq": 400,
            "eval_episodes": 2,
            "normalize": True,
            "policy_kwargs": {"net_arch": [8]},
            **settings,
        },
        callbacks=callbacks,
    )


def test_statistics_beside_every_model_and_a_continued_run_starts_from_them(tmp_path):
    spec = _spec(tmp_path, total=1600, callbacks=[_StopAt(1000)])
    with pytest.raises(KeyboardInterrupt):
        train(spec)
    out = spec.out
    (interrupted,) = (out / "checkpoints").glob("model_interrupted_*_steps.zip")
    for model in [out / "model.zip", interrupted, *out.glob("checkpoints/model_[0-9]*.zip")]:
        assert normalize_stats_path(model).is_file(), model
    saved = VecNormalize.load(str(out / "vecnormalize.pkl"), build(spec)[1].venv)
    assert saved.obs_rms.count > 900  # it saw the run's observations
    assert saved.gamma == spec.agent_kwargs["gamma"] == 0.9  # the agent's (configs/)
    assert saved.norm_reward and saved.norm_obs  # SB3's defaults

    resumed = RunSpec.resume(out)
    model, env = build(resumed)
    restored = model.get_vec_normalize_env()
    assert restored is env and restored.training
    assert np.array_equal(restored.obs_rms.mean, saved.obs_rms.mean)
    assert restored.obs_rms.count == saved.obs_rms.count
    assert restored.ret_rms.var == pytest.approx(saved.ret_rms.var)
    summary = train(resumed, model, env)
    assert summary["status"] == "completed" and summary["total_env_steps"] >= 1600
    after = VecNormalize.load(str(out / "vecnormalize.pkl"), env.venv)
    assert after.obs_rms.count > saved.obs_rms.count  # went on from them, not from scratch


def test_a_continued_run_without_its_statistics_is_refused(tmp_path):
    spec = _spec(tmp_path, total=800)
    train(spec)
    (spec.out / "vecnormalize.pkl").unlink()
    with pytest.raises(ValueError, match=r"normalises its env but .*vecnormalize.pkl is missing"):
        build(RunSpec.resume(spec.out, more_steps=400))


def test_eval_runs_with_the_frozen_statistics(tmp_path, capsys):
    """train's own evaluation and ``relax-rl eval --seed`` agree (both normalise with the
    saved statistics, report the env's own returns); without the statistics eval refuses."""
    spec = _spec(tmp_path, total=800)
    summary = train(spec)
    trained = VecNormalize.load(str(spec.out / "vecnormalize.pkl"), build(spec)[1].venv)
    assert trained.obs_rms.count > 700
    assert main(["eval", str(spec.out), "--seed", str(spec.seed), "--episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"mean return {summary['eval_mean_return']:.2f}" in printed, (printed, summary)
    # Pendulum's returns are around -1000 in its own units, far from a normalised reward's
    assert summary["eval_mean_return"] < -100
    # and the policy acted on normalised observations: on raw ones it would act otherwise
    raw = evaluate(
        build(spec)[0].load(spec.out / "model.zip"), make_env("Pendulum-v1", 1, 10_001), 2
    )
    assert raw.mean != pytest.approx(summary["eval_mean_return"])
    (spec.out / "vecnormalize.pkl").unlink()
    assert main(["eval", str(spec.out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vecnormalize.pkl is missing" in err[0], err


def test_decomposition_sees_observations_and_rewards_as_the_update_does(tmp_path):
    from relax_rl.decomposition import _load, _obs_tensor, _reward

    spec = _spec(tmp_path, total=800, normalize_kwargs={"clip_obs": 5.0})
    train(spec)
    import yaml

    config = yaml.safe_load((spec.out / "config.yaml").read_text())
    model = _load(spec.algo_cls, spec.out / "model.zip", config)
    venv = model.get_vec_normalize_env()
    assert venv is not None and not venv.training and venv.clip_obs == 5.0
    obs = np.array([[1.0, 0.0, 3.0]])
    expected = np.clip((obs - venv.obs_rms.mean) / np.sqrt(venv.obs_rms.var + venv.epsilon), -5, 5)
    assert np.allclose(_obs_tensor(model, obs).numpy(), expected, atol=1e-6)
    scale = np.sqrt(venv.ret_rms.var + venv.epsilon)
    assert _reward(model, -2.0) == pytest.approx(max(-2.0 / scale, -venv.clip_reward))
    result = json.loads(json.dumps(_decompose(spec.out)))
    assert result["points"] and result["points"][0]["estimators"]


def _decompose(run_dir):
    from relax_rl.decomposition import decompose_run

    return decompose_run(run_dir, [1.0], n_states=4, repeats=2, seed=0)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"norm_obs": True, "gamma": 0.9}, "unknown normalize_kwargs key 'gamma'; valid: norm_obs"),
        ({"clip_obs": "wide"}, "normalize_kwargs.clip_obs='wide' has the wrong type"),
    ],
)
def test_bad_normalize_kwargs_refused_in_one_line(tmp_path, kwargs, needle):
    with pytest.raises(UsageError, match=needle) as err:
        _spec(tmp_path, normalize_kwargs=kwargs)
    assert "\n" not in str(err.value)
