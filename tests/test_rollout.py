"""Rollout worker (no Ray): trajectory cutting, alignment, extras, env faults, exploration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from actors.config import ExplorationConfig, StepWindow
from actors.exploration import Exploration
from actors.rollout import RolloutLoop
from common.codec import validate
from common.config_utils import ConfigError
from common.envs.config import EnvConfig
from common.envs.factory import env_spec, make_env
from common.records import StepInput, Trajectory


class RandomPolicy:
    """Implements common.core.Policy with uniform random actions; records what it saw."""

    def __init__(self, spec, seed=0):
        self.spec, self.rng, self.version = spec, np.random.default_rng(seed), 3
        self.inputs: list[StepInput] = []
        self.resets: list[int] = []

    def act(self, step, slots, greedy=False):
        self.inputs.append(step)
        n = len(slots)
        if self.spec.discrete:
            return self.rng.integers(0, self.spec.action_dim, size=n)
        return self.rng.uniform(-1, 1, size=(n, self.spec.action_dim)).astype(np.float32)

    def reset(self, slots):
        self.resets += [int(s) for s in slots]

    def load_weights(self, version, weights):
        self.version = version


def run(cfg: EnvConfig, n_envs=3, steps=60, sink=None, policy=None):
    spec = env_spec(cfg)
    envs = [make_env(cfg, seed=i) for i in range(n_envs)]
    policy = policy or RandomPolicy(spec)
    out: list[Trajectory] = []
    w = RolloutLoop(envs, spec, policy, sink or out.append, None, actor_id=5, env_id=cfg.id)
    st = w.run(steps)
    return st, out, policy, spec


def test_tmaze_rollouts_are_whole_aligned_episodes():
    st, trajs, policy, spec = run(EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": 2}))
    assert st.env_steps == 3 * 60 and len(trajs) == len(st.returns) > 0
    for t in trajs:
        validate(t)
        assert t.meta.actor_id == 5 and t.meta.policy_version == 3
        assert t.meta.episode_starts == [0]
        # exactly the last timestep ends the episode; the first has no previous action
        ends = t.terminated | t.truncated
        assert ends[-1] and not ends[:-1].any()
        assert not t.prev_action[0].any() and t.prev_reward[0] == 0
        assert (t.prev_action[1:].sum(axis=1) == 1).all()  # one-hot actions
        np.testing.assert_array_equal(t.time_idx, np.arange(len(t)))
        assert t.obs["observation"][0, 0] in (-1.0, 1.0)  # the hint is seen at t = 0
        assert np.isclose(t.total_return, t.prev_reward[1:].sum())
    # every slot's context is reset at its start and after each finished rollout
    assert len(policy.resets) == 3 + len(trajs)


def test_slots_keep_their_own_time_index():
    # CartPole episodes have random lengths, so the slots drift out of step
    st, trajs, policy, _ = run(EnvConfig(id="CartPole-v1"), n_envs=4, steps=100)
    assert any(len(set(s.time_idx.tolist())) > 1 for s in policy.inputs)
    assert {len(t) for t in trajs} != {len(trajs[0])}
    for t in trajs:
        validate(t)
        np.testing.assert_array_equal(t.time_idx, np.arange(len(t)))


def test_meta_trial_marks_episode_starts():
    cfg = EnvConfig(id="amago/MetaBandit-v0", trial_episodes=5)
    st, trajs, _, _ = run(cfg, steps=12)
    assert trajs
    for t in trajs:
        validate(t)
        assert len(t) == 6  # 5 one-pull episodes: 6 timesteps
        assert t.meta.episode_starts == [0, 1, 2, 3, 4, 5][: len(t.meta.episode_starts)]
        assert len(t.meta.episode_starts) >= 5
        assert t.terminated[-1]


def test_goal_env_extras_and_info_are_stored():
    cfg = EnvConfig(id="amago/GoalGrid-v0")
    st, trajs, _, spec = run(cfg, n_envs=2, steps=120)
    assert spec.extras and trajs
    for t in trajs:
        validate(t)
        assert set(t.extras) == set(spec.extras)
        for k, a in t.extras.items():
            assert a.shape == (len(t), *spec.extras[k].shape)
        assert "goal_reward_fn" in t.meta.info


class FlakyEnv(gym.Wrapper):
    """Raises on every 7th step."""

    def __init__(self, env):
        super().__init__(env)
        self.calls = 0

    def step(self, action):
        self.calls += 1
        if self.calls % 7 == 0:
            raise RuntimeError("simulated env crash")
        return self.env.step(action)


def test_env_exceptions_reset_the_env_and_are_counted():
    cfg = EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": 3})
    spec = env_spec(cfg)
    envs = [FlakyEnv(make_env(cfg, seed=i)) for i in range(2)]
    trajs: list[Trajectory] = []
    w = RolloutLoop(envs, spec, RandomPolicy(spec), trajs.append, None)
    st = w.run(70)
    assert st.env_faults == 20  # 2 envs x 70 steps / 7
    assert st.env_steps == 140 - 20
    for t in trajs:  # no rollout that saw a fault is ever emitted half-done
        validate(t)
        assert (t.terminated | t.truncated)[-1]


@pytest.mark.parametrize("discrete", [True, False])
def test_exploration_schedule(discrete):
    cfg = ExplorationConfig(start=1.0, end_min=0.01, end_max=0.3, anneal_steps=100)
    ex = [Exploration(cfg, i, 3, discrete, 4, np.random.default_rng(i)) for i in range(3)]
    assert [e.end for e in ex] == pytest.approx([0.01, np.sqrt(0.01 * 0.3), 0.3])
    e = ex[0]
    acts = np.zeros(1000, np.int64) if discrete else np.zeros((1000, 4), np.float32)
    assert e.epsilon == 1.0
    e(acts[:50])  # the schedule counts env steps (50 of 100 here)
    assert e.epsilon == pytest.approx(1.0 + 0.5 * (0.01 - 1.0))
    e.steps = 0
    out = e(acts)
    if discrete:
        assert 0.65 < (out != 0).mean() < 0.85  # eps = 1: uniform over 4 actions -> 3/4 change
    else:
        assert 0.65 < out.std() < 0.8 and np.abs(out).max() <= 1.0  # N(0, 1) clipped to [-1, 1]
    assert e.epsilon == pytest.approx(0.01)  # annealed after 1000 > 100 env steps
    out = e(acts)
    changed = (out != 0).mean() if discrete else np.abs(out).mean()
    assert changed < 0.05


@pytest.mark.parametrize("discrete", [True, False])
def test_exploration_within_rollout_schedule(discrete):
    """Bi-level scale and step windows: epsilon depends on the rollout step, per env."""
    windows = [StepWindow(start=1, stop=-3, epsilon=0.0)]
    cfg = ExplorationConfig(
        start=1.0, end_min=1.0, end_max=1.0, rollout_end_scale=0.5, step_windows=windows
    )
    e = Exploration(cfg, 0, 1, discrete, 4, np.random.default_rng(0), horizon=20)
    eps = e.step_epsilon(np.arange(22))
    assert eps[0] == 1.0 and (eps[1:17] == 0.0).all()  # window: steps 1 .. 16 (20 - 3 - 1)
    assert eps[17:21] == pytest.approx([1 - 0.5 * t / 20 for t in range(17, 21)])
    assert eps[21] == 0.5  # past the horizon the scale stays at rollout_end_scale
    # perturbation follows each env's own step: envs in the window keep the policy's action
    n = 4000
    acts = np.zeros(n, np.int64) if discrete else np.zeros((n, 4), np.float32)
    steps = np.where(np.arange(n) % 2 == 0, 5, 0)  # even envs inside the window, odd at t=0
    out = e(acts, steps)
    moved = (out != 0) if discrete else (out != 0).any(-1)
    assert not moved[0::2].any()
    assert moved[1::2].mean() > 0.6
    bad = ExplorationConfig(step_windows=[StepWindow(start=5, stop=3, epsilon=0.1)])
    with pytest.raises(ConfigError, match=r"step_windows\[0\]\.stop"):
        bad.validate()


@pytest.mark.parametrize("sample_actions", [True, False])
def test_sample_actions_false_makes_the_policy_act_greedily(sample_actions):
    """``exploration.sample_actions`` reaches ``policy.act(greedy=...)``; exploration still runs."""
    cfg = EnvConfig(id="CartPole-v1")
    spec = env_spec(cfg)
    calls: list[bool] = []

    class Recording(RandomPolicy):
        def act(self, step, slots, greedy=False):
            calls.append(greedy)
            return super().act(step, slots, greedy)

    ex_cfg = ExplorationConfig(start=0.5, end_min=0.5, end_max=0.5, sample_actions=sample_actions)
    explore = Exploration(ex_cfg, 0, 1, True, spec.action_dim, np.random.default_rng(0))
    envs = [make_env(cfg, seed=i) for i in range(2)]
    w = RolloutLoop(envs, spec, Recording(spec), None, explore)
    w.run(5)
    assert calls == [not sample_actions] * 5
    assert explore.steps == 10  # the exploration schedule still advanced (2 envs x 5 steps)
    # evaluation (greedy=True) is greedy whatever the flag says
    calls.clear()
    RolloutLoop(envs, spec, Recording(spec), None, explore, greedy=True).run(2)
    assert calls == [True, True]


def test_evaluation_takes_the_same_number_of_rollouts_from_every_slot():
    cfg = EnvConfig(id="CartPole-v1")
    spec = env_spec(cfg)
    envs = [make_env(cfg, seed=i) for i in range(4)]
    w = RolloutLoop(envs, spec, RandomPolicy(spec), None, None, greedy=True)
    st = w.run_rollouts(per_slot=3, max_steps=10_000)
    assert len(st.returns) == len(st.lengths) == 12
    assert [st.finished_slots.count(i) for i in range(4)] == [3, 3, 3, 3]
    assert sum(st.lengths) - 12 < st.env_steps  # later rollouts of fast slots were not counted


def test_success_is_none_where_the_env_reports_none():
    """CartPole's info has no "success": its rollouts' successes are None and a report's
    success rate is None (not 0.0); T-Maze reports one: a float per rollout."""
    from common.reports import EvalReport

    st, _, _, _ = run(EnvConfig(id="CartPole-v1"), n_envs=2, steps=200)
    assert st.successes and all(s is None for s in st.successes)
    st_t, _, _, _ = run(EnvConfig(id="amago/TMaze-v0"), n_envs=2, steps=60)
    assert st_t.successes and all(s in (0.0, 1.0) for s in st_t.successes)
    report = lambda succ: EvalReport("i", 0, [0.0] * len(succ), succ, [1] * len(succ), [])  # noqa: E731
    assert report(st.successes).success_rate() is None
    assert report([None, 1.0, 0.0]).success_rate() == 0.5


def test_episode_returns_split_a_trial_at_its_episode_starts():
    st, trajs, _, _ = run(EnvConfig(id="amago/MetaBandit-v0", trial_episodes=5), steps=12)
    for t, per_ep in zip(trajs, st.episode_returns):
        assert len(per_ep) == 5
        np.testing.assert_allclose(per_ep, t.prev_reward[1:])  # one pull per episode
        assert sum(per_ep) == pytest.approx(t.total_return)


def test_long_rollouts_stream_in_overlapping_chunks():
    """chunk=(steps, overlap): a rollout in progress hands the sink a record of its new
    timesteps every ``steps`` env steps, the ``overlap`` timesteps before them in front; the
    records put back together are exactly the whole rollout a loop without chunks records
    (same seeds), and statistics count whole rollouts only, once."""
    cfg = EnvConfig(id="Pendulum-v1")  # 200-step episodes: 201 timesteps
    spec = env_spec(cfg)

    def loop(chunk):
        out: list[Trajectory] = []
        policy = RandomPolicy(spec, seed=1)
        envs = [make_env(cfg, seed=i) for i in range(2)]
        w = RolloutLoop(envs, spec, policy, out.append, None, env_id=cfg.id, chunk=chunk)
        return w.run(200), out, policy

    whole_st, whole, _ = loop(None)
    st, parts, policy = loop((32, 7))
    assert st.returns == whole_st.returns and st.lengths == whole_st.lengths == [201, 201]
    assert len(whole) == 2 and len(parts) == 2 * 7  # 32 new timesteps a chunk, 201 in all
    for slot, ref in enumerate(whole):
        mine = parts[slot::2]  # the slots hit each chunk boundary at the same step
        sent = 0
        for p in mine:
            validate(p)
            start = max(0, sent - 7)
            assert p.time_idx[0] == start and p.time_idx[-1] == min(sent + 32, 201) - 1
            for k, v in p.arrays().items():
                np.testing.assert_array_equal(v, ref.arrays()[k][start : start + len(p)], k)
            sent = int(p.time_idx[-1]) + 1
        assert sent == 201 and mine[-1].truncated[-1]
        assert not any(p.truncated.any() or p.terminated.any() for p in mine[:-1])
    assert all(p.meta.policy_version == 3 for p in parts)
    with pytest.raises(ValueError, match="overlap"):
        RolloutLoop([make_env(cfg)], spec, policy, None, None, chunk=(8, 0))


def test_recorder_stacks_a_suffix_as_the_whole_record_windowed():
    """``to_trajectory(start=k)`` (what a chunk stacks) is the whole record's ``window(k, n)``:
    same arrays, absolute time_idx, episode starts shifted and those before k dropped."""
    from common.envs.record import TrajectoryRecorder

    cfg = EnvConfig(id="amago/MetaBandit-v0", trial_episodes=6)
    spec, env = env_spec(cfg), make_env(cfg, seed=0)
    obs, info = env.reset(seed=0)
    rec = TrajectoryRecorder(spec, obs, info)
    rng = np.random.default_rng(0)
    while not rec.done:
        a = int(rng.integers(spec.action_dim))
        rec.append(a, *env.step(a))
    whole = rec.to_trajectory("x", 1, 2)
    for k in (0, 2, 3, len(rec) - 1):
        part, ref = rec.to_trajectory("x", 1, 2, start=k), whole.window(k, len(rec))
        assert part.meta.episode_starts == ref.meta.episode_starts
        for key, v in ref.arrays().items():
            np.testing.assert_array_equal(part.arrays()[key], v, err_msg=key)
