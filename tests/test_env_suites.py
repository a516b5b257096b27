"""Optional env suites: Atari (ALE, ``common/envs/atari.py``) and Meta-World
(``common/envs/metaworld_envs.py``). Each part skips when its package is missing (the ``dev``
extra installs both). The fast tests check ids, spaces, time limits and the one-line start-up
errors; the two ``slow`` ones train a few updates through ``deploy.train.run_training`` (the
real distributed path) and run the final evaluation: smoke tests, nothing about learning."""

from __future__ import annotations

import numpy as np
import pytest

from common.config_utils import ConfigError
from common.envs.config import EnvConfig
from common.envs.factory import env_spec, make_env
from deploy.config import compose, prepare


def _episode(env, max_steps: int = 100_000) -> tuple[int, bool, bool, dict]:
    """Random actions until the episode ends: (steps, terminated, truncated, last info)."""
    env.reset()
    for n in range(1, max_steps + 1):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            return n, terminated, truncated, info
    raise AssertionError("no episode end")


# -- Atari -----------------------------------------------------------------------------------


def test_ale_ids_import_ale_py_or_name_the_package(monkeypatch):
    from common.envs import atari

    monkeypatch.setattr(atari, "atari_installed", lambda: False)
    with pytest.raises(ConfigError, match="ale-py") as err:
        EnvConfig(id="ALE/Pong-v5").validate()
    assert err.value.field == "id"


def test_atari_time_limit_is_the_ales_frame_limit_in_agent_steps(caplog):
    pytest.importorskip("ale_py")
    caplog.set_level("INFO")
    spec = env_spec(EnvConfig(id="ALE/Pong-v5"))
    assert spec.max_episode_steps == 108_000 // 4  # v5: frameskip 4
    assert spec.obs["observation"].shape == (210, 160, 3) and spec.discrete
    assert "max_num_frames_per_episode (108000 frames, 4 per step)" in caplog.text
    # v4 ids: a random frameskip of 2 to 4, the smallest counts; the module prefix imports ale_py
    assert env_spec(EnvConfig(id="ale_py:Pong-v4")).max_episode_steps == 108_000 // 2


def test_atari_preprocessing_gives_84x84x1_frames_and_skips_4_frames_a_step():
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    cfg = EnvConfig(id="ALE/Pong-v5", atari_preprocessing=True)
    spec = env_spec(cfg)
    obs = spec.obs["observation"]
    assert obs.shape == (84, 84, 1) and obs.dtype == "uint8"  # an image for the CNN
    assert spec.max_episode_steps == 27_000  # frameskip=1 x the wrapper's 4: still 27,000
    env = make_env(EnvConfig(id="ALE/Pong-v5", atari_preprocessing=True, max_episode_steps=50))
    try:
        assert env.unwrapped._frameskip == 1  # the wrapper skips, not the ALE
        steps, terminated, truncated, _ = _episode(env)
        # the limit counts agent steps (outside the frame-skipping wrapper), not frames
        assert (steps, terminated, truncated) == (50, False, True)
        frames = env.unwrapped.ale.getEpisodeFrameNumber()
        assert 200 <= frames <= 200 + 30  # 4 a step, plus up to 30 no-ops at reset
        o, _ = env.reset()
        assert o["observation"].shape == (84, 84, 1) and o["observation"].dtype == np.uint8
    finally:
        env.close()


def test_atari_preprocessing_errors_are_one_line_config_errors(monkeypatch):
    pytest.importorskip("ale_py")
    from common.envs import atari

    with pytest.raises(ConfigError, match="not an ALE") as err:
        EnvConfig(id="CartPole-v1", atari_preprocessing=True).validate()
    assert err.value.field == "atari_preprocessing"
    with pytest.raises(ConfigError, match="frameskip=4 with atari_preprocessing") as err:
        env_spec(EnvConfig(id="ALE/Pong-v5", atari_preprocessing=True, kwargs={"frameskip": 4}))
    assert err.value.field == "kwargs"
    monkeypatch.setattr(atari, "cv2_installed", lambda: False)
    with pytest.raises(ConfigError, match="opencv") as err:
        EnvConfig(id="ALE/Pong-v5", atari_preprocessing=True).validate()
    assert err.value.field == "atari_preprocessing"


def test_full_atari_games_need_room_in_replay():
    """27,000-step games do not fit the default replay.max_traj_steps: one line at start-up;
    cut episodes (env.max_episode_steps) or raise the cap (experiment=atari_pong does)."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    with pytest.raises(ConfigError, match="27001 timesteps") as err:
        prepare(compose(["env.id=ALE/Pong-v5"]))
    assert err.value.field == "replay.max_traj_steps"
    cfg, spec, _ = prepare(compose(["env=atari", "env.max_episode_steps=200"]))
    assert spec.max_episode_steps == 200 and cfg.learner.max_seq_len == 64  # CPU window cap
    _, spec, _ = prepare(compose(["experiment=atari_pong"]))
    assert spec.max_episode_steps == 27_000


# -- Meta-World ------------------------------------------------------------------------------


def test_metaworld_ids_import_metaworld_or_name_the_package(monkeypatch):
    from common.envs import metaworld_envs

    monkeypatch.setattr(metaworld_envs, "metaworld_installed", lambda: False)
    with pytest.raises(ConfigError, match="'metaworld' is not installed") as err:
        EnvConfig(id="metaworld/ML1-reach-v3").validate()
    assert err.value.field == "id"


def test_metaworld_ml1_spaces_time_limit_and_hidden_goal(caplog):
    pytest.importorskip("metaworld")
    caplog.set_level("INFO")
    cfg = EnvConfig(id="metaworld/ML1-reach-v3")
    spec = env_spec(cfg)
    assert spec.max_episode_steps == 500 and "own max_path_length attribute" in caplog.text
    assert spec.obs["observation"].shape == (39,) and not spec.discrete and spec.action_dim == 4
    env = make_env(cfg, seed=0)
    try:
        o, _ = env.reset()
        assert np.all(o["observation"][-3:] == 0)  # ML: the goal is hidden
        steps, _, truncated, info = _episode(env)
        assert steps == 500 and truncated and "success" in info
    finally:
        env.close()
    mt = make_env(EnvConfig(id="metaworld/MT1-reach-v3"), seed=0)
    try:
        assert np.any(mt.reset()[0]["observation"][-3:] != 0)  # MT: the goal is shown
    finally:
        mt.close()


def test_metaworld_goals_are_tasks_a_trial_keeps():
    pytest.importorskip("metaworld")
    from common.envs.metaworld_envs import MetaWorld

    env = MetaWorld("ML1", "reach-v3")
    test = MetaWorld("ML1", "reach-v3", split="test")

    def goal(e) -> tuple:
        e.reset()
        return tuple(np.round(e._current._target_pos, 6))

    env.set_task(3)
    assert goal(env) == goal(env)  # pinned: every reset keeps it
    env.set_task(4)
    four = goal(env)
    env.set_task(3)
    assert four != goal(env)
    env.set_task(None)
    assert len({goal(env) for _ in range(6)}) > 1  # unpinned: one drawn per reset
    train_goals = {tuple(np.round(e, 6)) for e in _goals(env)}
    assert not train_goals & {tuple(np.round(e, 6)) for e in _goals(test)}
    # trials of 2 episodes: the factory accepts it (TaskSampler) and doubles the horizon
    trial = EnvConfig(id="metaworld/ML1-reach-v3", trial_episodes=2)
    assert env_spec(trial).max_episode_steps == 1000
    with pytest.raises(ConfigError, match="no test split") as err:
        env_spec(EnvConfig(id="metaworld/MT10", kwargs={"split": "test"}))
    assert err.value.field == "kwargs"


def _goals(env) -> list[np.ndarray]:
    out = []
    for i in range(len(env.tasks)):
        env.set_task(i)
        env.reset()
        out.append(env._current._target_pos.copy())
    return out


@pytest.mark.parametrize(
    "cfg,package",
    [
        (EnvConfig(id="ALE/Pong-v5", atari_preprocessing=True, max_episode_steps=50), "cv2"),
        (EnvConfig(id="metaworld/ML1-reach-v3"), "metaworld"),
    ],
    ids=["atari", "metaworld"],
)
def test_standardised_suite_envs_pass_gymnasium_checker(cfg, package):
    from gymnasium.utils.env_checker import check_env

    pytest.importorskip("ale_py" if package == "cv2" else package)
    pytest.importorskip(package)
    env = make_env(cfg, seed=0)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


# -- smoke training runs (slow) --------------------------------------------------------------

SMOKE = (
    "learner.max_seq_len=16",
    "learner.batch_size=4",
    "learner.model.d_model=32",
    "learner.model.d_ff=64",
    "learner.model.tstep_hidden=32",
    "learner.model.tstep_out=32",
    "learner.model.actor_hidden=32",
    "learner.model.critic_hidden=32",
    "actors.num_actors=1",
    "replay.rate_limit.min_size_steps=200",
    "run.max_updates=5",
    "run.max_env_steps=0",
    "run.eval_every_s=0",
    "run.final_eval_episodes=1",
    "run.max_seconds=240",
    "run.plot=false",
    "deploy.serve_metrics=false",
)


@pytest.fixture
def ray_session():
    import ray

    from common.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _smoke(tmp_path, *overrides: str) -> dict:
    from deploy.train import run_training

    summary = run_training(compose([*overrides, *SMOKE]), tmp_path)
    print({k: summary.get(k) for k in ("env_steps", "updates", "final_eval_return")})
    assert summary["updates"] >= 5
    assert np.isfinite(summary["final_eval_return"])
    return summary


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_atari_with_preprocessing_trains_and_evaluates(tmp_path, ray_session):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    summary = _smoke(tmp_path, "env=atari", "env.max_episode_steps=100")
    assert -100 <= summary["final_eval_return"] <= 100  # Pong: +-1 a point, 100 steps


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_metaworld_ml1_trains_and_evaluates(tmp_path, ray_session):
    pytest.importorskip("metaworld")
    summary = _smoke(tmp_path, "env=metaworld", "env.max_episode_steps=100")
    assert 0 <= summary["final_eval_return"] <= 10 * 100  # 0 to 10 a step
