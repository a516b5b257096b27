"""Hindsight relabeling (replay_service/hindsight.py, common.goals.relabel_episodes).

Data: real GoalGrid rollouts of a random policy, each episode recorded from a known reset seed
so it can be replayed on a fresh raw env. Meta-RL trials: GoalGrid has no TaskSampler, so
trials are built from such episodes in the trial wrapper's exact layout (:func:`_make_trial`),
with each episode's goals moved into its own block of goal dimensions so that a goal taken
from another episode would be visible; a small TaskSampler goal env also runs through the real
``TrialWrapper``.

What "future" means (see the hindsight module doc): the goal placed in instruction slot j was
achieved at a timestep t_j of the same episode with episode start < t_1 < t_2 < ...; for the
"future" strategy every hindsight goal is also achieved after the pivot (the hit time of the
last kept real goal, or the episode start).
"""

from __future__ import annotations

import dataclasses
import uuid
from functools import cache

import fakeredis
import gymnasium as gym
import numpy as np
import pytest

from common.codec import decode, encode
from common.config_utils import ConfigError
from common.envs import EnvConfig, env_spec, make_env, rollout
from common.envs.goal_grid import GoalGrid
from common.goals import (
    ACHIEVED_KEY,
    ACHIEVED_MASK_KEY,
    GOALS_KEY,
    PROGRESS_KEY,
    GoalSpec,
    SequentialGoalReward,
    episode_bounds,
    goal_shape,
    instruction_of,
    recompute_goal_rewards,
    register_goal_reward_fn,
    relabel_episodes,
    replay_goals,
    reward_fn_of,
)
from common.records import Trajectory, TrajectoryMeta
from replay_service import (
    RedisConfig,
    ReplayConfig,
    ReplayStore,
    Sampler,
    SampleShape,
    get_relabeler,
)
from replay_service.hindsight import HindsightConfig, HindsightRelabeler, make_hindsight
from replay_service.relabel import relabeler_names

STRATEGIES = [("final", "some"), ("final", "all"), ("future", "some"), ("future", "all")]
GRID_KW = {"size": 5, "num_goals": 2, "num_object_types": 4, "num_obstacles": 3}


# --------------------------------------------------------------------------------------------
# test data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one episode came from: the raw env's reset seed and constructor kwargs."""

    seed: int
    kwargs: tuple[tuple[str, int], ...]


@cache
def _grid_episodes(count: int, seed: int, **kwargs) -> tuple[tuple[Trajectory, Source], ...]:
    """``count`` random-policy GoalGrid episodes (read-only decoded copies, as the replay
    service holds them), each with the reset seed that reproduces it."""
    cfg = EnvConfig(id="amago/GoalGrid-v0", kwargs=kwargs)
    env, spec = make_env(cfg), env_spec(cfg)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        ep_seed = seed * 100_000 + i
        traj = rollout(env, spec, lambda o, info: int(rng.integers(4)), seed=ep_seed)
        out.append((decode(encode(traj)), Source(ep_seed, tuple(sorted(kwargs.items())))))
    return tuple(out)


def _widen(traj: Trajectory, block: int, blocks: int) -> dict[str, np.ndarray]:
    """Goal arrays of ``traj`` with every goal vector moved into dims block*G .. block*G+G-1
    of a ``blocks * G`` vector (zeros elsewhere): a valid goal task with more goal dims."""
    k, g = goal_shape(traj)

    def wide(a: np.ndarray) -> np.ndarray:
        out = np.zeros((*a.shape[:-1], blocks * g), np.float32)
        out[..., block * g : (block + 1) * g] = a
        return out

    n = len(traj)
    return {
        GOALS_KEY: wide(traj.obs[GOALS_KEY].reshape(n, k, g)).reshape(n, -1),
        ACHIEVED_KEY: wide(traj.extras[ACHIEVED_KEY]),
    }


def _make_trial(episodes: list[Trajectory]) -> Trajectory:
    """One meta-RL trial from whole episodes, laid out as ``TrialWrapper`` records it: the
    first timestep of episode e+1 holds its reset observation together with the transition
    data (action, reward, extras) of episode e's last step, no flags at inner boundaries, the
    trial ends ``terminated``, ``time_idx`` counts over the trial, ``obs["episode_start"]``."""
    blocks = len(episodes)
    rows: dict[str, list[np.ndarray]] = {}
    starts, pos = [], 0

    def add(key: str, a: np.ndarray) -> None:
        rows.setdefault(key, []).append(np.asarray(a))

    for e, ep in enumerate(episodes):
        wide = _widen(ep, e, blocks)
        last = e == blocks - 1
        n = len(ep)
        obs_end = n if last else n - 1  # the inner terminal observation is never seen
        starts.append(pos)
        for key, v in ep.obs.items():
            add("obs/" + key, (wide[GOALS_KEY] if key == GOALS_KEY else v)[:obs_end])
        flag = np.zeros((obs_end, 1), np.float32)
        flag[0] = 1.0
        add("obs/episode_start", flag)
        # transitions 1 .. n-1 of the episode, behind the carried one (row 0: that of e-1)
        lo = 0 if e == 0 else 1
        for key in ("prev_action", "prev_reward"):
            add(key, getattr(ep, key)[lo:])
        add("extras/" + ACHIEVED_KEY, wide[ACHIEVED_KEY][lo:])
        add("extras/" + ACHIEVED_MASK_KEY, ep.extras[ACHIEVED_MASK_KEY][lo:])
        pos += obs_end
    arrays = {k: np.concatenate(v) for k, v in rows.items()}
    n = pos
    for key in ("prev_action", "prev_reward", "extras/" + ACHIEVED_KEY):
        assert len(arrays[key]) == n
    arrays["time_idx"] = np.arange(n, dtype=np.int32)
    arrays["terminated"] = np.zeros(n, bool)
    arrays["terminated"][-1] = True
    arrays["truncated"] = np.zeros(n, bool)
    info = dict(episodes[0].meta.info, trial_episodes=blocks)
    meta = TrajectoryMeta(env_id="trial", episode_starts=starts, info=info)
    return decode(encode(Trajectory.from_arrays(arrays, meta)))


@cache
def _dataset() -> tuple[tuple[Trajectory, tuple[Source, ...]], ...]:
    """Single GoalGrid episodes and 3-episode trials of them, with their sources."""
    singles = _grid_episodes(150, 0, **GRID_KW)
    data = [(t, (src,)) for t, src in singles]
    eps = _grid_episodes(90, 1, **GRID_KW)
    for i in range(0, len(eps), 3):
        group = eps[i : i + 3]
        data.append((_make_trial([t for t, _ in group]), tuple(s for _, s in group)))
    return tuple(data)


def _assert_same(a: Trajectory, b: Trajectory) -> None:
    assert a.arrays().keys() == b.arrays().keys()
    for key, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[key], err_msg=key)
        assert v.dtype == b.arrays()[key].dtype, key
    assert a.meta == b.meta


# --------------------------------------------------------------------------------------------
# the independent check: replay each relabeled episode on a fresh raw GoalGrid
# --------------------------------------------------------------------------------------------


def _check_against_env(new: Trajectory, sources: tuple[Source, ...]) -> None:
    """Everything in ``new`` agrees with the raw env stepped with its actions under its
    (relabeled) instruction, using goal logic written here from the task's rules: rewards,
    progress, observations, flags, time, and no timestep after a completed instruction."""
    k, g_wide = goal_shape(new)
    trial = len(sources) > 1
    bounds = episode_bounds(new)
    assert len(bounds) == len(sources)
    assert new.prev_reward[0] == 0 and not new.prev_action[0].any()
    np.testing.assert_array_equal(new.time_idx, np.arange(len(new)))
    if trial:
        flag = np.zeros(len(new), np.float32)
        flag[new.meta.episode_starts] = 1.0
        np.testing.assert_array_equal(new.obs["episode_start"][:, 0], flag)
    for e, ((s, obs_stop, stop), src) in enumerate(zip(bounds, sources)):
        env = GoalGrid(**dict(src.kwargs))
        first, _ = env.reset(seed=src.seed)
        G = env.num_types
        np.testing.assert_array_equal(new.obs["observation"][s], first)
        goals = new.obs[GOALS_KEY][s:obs_stop]
        assert (goals == goals[0]).all(), "instruction changes inside an episode"
        kinds = np.argmax(goals[0].reshape(k, g_wide), axis=1)
        assert (goals[0].reshape(k, g_wide).sum(axis=1) == 1).all()  # one-hot goals
        if trial:
            assert (kinds // G == e).all(), "a goal from another episode of the trial"
        kinds = kinds % G
        active, rewards, frames = 0, [], []
        for a in np.argmax(new.prev_action[s + 1 : stop], axis=1):
            frame, *_ = env.step(int(a))
            frames.append(frame)
            here = env.objects[env.pos[0], env.pos[1]]
            hit = active < k and here == kinds[active]
            rewards.append(1.0 if hit else 0.0)
            active += int(hit)
        rewards = np.array(rewards, np.float32)
        np.testing.assert_array_equal(new.prev_reward[s + 1 : stop], rewards)
        np.testing.assert_array_equal(
            new.obs["observation"][s + 1 : obs_stop], frames[: obs_stop - s - 1]
        )
        done = np.cumsum(rewards)
        np.testing.assert_array_equal(
            new.obs[PROGRESS_KEY][s:obs_stop].sum(axis=1),
            np.concatenate([[0], done])[: obs_stop - s],
        )
        completed = active == k
        if completed:  # nothing of this episode after the completing step
            assert (done[:-1] < k).all() and rewards[-1] == 1.0
        if not trial:
            assert not new.terminated[:-1].any() and not new.truncated[:-1].any()
            assert new.terminated[-1] == completed  # GoalGrid never ends an episode itself
            # the time limit (kept on a completing step too), or an unmet goal
            assert new.truncated[-1] == (not completed or len(rewards) == env.max_steps)
    if trial:
        assert not new.terminated[:-1].any() and not new.truncated.any()
        assert new.terminated[-1]  # a trial always ends terminated


def _check_plan(traj: Trajectory, plans, strategy: str) -> None:
    """The planned goals come from the future of their slot in the same episode."""
    fn = reward_fn_of(traj)
    achieved, mask = traj.extras[ACHIEVED_KEY], traj.extras[ACHIEVED_MASK_KEY]
    bounds = episode_bounds(traj)
    assert [p.episode for p in plans] == list(range(len(bounds)))
    for plan, (s, _, stop) in zip(plans, bounds):
        np.testing.assert_array_equal(plan.original, instruction_of(traj, plan.episode))
        real = replay_goals(plan.original, achieved[s + 1 : stop], mask[s + 1 : stop], fn)
        real_hits = {
            int(t) + s + 1: plan.original[j] for j, t in enumerate(np.flatnonzero(real.hit))
        }
        timed = plan.times >= 0
        n = int(timed.sum())
        assert timed[:n].all(), "timed slots must be a prefix"
        t = plan.times[:n]
        assert (np.diff(t) > 0).all(), "slot order must be time order"
        assert ((t > s) & (t < stop)).all(), "a goal achieved outside its episode"
        assert not plan.relabeled[n:].any()
        np.testing.assert_array_equal(plan.instruction[n:], plan.original[n:])
        if strategy == "final":  # every real hit is kept, at its real time
            assert plan.pivot == s
            assert set(t[~plan.relabeled[:n]].tolist()) == set(real_hits)
        for j in range(n):
            goal, tj = plan.instruction[j], int(t[j])
            if plan.relabeled[j]:
                assert tj > plan.pivot
                rows = achieved[tj][mask[tj]]
                assert (rows == goal).all(axis=1).any(), "not a goal achieved at its time"
            else:  # a real hit of the original instruction, kept at its real time
                assert tj <= plan.pivot or strategy == "final"
                np.testing.assert_array_equal(real_hits[tj], goal)
        # following the new instruction, slot j is reached at h_j, h_{j-1} < h_j <= t_j
        rep = replay_goals(plan.instruction, achieved[s + 1 : stop], mask[s + 1 : stop], fn)
        h = np.flatnonzero(rep.hit) + s + 1
        assert len(h) >= n and (h[:n] <= t).all()


# --------------------------------------------------------------------------------------------
# invariants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, amount", STRATEGIES)
def test_relabeled_goals_rewards_and_flags_are_consistent(strategy, amount):
    relabeler = HindsightRelabeler(HindsightConfig(p_relabel=1.0, strategy=strategy, amount=amount))
    rng = np.random.default_rng(7)
    changed = splices = cuts = slots = 0
    for traj, sources in _dataset():
        seed = int(rng.integers(2**32))
        plans = relabeler.plan(traj, np.random.default_rng(seed))
        _check_plan(traj, plans, strategy)
        new = relabeler(traj, np.random.default_rng(seed))  # the same draws as the plan
        if not any(p.changed for p in plans):
            assert new is traj
            continue
        changed += 1
        slots += sum(int(p.relabeled.sum()) for p in plans)
        for p, (s, _, _) in zip(plans, episode_bounds(new)):
            np.testing.assert_array_equal(new.obs[GOALS_KEY][s], p.instruction.reshape(-1))
        # the oracle: the env's reward function (by name) on the stored arrays
        _assert_same(recompute_goal_rewards(new), new)
        # the independent check: the raw env replayed under the new instruction
        _check_against_env(new, sources)
        cuts += len(new) < len(traj)
        splices += new.meta.episode_starts[1:] != traj.meta.episode_starts[1:]
    assert changed > 60 and slots > 80
    assert cuts > 20  # relabeled instructions completed early were cut
    assert splices > 0  # ... also inside trials (the next episode moved up)


def test_trial_episode_completed_early_is_followed_by_the_next_episode():
    """A hand-picked case: episode 0 of a trial completes its new instruction mid-episode."""
    for traj, sources in _dataset():
        if len(sources) == 1:
            continue
        s0, s1 = traj.meta.episode_starts[:2]
        mask = traj.extras[ACHIEVED_MASK_KEY]
        times = np.flatnonzero(mask[1 : s1 - 1, 0]) + 1  # well before the boundary
        goals = traj.extras[ACHIEVED_KEY][times, 0]
        pick = [i for i in range(1, len(times)) if not (goals[i] == goals[0]).all()]
        if not pick:
            continue
        t_end = int(times[pick[0]])
        instr = np.stack([goals[0], goals[pick[0]]])
        new = relabel_episodes(traj, [instr, None, None])
        dropped = s1 - t_end
        assert len(new) == len(traj) - dropped
        assert new.meta.episode_starts == [0, t_end] + [
            s - dropped for s in traj.meta.episode_starts[2:]
        ]
        # the boundary: next episode's first observation, the completing transition
        np.testing.assert_array_equal(new.obs["observation"][t_end], traj.obs["observation"][s1])
        np.testing.assert_array_equal(new.prev_action[t_end], traj.prev_action[t_end])
        np.testing.assert_array_equal(
            new.extras[ACHIEVED_KEY][t_end], traj.extras[ACHIEVED_KEY][t_end]
        )
        assert new.prev_reward[t_end] == 1.0 and new.obs[PROGRESS_KEY][t_end].sum() == 0
        assert new.obs[PROGRESS_KEY][t_end - 1].sum() == 1
        assert not new.terminated[:-1].any() and new.terminated[-1]
        np.testing.assert_array_equal(new.obs["observation"][t_end:], traj.obs["observation"][s1:])
        np.testing.assert_array_equal(new.prev_reward[t_end + 1 :], traj.prev_reward[s1 + 1 :])
        _check_against_env(new, sources)
        return
    pytest.fail("no trial with two distinct goals achieved in its first episode")


def test_relabel_episodes_without_changes_reproduces_the_stored_data():
    for traj, _ in _dataset():
        _assert_same(relabel_episodes(traj, [None] * len(traj.meta.episode_starts)), traj)
        originals = [instruction_of(traj, e) for e in range(len(traj.meta.episode_starts))]
        _assert_same(relabel_episodes(traj, originals), traj)
    with pytest.raises(ValueError):
        relabel_episodes(traj, [None])  # (the last one is a trial)


def test_non_goal_trajectories_pass_through_untouched(make_trajectory):
    cfg = EnvConfig(id="amago/TMaze-v0")
    env, spec = make_env(cfg, seed=0), env_spec(cfg)
    tmaze = [rollout(env, spec, lambda o, i: 0) for _ in range(3)]
    for strategy, amount in STRATEGIES:
        relabel = get_relabeler("hindsight", p_relabel=1.0, strategy=strategy, amount=amount)
        for traj in [*tmaze, make_trajectory(12)]:
            rng = np.random.default_rng(3)
            assert relabel(traj, rng) is traj
            assert rng.random() == np.random.default_rng(3).random()  # no draw taken


def test_p_relabel_zero_is_the_identity_and_p_draws_per_trajectory():
    none = get_relabeler("hindsight", p_relabel=0.0)
    rng = np.random.default_rng(0)
    for traj, _ in _dataset():
        assert none(traj, rng) is traj
    assert rng.random() == np.random.default_rng(0).random()
    # p = 0.5: about half of the trajectories (that "all" would change) come out relabeled
    half = get_relabeler("hindsight", p_relabel=0.5, amount="all")
    full = get_relabeler("hindsight", p_relabel=1.0, amount="all")
    changeable = [t for t, _ in _dataset() if full(t, np.random.default_rng(0)) is not t]
    rng = np.random.default_rng(1)
    frac = np.mean([half(t, rng) is not t for t in changeable for _ in range(4)])
    assert 0.4 < frac < 0.6


@pytest.mark.parametrize("strategy, amount", STRATEGIES)
def test_deterministic_for_a_seed_and_input_never_written(strategy, amount):
    relabel = get_relabeler("hindsight", p_relabel=0.8, strategy=strategy, amount=amount)
    data = [t for t, _ in _dataset()]
    before = [{k: v.copy() for k, v in t.arrays().items()} for t in data]
    for t in data:  # the sampler's decoded arrays are read-only: a write would raise
        assert not any(v.flags.writeable for v in t.arrays().values())
    runs = [[relabel(t, rng) for t in data] for rng in map(np.random.default_rng, (5, 5, 6))]
    for a, b in zip(runs[0], runs[1]):
        _assert_same(a, b)
    assert any(
        len(a) != len(b) or not np.array_equal(a.obs[GOALS_KEY], b.obs[GOALS_KEY])
        for a, b in zip(runs[0], runs[2])
    )
    for t, saved in zip(data, before):
        for k, v in t.arrays().items():
            np.testing.assert_array_equal(v, saved[k], err_msg=k)


@pytest.mark.parametrize("kwargs, gain", [({}, 2.0), ({"amount": "all"}, 3.0)])
def test_relabeling_makes_the_sparse_task_rewarding(kwargs, gain):
    """A random policy rarely completes GoalGrid's instruction; relabeled, it often does.
    (Defaults: p_relabel 0.8, "final", "some"; about 1.4% of raw timesteps are rewarded, at
    most 2 of the ~40 steps of an episode can be.)"""
    data = [t for t, src in _dataset() if len(src) == 1]
    relabel = get_relabeler("hindsight", **kwargs)
    rng = np.random.default_rng(0)
    out = [relabel(t, rng) for t in data for _ in range(3)]

    def rewarded(trajs):
        steps = sum(len(t) - 1 for t in trajs)
        return sum(float((t.prev_reward[1:] > 0).sum()) for t in trajs) / steps

    def success(trajs):
        return float(np.mean([t.terminated[-1] for t in trajs]))

    assert rewarded(out) > gain * rewarded(data)
    assert success(out) > (gain + 1.0) * success(data)


def test_config_validation_and_registry():
    assert "hindsight" in relabeler_names()
    assert isinstance(get_relabeler("hindsight"), HindsightRelabeler)
    for kwargs, field in [
        ({"p_relabel": 1.5}, "relabel_kwargs.p_relabel"),
        ({"p_relabel": -0.1}, "relabel_kwargs.p_relabel"),
        ({"strategy": "episode"}, "relabel_kwargs.strategy"),
        ({"amount": "most"}, "relabel_kwargs.amount"),
        ({"p": 0.5}, "relabel_kwargs"),
    ]:
        with pytest.raises(ConfigError) as err:
            make_hindsight(**kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError):
        HindsightRelabeler(HindsightConfig(strategy="nope"))


# --------------------------------------------------------------------------------------------
# a real TrialWrapper rollout: TaskSampler goal env, 2 goals per step, a step penalty
# --------------------------------------------------------------------------------------------

register_goal_reward_fn("test_relabel_penalty", SequentialGoalReward(step_reward=-0.25))


class Ring(gym.Env):
    """Walk on a ring of ``size`` cells; each step achieves [cell] and [parity + 100]. The
    task (TaskSampler) is the instruction: 2 cells to visit in order."""

    def __init__(self, size: int = 6):
        self.size = size
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.goal_spec = GoalSpec(2, 1, max_achieved=2, reward_fn="test_relabel_penalty")
        self.max_episode_steps = 12
        self._pinned, self.task, self.x = None, np.zeros(2), 0

    def sample_task(self, rng):
        return rng.choice(self.size, size=2, replace=False).astype(float)

    def set_task(self, task):
        self._pinned = task

    def instruction(self):
        return np.asarray(self.task, np.float32).reshape(2, 1)

    def achieved_goals(self):
        return np.array([[self.x], [100 + self.x % 2]], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task = self.sample_task(self.np_random) if self._pinned is None else self._pinned
        self.x = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.x = (self.x + (1 if int(action) else -1)) % self.size
        return np.array([self.x / self.size], np.float32), 0.0, False, False, {}


gym.register("test/RelabelRing-v0", entry_point=Ring)


@pytest.mark.parametrize("strategy", ["final", "future"])
def test_real_trials_with_several_goals_per_step(strategy):
    cfg = EnvConfig(id="test/RelabelRing-v0", trial_episodes=3)
    env, spec = make_env(cfg, seed=0), env_spec(cfg)
    rng = np.random.default_rng(0)
    relabeler = HindsightRelabeler(HindsightConfig(p_relabel=1.0, strategy=strategy, amount="all"))
    changed = 0
    for i in range(30):
        traj = decode(encode(rollout(env, spec, lambda o, info: int(rng.random() < 0.7))))
        assert len(traj.meta.episode_starts) == 3
        plans = relabeler.plan(traj, np.random.default_rng(i))
        _check_plan(traj, plans, strategy)
        new = relabeler(traj, np.random.default_rng(i))
        _assert_same(recompute_goal_rewards(new), new)
        assert len(new.meta.episode_starts) == 3
        np.testing.assert_array_equal(new.time_idx, np.arange(len(new)))
        flag = np.zeros(len(new), np.float32)
        flag[new.meta.episode_starts] = 1.0
        np.testing.assert_array_equal(new.obs["episode_start"][:, 0], flag)
        assert not new.terminated[:-1].any() and new.terminated[-1] and not new.truncated.any()
        for e, (s, obs_stop, stop) in enumerate(episode_bounds(new)):
            p = plans[e]
            np.testing.assert_array_equal(
                new.obs[GOALS_KEY][s:obs_stop], np.tile(p.instruction.ravel(), (obs_stop - s, 1))
            )
            # the env's rules by hand: -0.25 a step, +1 for the next goal among the 2 achieved
            active, expect = 0, []
            for a_row, m_row in zip(
                new.extras[ACHIEVED_KEY][s + 1 : stop], new.extras[ACHIEVED_MASK_KEY][s + 1 : stop]
            ):
                hit = active < 2 and any(
                    m and a[0] == p.instruction[active, 0] for a, m in zip(a_row, m_row)
                )
                expect.append(1.0 if hit else -0.25)
                active += int(hit)
            np.testing.assert_array_equal(new.prev_reward[s + 1 : stop], expect)
            if active == 2:  # completed: at the episode's last transition, nothing after it
                assert expect[-1] == 1.0 and expect.count(1.0) == 2
        changed += new is not traj
    assert changed > 10


# --------------------------------------------------------------------------------------------
# through the real Sampler (fakeredis), configured by name
# --------------------------------------------------------------------------------------------


def _sampler_batches(relabel: str, kwargs: dict, trajs: list[Trajectory], n: int, L: int = 16):
    client = fakeredis.FakeRedis()
    cfg = ReplayConfig(
        redis=RedisConfig(namespace=f"t{uuid.uuid4().hex[:10]}"),
        relabel=relabel,
        relabel_kwargs=kwargs,
    )
    store = ReplayStore(client, cfg)
    for t in trajs:
        store.insert(t)
    sampler = Sampler(client, cfg, SampleShape(batch_size=24, max_seq_len=L), seed=11)
    batches = [sampler.sample(timeout_s=1) for _ in range(n)]
    assert sampler.stats().corrupt == {}  # every relabeled trajectory fit the batch layout
    return batches


def _check_windows(batches, k: int, trial: bool) -> None:
    """Right-padded masks, zero padding, and goals/progress/rewards/flags that agree."""
    for b in batches:
        B, L = b.shape
        real = b.mask.sum(axis=1)
        assert (real >= 1).all()
        np.testing.assert_array_equal(b.mask, np.arange(L) < real[:, None])  # right-padded
        pad = ~b.mask
        assert not b.prev_reward[pad].any() and not b.terminated[pad].any()
        assert not b.truncated[pad].any() and not b.obs[PROGRESS_KEY][pad].any()
        for i in range(B):
            w = real[i]
            goals, progress = b.obs[GOALS_KEY][i, :w], b.obs[PROGRESS_KEY][i, :w].sum(axis=1)
            new_ep = np.zeros(w, bool)
            if trial:
                new_ep = b.obs["episode_start"][i, :w, 0] == 1.0
                assert (progress[new_ep] == 0).all()
            for t in range(1, w):
                if not new_ep[t]:  # same episode: the same goals, one more reached per reward
                    assert (goals[t] == goals[t - 1]).all()
                    assert progress[t] - progress[t - 1] == b.prev_reward[i, t]
                else:  # the reward of the previous episode's last step
                    assert b.prev_reward[i, t] in (0.0, 1.0)
            assert not b.terminated[i, : w - 1].any() and not b.truncated[i, : w - 1].any()
            if b.terminated[i, w - 1] and not trial:
                assert progress[-1] == k and b.prev_reward[i, w - 1] == 1.0
            if not trial and not b.terminated[i, w - 1]:
                assert progress[-1] < k


def _rewarded(batches) -> float:
    return sum(float((b.prev_reward > 0).sum()) for b in batches) / sum(
        float(b.mask.sum()) for b in batches
    )


@pytest.mark.parametrize("trial", [False, True])
def test_sampler_applies_hindsight_from_config_with_consistent_windows(trial):
    data = [t for t, src in _dataset() if (len(src) > 1) == trial][:60]
    kwargs = {"p_relabel": 1.0, "amount": "all"}
    relabeled = _sampler_batches("hindsight", kwargs, data, 25)
    _check_windows(relabeled, k=2, trial=trial)
    plain = _sampler_batches("none", {}, data, 25)
    _check_windows(plain, k=2, trial=trial)
    # relabeling shows in the batches: far more rewarded timesteps than the raw data has
    assert _rewarded(relabeled) > 2.0 * _rewarded(plain)


def test_sampler_with_p_relabel_zero_gives_the_same_batches_as_none():
    data = [t for t, src in _dataset() if len(src) == 1][:30]
    a = _sampler_batches("hindsight", {"p_relabel": 0.0}, data, 5)
    b = _sampler_batches("none", {}, data, 5)
    for x, y in zip(a, b):
        for f in dataclasses.fields(x):
            va, vb = getattr(x, f.name), getattr(y, f.name)
            if isinstance(va, dict):
                for key in va:
                    np.testing.assert_array_equal(va[key], vb[key])
            else:
                np.testing.assert_array_equal(va, vb)


# --------------------------------------------------------------------------------------------
# malformed goal records never crash the sampler (skipped, counted, dropped at the 2nd failure)
# --------------------------------------------------------------------------------------------


def _with(traj: Trajectory, tag: int, info: dict | None = None, **arrays) -> Trajectory:
    """A copy of ``traj`` (actor_id ``tag``) with some arrays (flat names) or info replaced."""
    a = dict(traj.arrays())
    a.update(arrays)
    meta = dataclasses.replace(traj.meta, actor_id=tag, info=dict(traj.meta.info, **(info or {})))
    return Trajectory.from_arrays(a, meta)


def _malformed_goal_records(t: Trajectory) -> list[Trajectory]:
    n = len(t)
    m = t.extras[ACHIEVED_KEY].shape[1]
    return [
        # zero-width achieved goals (G = 0: a division by zero in goal_shape)
        _with(t, 901, **{"extras/" + ACHIEVED_KEY: np.zeros((n, m, 0), np.float32)}),
        # a reward function nobody registered (KeyError)
        _with(t, 902, info={"goal_reward_fn": "no_such_reward_fn"}),
        # an instruction that is not a whole number of goals (ValueError in reshape)
        _with(t, 903, **{"obs/" + GOALS_KEY: np.ascontiguousarray(t.obs[GOALS_KEY][:, :-1])}),
    ]


@pytest.mark.parametrize("with_spec", [False, True])
def test_malformed_goal_records_are_skipped_counted_and_dropped(with_spec):
    singles = [t for t, src in _dataset() if len(src) == 1][:20]
    bad = _malformed_goal_records(singles[0])
    for b in bad:
        with pytest.raises((ValueError, KeyError, ZeroDivisionError)):
            HindsightRelabeler(HindsightConfig(p_relabel=1.0))(b, np.random.default_rng(0))
    client = fakeredis.FakeRedis()
    cfg = ReplayConfig(
        redis=RedisConfig(namespace=f"t{uuid.uuid4().hex[:10]}"),
        relabel="hindsight",
        relabel_kwargs={"p_relabel": 1.0, "amount": "all"},
    )
    store = ReplayStore(client, cfg)
    for t in [bad[0], *singles[:10], bad[1], *singles[10:], bad[2]]:
        store.insert(t)
    spec = env_spec(EnvConfig(id="amago/GoalGrid-v0", kwargs=GRID_KW)) if with_spec else None
    shape = SampleShape(batch_size=24, max_seq_len=16)
    sampler = Sampler(client, cfg, shape, seed=3, spec=spec)
    batches = [sampler.sample(timeout_s=1) for _ in range(30)]  # never raises
    _check_windows(batches, k=2, trial=False)
    s = store.stats()
    assert (s.trajectories, s.dropped_trajectories) == (20, 3)
    # without a spec all three fail in the relabeler; with one, the two mis-shaped records
    # are refused before relabeling
    assert s.corrupt == ({"schema": 4, "relabel": 2} if with_spec else {"relabel": 6})
    assert s.timesteps == sum(len(t) for t in singles)
