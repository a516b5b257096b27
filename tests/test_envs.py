"""Built-in tasks, the env factory, the standardising wrapper and meta-RL trials."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from common.codec import decode, encode, validate
from common.config_utils import ConfigError, prefixed
from common.envs import EnvConfig, env_spec, make_env, popgym_envs, rollout
from common.envs.api import INFO_EPISODE_START, OBS_EPISODE_START
from common.envs.bandit import MetaBandit
from common.envs.goal_grid import GoalGrid, make_goal_grid
from common.envs.key_door import MOVES as KD_MOVES
from common.envs.key_door import DarkKeyToDoor
from common.envs.point_goal import PointGoal
from common.envs.tmaze import TMaze

BUILTIN_CFGS = [
    EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": 6}),
    EnvConfig(id="amago/MetaBandit-v0", trial_episodes=20),
    EnvConfig(id="amago/DarkKeyToDoor-v0", trial_episodes=3),
    EnvConfig(id="amago/GoalGrid-v0"),
    EnvConfig(id="amago/PointGoal-v0", trial_episodes=2),
]
GYM_CFGS = [
    EnvConfig(id="CartPole-v1"),
    EnvConfig(id="Pendulum-v1"),
    EnvConfig(id="FrozenLake-v1"),
    EnvConfig(id="Blackjack-v1", max_episode_steps=10),  # Tuple obs, no limit of its own
]
ALL_CFGS = BUILTIN_CFGS + GYM_CFGS


def _random_policy(env: gym.Env):
    return lambda obs, info: env.action_space.sample()


# --------------------------------------------------------------------------------------------
# sanity of every env
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [TMaze, MetaBandit, DarkKeyToDoor, GoalGrid, PointGoal], ids=lambda c: c.__name__
)
def test_builtin_base_envs_pass_gymnasium_checker(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(make(), skip_render_check=True)


@pytest.mark.parametrize("cfg", ALL_CFGS, ids=lambda c: c.id)
def test_standardised_envs_pass_gymnasium_checker(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        warnings.filterwarnings("ignore", message=".*infinity.*")  # CartPole's own bounds
        check_env(make_env(cfg, seed=3), skip_render_check=True)


@pytest.mark.parametrize("cfg", ALL_CFGS, ids=lambda c: c.id)
def test_env_spec_matches_env_and_rollouts(cfg):
    spec = env_spec(cfg)
    env = make_env(cfg, seed=5)
    assert set(spec.obs) == set(env.observation_space.spaces)
    for key, arr_spec in spec.obs.items():
        space = env.observation_space[key]
        assert isinstance(space, gym.spaces.Box)
        assert space.shape == arr_spec.shape and space.dtype.name == arr_spec.dtype
        assert arr_spec.dtype in ("float32", "uint8")
    if spec.discrete:
        assert env.action_space == gym.spaces.Discrete(spec.action_dim)
    else:
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (spec.action_dim,), np.float32)
    for _ in range(3):
        traj = rollout(env, spec, _random_policy(env), env_id=cfg.id)
        assert 2 <= len(traj) <= spec.max_episode_steps + 1
        assert traj.terminated[-1] or traj.truncated[-1]
        assert not (traj.terminated[:-1].any() or traj.truncated[:-1].any())
        for key, arr in traj.obs.items():
            assert arr.shape[1:] == spec.obs[key].shape and arr.dtype.name == spec.obs[key].dtype
            assert all(env.observation_space[key].contains(o) for o in arr)
        for key, arr in traj.extras.items():
            assert arr.shape[1:] == spec.extras[key].shape
            assert arr.dtype.name == spec.extras[key].dtype
        assert traj.meta.episode_starts[0] == 0
        validate(traj)
        assert len(decode(encode(traj))) == len(traj)


@pytest.mark.parametrize("cfg", BUILTIN_CFGS + [GYM_CFGS[0]], ids=lambda c: c.id)
def test_same_seed_same_rollouts_and_other_seed_differs(cfg):
    def trajs(seed):
        env = make_env(cfg, seed=seed)
        spec = env_spec(cfg)
        rng = np.random.default_rng(0)
        if spec.discrete:
            policy = lambda obs, info: int(rng.integers(spec.action_dim))  # noqa: E731
        else:
            policy = lambda obs, info: rng.uniform(-1, 1, spec.action_dim).astype(np.float32)  # noqa: E731
        return [rollout(env, spec, policy) for _ in range(4)]

    a, b, c = trajs(11), trajs(11), trajs(12)
    for x, y in zip(a, b):
        assert x.arrays().keys() == y.arrays().keys()
        assert all(np.array_equal(x.arrays()[k], y.arrays()[k]) for k in x.arrays())
    differs = any(
        len(x) != len(z)
        or not np.array_equal(x.obs["observation"], z.obs["observation"])
        or not np.array_equal(x.prev_reward, z.prev_reward)
        for x, z in zip(a, c)
    )
    assert differs


# --------------------------------------------------------------------------------------------
# factory: spaces, limits, errors
# --------------------------------------------------------------------------------------------


class _Recorder(gym.Env):
    """Records the actions it receives; configurable spaces."""

    def __init__(self, action_space=None, observation_space=None, limit=5):
        self.action_space = action_space or gym.spaces.Discrete(3)
        self.observation_space = observation_space or gym.spaces.Discrete(4)
        self.max_episode_steps = limit
        self.actions = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        self.actions.append(action)
        return self.observation_space.sample(), 0.0, False, False, {}


if "test/Recorder-v0" not in gym.registry:
    gym.register("test/Recorder-v0", entry_point=_Recorder)


def test_box_actions_are_rescaled_from_unit_range():
    space = gym.spaces.Box(np.array([0.0, -10.0]), np.array([1.0, 10.0]), dtype=np.float64)
    env = make_env(EnvConfig(id="test/Recorder-v0", kwargs={"action_space": space}), seed=0)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.reset()
    for a in ([-1.0, -1.0], [1.0, 1.0], [0.0, 0.5], [3.0, -7.0]):
        env.step(np.array(a, dtype=np.float32))
    got = np.array(env.unwrapped.actions)
    np.testing.assert_allclose(got, [[0, -10], [1, 10], [0.5, 5], [1, -10]], atol=1e-6)
    assert got.dtype == np.float64 and all(space.contains(a) for a in env.unwrapped.actions)


def test_pendulum_torque_bounds():
    env = make_env(EnvConfig(id="Pendulum-v1"), seed=0)
    env.reset()
    for a, torque in ((-1.0, -2.0), (0.25, 0.5), (1.0, 2.0)):
        env.step(np.array([a], dtype=np.float32))
        assert env.unwrapped.last_u == pytest.approx(torque)


def test_discrete_observations_are_one_hot():
    env = make_env(EnvConfig(id="FrozenLake-v1", kwargs={"is_slippery": False}), seed=0)
    obs, _ = env.reset()
    assert obs["observation"].dtype == np.float32 and obs["observation"].shape == (16,)
    np.testing.assert_array_equal(obs["observation"], np.eye(16, dtype=np.float32)[0])
    obs, *_ = env.step(2)  # right
    np.testing.assert_array_equal(obs["observation"], np.eye(16, dtype=np.float32)[1])


def test_observation_dtypes_and_shapes_are_standardised():
    space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "f64": gym.spaces.Box(-1.0, 1.0, (2,), np.float64),
            "scalar": gym.spaces.Box(0.0, 1.0, (), np.float32),
            "bits": gym.spaces.MultiBinary([2, 2]),
            "nested": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0, 9, (1,), int))),
        }
    )
    cfg = EnvConfig(id="test/Recorder-v0", kwargs={"observation_space": space})
    spec = env_spec(cfg)
    assert {k: (v.shape, v.dtype) for k, v in spec.obs.items()} == {
        "image": ((8, 8, 3), "uint8"),
        "f64": ((2,), "float32"),
        "scalar": ((1,), "float32"),
        "bits": ((4,), "float32"),
        "nested.0": ((2,), "float32"),
        "nested.1": ((1,), "float32"),
    }
    env = make_env(cfg, seed=0)
    obs, _ = env.reset()
    assert all(
        obs[k].shape == v.shape and obs[k].dtype.name == v.dtype for k, v in spec.obs.items()
    )


def test_discrete_start_and_multidiscrete_spaces():
    env = make_env(
        EnvConfig(
            id="test/Recorder-v0",
            kwargs={
                "action_space": gym.spaces.MultiDiscrete([2, 3]),
                "observation_space": gym.spaces.Dict(
                    {"a": gym.spaces.Discrete(3, start=-1), "b": gym.spaces.MultiDiscrete([2, 2])}
                ),
            },
        ),
        seed=0,
    )
    assert env.action_space == gym.spaces.Discrete(6)
    obs, _ = env.reset()
    assert obs["a"].shape == (3,) and obs["a"].sum() == 1.0
    assert obs["b"].shape == (4,) and obs["b"][:2].sum() == 1.0 and obs["b"][2:].sum() == 1.0
    for a in range(6):
        env.step(a)
    assert [tuple(int(v) for v in a) for a in env.unwrapped.actions] == [
        (i, j) for i in range(2) for j in range(3)
    ]
    env = make_env(
        EnvConfig(id="test/Recorder-v0", kwargs={"action_space": gym.spaces.Discrete(3, start=5)}),
        seed=0,
    )
    env.reset()
    env.step(0), env.step(2)
    assert env.unwrapped.actions == [5, 7]


def test_time_limit_override_and_declared_limits():
    assert env_spec(EnvConfig(id="amago/TMaze-v0")).max_episode_steps == 11
    assert env_spec(EnvConfig(id="CartPole-v1")).max_episode_steps == 500
    assert env_spec(EnvConfig(id="CartPole-v1", max_episode_steps=7)).max_episode_steps == 7
    cfg = EnvConfig(id="amago/TMaze-v0", max_episode_steps=4)
    env = make_env(cfg, seed=0)
    env.reset()
    flags = [env.step(1)[3] for _ in range(4)]  # walking left never terminates
    assert flags == [False, False, False, True]
    assert env_spec(cfg).max_episode_steps == 4
    # a limit above the env's own one cannot extend it
    assert env_spec(EnvConfig(id="amago/TMaze-v0", max_episode_steps=50)).max_episode_steps == 11
    trial = EnvConfig(id="amago/DarkKeyToDoor-v0", kwargs={"max_steps": 9}, trial_episodes=4)
    assert env_spec(trial).max_episode_steps == 36


def test_unknown_id_names_the_field():
    with pytest.raises(ConfigError) as e:
        EnvConfig(id="amago/TMaz-v0").validate()
    assert e.value.field == "id" and "TMaze" in str(e.value)  # suggests the close match
    with pytest.raises(ConfigError) as e:
        prefixed("env", EnvConfig(id="NoSuchEnv-v9").validate)
    assert e.value.field == "env.id"
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig(id="NoSuchEnv-v9"))
    assert e.value.field == "id"
    with pytest.raises(ConfigError) as e:
        EnvConfig(id="no_such_module:Env-v0").validate()
    assert e.value.field == "id"


def test_module_prefixed_id_is_imported():
    cfg = EnvConfig(id="common.envs.tmaze:amago/TMaze-v0")
    cfg.validate()
    assert env_spec(cfg).max_episode_steps == 11


def test_popgym_ids_need_popgym(monkeypatch):
    monkeypatch.setattr(popgym_envs, "popgym_installed", lambda: False)
    with pytest.raises(ConfigError) as e:
        EnvConfig(id="popgym-RepeatPreviousEasy-v0").validate()
    assert e.value.field == "id" and "pip install popgym" in str(e.value)


@pytest.mark.parametrize(
    "cfg, field",
    [
        (EnvConfig(id=""), "id"),
        (EnvConfig(trial_episodes=0), "trial_episodes"),
        (EnvConfig(max_episode_steps=-1), "max_episode_steps"),
        (EnvConfig(kwargs={"max_episode_steps": 3}), "kwargs"),
        (EnvConfig(kwargs={1: 2}), "kwargs"),
        (EnvConfig(id="amago/TMaze-v0", trial_episodes=2), "trial_episodes"),  # no TaskSampler
    ],
)
def test_validate_names_the_bad_field(cfg, field):
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field


def test_build_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig(id="Blackjack-v1"))  # no limit anywhere
    assert e.value.field == "max_episode_steps"
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": 0}))
    assert e.value.field == "kwargs"
    with pytest.raises(ConfigError) as e:  # entry point is a function: caught at build time
        make_env(EnvConfig(id="amago/GoalGrid-v0", trial_episodes=2))
    assert e.value.field == "trial_episodes"


# --------------------------------------------------------------------------------------------
# T-Maze
# --------------------------------------------------------------------------------------------


def _tmaze_returns(policy_factory, episodes=400, length=6):
    cfg = EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": length})
    env, spec = make_env(cfg, seed=0), env_spec(cfg)
    return np.array([rollout(env, spec, policy_factory()).total_return for _ in range(episodes)])


def test_tmaze_memory_policy_is_optimal_and_memoryless_gets_half():
    def remembers():
        hint = {}

        def act(obs, info):
            o = obs["observation"]
            hint.setdefault("h", o[0])  # seen at t = 0 only
            if o[2] < 0.5:
                return 0  # walk right
            return 2 if hint["h"] > 0 else 3

        return act

    def memoryless():
        return lambda obs, info: 0 if obs["observation"][2] < 0.5 else 2  # always "up"

    np.testing.assert_allclose(_tmaze_returns(remembers), 1.0, atol=1e-6)
    forgetful = _tmaze_returns(memoryless)
    assert set(np.round(forgetful, 6)) == {0.0, 1.0}
    assert 0.4 < forgetful.mean() < 0.6


# --------------------------------------------------------------------------------------------
# MetaBandit
# --------------------------------------------------------------------------------------------


def _bandit_rewards(policy, trials=600, pulls=20):
    """(trials, pulls) rewards; ``policy(pulls_per_arm, wins_per_arm) -> arm``."""
    cfg = EnvConfig(id="amago/MetaBandit-v0", trial_episodes=pulls)
    env = make_env(cfg, seed=0)
    arms = env.unwrapped.arms
    out = np.zeros((trials, pulls))
    for i in range(trials):
        env.reset()
        n, w = np.zeros(arms), np.zeros(arms)
        for t in range(pulls):
            a = policy(n, w)
            _, r, term, trunc, _ = env.step(a)
            n[a] += 1
            w[a] += r
            out[i, t] = r
            assert term == (t == pulls - 1) and not trunc
    return out


def test_metabandit_in_context_exploration_beats_memoryless():
    env = MetaBandit()
    assert env.memoryless_reward == pytest.approx(0.26)
    assert env.optimal_reward == pytest.approx(0.9)

    def explore_then_exploit(n, w):
        if (n == 0).any():
            return int(np.flatnonzero(n == 0)[0])
        mean = w / n
        best = np.flatnonzero(mean == mean.max())
        return int(best[np.argmin(n[best])])

    late = _bandit_rewards(explore_then_exploit)[:, 10:].mean()
    fixed = _bandit_rewards(lambda n, w: 0)[:, 10:].mean()
    # documented: ~0.86 vs the best memoryless 0.26
    assert abs(fixed - env.memoryless_reward) < 0.05
    assert late > 0.8
    assert late - fixed > 0.5


def test_metabandit_task_is_one_good_arm():
    env = MetaBandit(arms=4, p_hi=0.8, p_lo=0.2)
    rng = np.random.default_rng(0)
    tasks = np.stack([env.sample_task(rng) for _ in range(400)])
    assert np.all(np.sort(tasks, axis=1) == [0.2, 0.2, 0.2, 0.8])
    counts = np.bincount(tasks.argmax(axis=1), minlength=4)
    assert counts.min() > 60  # good arm uniform over arms


# --------------------------------------------------------------------------------------------
# trial wrapper (with Dark Key-To-Door)
# --------------------------------------------------------------------------------------------


def _go_towards(pos: np.ndarray, target: np.ndarray) -> int:
    """Dark Key-To-Door action moving one step from ``pos`` towards ``target``."""
    d = np.asarray(target) - np.asarray(pos)
    step = np.array([np.sign(d[0]), 0]) if d[0] != 0 else np.array([0, np.sign(d[1])])
    return int(np.flatnonzero((KD_MOVES == step).all(axis=1))[0])


def _informed_key_door_policy(env):
    base = env.unwrapped

    def act(obs, info):
        return _go_towards(base.pos, base.door if base.has_key else base.key)

    return act


def test_trial_keeps_task_marks_episode_starts_and_sums_rewards():
    k, limit = 4, 12
    cfg = EnvConfig(id="amago/DarkKeyToDoor-v0", kwargs={"max_steps": limit}, trial_episodes=k)
    env, spec = make_env(cfg, seed=1), env_spec(cfg)
    base = env.unwrapped
    rng = np.random.default_rng(0)
    trial_tasks = []
    for _ in range(6):
        obs, info = env.reset()
        task = base.task.copy()
        trial_tasks.append(task)
        assert info[INFO_EPISODE_START] and obs[OBS_EPISODE_START][0] == 1.0
        np.testing.assert_array_equal(base.pos, task[0])
        starts, rewards, inner_returns, ret = [0], [], [], 0.0
        t, done = 0, False
        while not done:
            obs, r, term, trunc, info = env.step(int(rng.integers(5)))
            t += 1
            rewards.append(r)
            ret += r
            done = term or trunc
            np.testing.assert_array_equal(base.task, task)  # same task all trial long
            assert obs[OBS_EPISODE_START][0] == float(info[INFO_EPISODE_START])
            if info[INFO_EPISODE_START]:
                starts.append(t)
                inner_returns.append(ret)
                ret = 0.0
                np.testing.assert_array_equal(base.pos, task[0])  # inner reset: back at start
                assert obs["observation"][3] == 0.0  # the inner clock restarted
                assert info["episode_index"] == len(starts) - 1
                assert "success" in info["final_info"]
        inner_returns.append(ret)
        assert term and not trunc  # the trial ends after its k-th episode: terminal
        assert len(starts) == k and len(inner_returns) == k
        assert all(0 < b - a <= limit for a, b in zip(starts, starts[1:] + [t]))
        assert sum(rewards) == pytest.approx(sum(inner_returns))
    assert len({tuple(t.ravel()) for t in trial_tasks}) > 1  # a new task every trial
    traj = rollout(env, spec, _random_policy(env))
    np.testing.assert_array_equal(traj.time_idx, np.arange(len(traj)))  # time over the trial
    starts = traj.meta.episode_starts
    assert len(starts) == k and traj.meta.info["trial_episodes"] == k
    np.testing.assert_array_equal(np.flatnonzero(traj.obs[OBS_EPISODE_START][:, 0]), starts)


def test_dark_key_to_door_informed_policy_gets_max_return():
    cfg = EnvConfig(id="amago/DarkKeyToDoor-v0", trial_episodes=5)
    env, spec = make_env(cfg, seed=2), env_spec(cfg)
    policy = _informed_key_door_policy(env)
    for _ in range(30):
        traj = rollout(env, spec, policy)
        assert traj.total_return == pytest.approx(10.0)  # 2 per episode
        assert len(traj.meta.episode_starts) == 5


def test_dark_key_to_door_rewards_key_then_door_only():
    env = DarkKeyToDoor(size=3)
    env.set_task(np.array([[0, 0], [2, 0], [1, 0]]))  # start, key, door
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0, 0, 0, 0])
    assert env.step(3)[1:3] == (0.0, False)  # door without the key: nothing
    _, r, term, _, info = env.step(3)
    assert (r, term, info["has_key"]) == (1.0, False, True)
    assert env.step(4)[1:3] == (0.0, False)  # standing on the key again pays nothing
    _, r, term, _, _ = env.step(2)
    assert (r, term) == (1.0, True)
    env.set_task(None)
    tasks = set()
    for s in range(20):
        env.reset(seed=s)
        tasks.add(tuple(env.task.ravel()))
        assert len({tuple(c) for c in env.task}) == 3  # distinct cells
    assert len(tasks) > 10  # unpinned: a fresh task per reset


def _walk_to(env, target_of):
    """A policy that walks at full speed to ``target_of(base env)`` and stays there."""
    base = env.unwrapped

    def act(obs, info):
        d = target_of(base) - base.pos
        n = float(np.linalg.norm(d))
        return (d / max(n, 1e-12) * min(1.0, n / base.step_size)).astype(np.float32)

    return act


def test_point_goal_informed_walk_is_optimal_and_blind_walks_stay_below_memoryless():
    cfg = EnvConfig(id="amago/PointGoal-v0", trial_episodes=2)
    env, spec = make_env(cfg, seed=3), env_spec(cfg)
    base = env.unwrapped
    assert base.optimal_return == pytest.approx(-4.5)
    assert -15.5 < base.memoryless_return < -14.5 < base.optimal_return
    informed = _walk_to(env, lambda b: b.goal)
    for _ in range(10):
        traj = rollout(env, spec, informed)
        assert traj.total_return == pytest.approx(2 * base.optimal_return, abs=1e-4)
        assert len(traj.meta.episode_starts) == 2
    # blind walks (the same target for every goal), on and off the axis of symmetry
    for target in ([0.0, 0.64], [0.0, 0.3], [0.3, 0.6], [-0.5, 0.5], [0.0, 1.0]):
        rets = [
            rollout(env, spec, _walk_to(env, lambda b, t=target: np.array(t))).total_return / 2
            for _ in range(200)
        ]
        assert np.mean(rets) <= base.memoryless_return + 0.3, target  # sampling noise


def test_point_goal_steps_are_capped_and_trials_keep_the_goal():
    env = PointGoal()
    env.set_task(np.array([1.0, 0.0]))
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.array([5.0, 0.0]))  # scaled down to top speed
    np.testing.assert_allclose(obs, [0.1, 0.0], atol=1e-6)
    assert (r, term, trunc) == (pytest.approx(-0.9), False, False)
    obs, *_ = env.step(np.array([0.6, 0.8]))  # norm 1: a full step
    np.testing.assert_allclose(obs, [0.16, 0.08], atol=1e-6)
    for _ in range(200):
        obs, _, _, trunc, _ = env.step(np.array([1.0, 1.0]))
    assert np.all(obs <= env.bound) and trunc
    cfg = EnvConfig(id="amago/PointGoal-v0", trial_episodes=3)
    trial = make_env(cfg, seed=1)
    goals = []
    for _ in range(4):
        trial.reset()
        seen, done = [trial.unwrapped.goal.copy()], False
        while not done:
            _, _, term, trunc, info = trial.step(np.zeros(2, np.float32))
            done = term or trunc
            seen.append(trial.unwrapped.goal.copy())
        assert all(np.array_equal(g, seen[0]) for g in seen)  # one goal per trial
        assert seen[0][1] >= 0 and np.linalg.norm(seen[0]) == pytest.approx(1.0)
        goals.append(seen[0])
    assert len({tuple(g) for g in goals}) == 4  # a fresh goal per trial


def test_goal_grid_registered_env_is_goal_conditioned():
    env = gym.make("amago/GoalGrid-v0", disable_env_checker=True)
    obs, info = env.reset(seed=0)
    assert {"observation", "goals", "goal_progress"} <= set(obs)
    assert isinstance(make_goal_grid().unwrapped, GoalGrid)
