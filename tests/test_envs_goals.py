"""Goal-conditioned API (common/goals.py) and the GoalGrid task."""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import pytest

from common.codec import decode, encode
from common.envs import EnvConfig, env_spec, make_env, rollout
from common.envs.goal_grid import MOVES, GoalGrid, _connected
from common.goals import (
    ACHIEVED_KEY,
    ACHIEVED_MASK_KEY,
    GOALS_KEY,
    PROGRESS_KEY,
    GoalSpec,
    SequentialGoalReward,
    achieved_events,
    episode_bounds,
    get_goal_reward_fn,
    goal_shape,
    instruction_of,
    recompute_goal_rewards,
    register_goal_reward_fn,
    relabel_instruction,
    replay_goals,
)
from common.records import Trajectory


def _bfs_actions(env: GoalGrid, target, avoid) -> list[int] | None:
    """Shortest action sequence from the agent to ``target`` that avoids walls and ``avoid``."""
    n = env.size
    start, target = tuple(int(v) for v in env.pos), tuple(int(v) for v in target)
    blocked = {tuple(int(v) for v in c) for c in avoid} - {target}
    prev = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == target:
            break
        for a, (dx, dy) in enumerate(MOVES):
            nxt = (cell[0] + dx, cell[1] + dy)
            if (
                0 <= nxt[0] < n
                and 0 <= nxt[1] < n
                and not env.walls[nxt]
                and nxt not in blocked
                and nxt not in prev
            ):
                prev[nxt] = (cell, a)
                queue.append(nxt)
    if target not in prev:
        return None
    actions, cell = [], target
    while prev[cell] is not None:
        cell, a = prev[cell]
        actions.append(a)
    return actions[::-1]


def _plan_visits(env: GoalGrid, types) -> list[int] | None:
    """Actions visiting the objects of ``types`` in order, never touching any other object."""
    saved = env.pos.copy()
    plan = []
    for kind in types:
        others = [c for i, c in enumerate(env.object_cells) if i != kind]
        leg = _bfs_actions(env, env.object_cells[kind], others)
        if leg is None:
            env.pos = saved
            return None
        plan += leg
        env.pos = env.object_cells[kind].copy()
    env.pos = saved
    return plan


def _in_order_policy(env: GoalGrid):
    """Visits the instruction's objects in order (planned at each episode start)."""
    plan: list[int] = []

    def act(obs, info):
        if info.get("episode_start"):
            plan[:] = _plan_visits(env, env.instruction_types) or []
        return plan.pop(0) if plan else 0

    return act


GRID = EnvConfig(id="amago/GoalGrid-v0")


def test_goal_grid_layouts_are_new_every_episode_and_connected():
    env = GoalGrid()
    layouts = set()
    for seed in range(40):
        env.reset(seed=seed)
        assert env.walls.sum() == env.num_obstacles
        assert _connected(~env.walls)
        cells = {tuple(c) for c in env.object_cells} | {tuple(env.pos)}
        assert len(cells) == env.num_types + 1
        assert not any(env.walls[c] for c in cells)
        kinds = sorted(env.objects[env.objects >= 0])
        assert kinds == list(range(env.num_types))
        assert len(set(env.instruction_types)) == env.num_goals
        layouts.add((env.walls.tobytes(), env.object_cells.tobytes(), tuple(env.pos)))
    assert len(layouts) == 40
    # unseeded resets also change the layout
    env.reset(seed=0)
    first = env.walls.tobytes() + env.object_cells.tobytes()
    env.reset()
    assert env.walls.tobytes() + env.object_cells.tobytes() != first


def test_goal_grid_observation_encodes_the_grid():
    env = GoalGrid(size=4, num_object_types=2, num_goals=1, num_obstacles=2)
    obs, _ = env.reset(seed=3)
    grid = obs.reshape(4, 4, env.channels)
    np.testing.assert_array_equal(grid[..., 0], env.walls)
    assert grid[..., 1].sum() == 1 and grid[tuple(env.pos)][1] == 1
    for kind, cell in enumerate(env.object_cells):
        assert grid[tuple(cell)][2 + kind] == 1 and grid[..., 2 + kind].sum() == 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_goals_in_order_pay_one_each_and_end_the_episode(k):
    env = make_env(EnvConfig(id="amago/GoalGrid-v0", kwargs={"num_goals": k}), seed=0)
    base = env.unwrapped
    done_runs = 0
    for _ in range(20):
        obs, info = env.reset()
        plan = _plan_visits(base, base.instruction_types)
        if plan is None or len(plan) > base.max_steps:
            continue
        done_runs += 1
        np.testing.assert_array_equal(obs[GOALS_KEY], base.instruction().reshape(-1))
        rewards, progress = [], [obs[PROGRESS_KEY].copy()]
        for i, a in enumerate(plan):
            obs, r, term, trunc, info = env.step(a)
            rewards.append(r)
            progress.append(obs[PROGRESS_KEY].copy())
            assert term == (i == len(plan) - 1)
        assert sum(rewards) == k and info["success"] and not trunc
        hits = np.flatnonzero(rewards)
        assert len(hits) == k and hits[-1] == len(plan) - 1
        np.testing.assert_array_equal(np.array(progress).sum(axis=1)[hits + 1], np.arange(1, k + 1))
    assert done_runs >= 15


def test_goals_out_of_order_pay_nothing():
    env = make_env(GRID, seed=1)
    base = env.unwrapped
    checked = 0
    for _ in range(30):
        env.reset()
        first, second = base.instruction_types
        # visit the 2nd goal, then the 1st, then the 2nd again
        plan_a = _plan_visits(base, [second])
        if plan_a is None:
            continue
        legs = []
        for a in plan_a:
            _, r, term, _, info = env.step(a)
            legs.append(r)
            assert not term
        assert sum(legs) == 0.0 and info["goals_reached"] == 0
        assert info["extras"][ACHIEVED_MASK_KEY][0]  # achieved, but out of order
        plan_b = _plan_visits(base, [first, second])
        if plan_b is None or len(plan_a) + len(plan_b) > base.max_steps:
            continue
        rewards = [env.step(a)[1] for a in plan_b]
        assert sum(rewards) == 2.0
        checked += 1
    assert checked >= 10


def _random_grid_trajs(count, seed=0, **kwargs):
    cfg = EnvConfig(id="amago/GoalGrid-v0", kwargs=kwargs)
    env, spec = make_env(cfg, seed=seed), env_spec(cfg)
    rng = np.random.default_rng(seed)
    return [rollout(env, spec, lambda o, i: int(rng.integers(4))) for _ in range(count)]


def _assert_same(a: Trajectory, b: Trajectory):
    assert a.arrays().keys() == b.arrays().keys()
    for key in a.arrays():
        np.testing.assert_array_equal(a.arrays()[key], b.arrays()[key], err_msg=key)
    assert a.meta == b.meta


def test_recompute_reproduces_the_env_rewards_exactly():
    trajs = _random_grid_trajs(60) + _random_grid_trajs(30, seed=1, num_goals=3, size=4)
    assert sum(t.total_return > 0 for t in trajs) > 10  # some goals were reached
    for traj in trajs:
        assert traj.meta.info["goal_reward_fn"] == "exact"
        again = recompute_goal_rewards(traj)
        _assert_same(again, traj)
        # what the replay service holds: decoded read-only arrays
        stored = decode(encode(traj))
        _assert_same(recompute_goal_rewards(stored), traj)
        _assert_same(relabel_instruction(stored, instruction_of(stored)), traj)


def test_relabel_with_goals_achieved_later_makes_a_success():
    relabeled = 0
    for traj in _random_grid_trajs(60, seed=2):
        k, g = goal_shape(traj)
        times, goals = achieved_events(traj)
        if traj.terminated[-1]:
            continue  # already a success
        # the first k events with distinct consecutive goals, in time order
        picked_t, picked_g = [], []
        for t, goal in zip(times, goals):
            if not picked_g or not np.array_equal(goal, picked_g[-1]):
                picked_t.append(int(t))
                picked_g.append(goal)
            if len(picked_g) == k:
                break
        if len(picked_g) < k:
            continue
        new = relabel_instruction(traj, np.stack(picked_g))
        relabeled += 1
        end = picked_t[-1]
        assert len(new) == end + 1  # cut where the new instruction is completed
        assert new.terminated[-1] and not new.terminated[:-1].any() and not new.truncated.any()
        assert new.total_return == k
        np.testing.assert_array_equal(np.flatnonzero(new.prev_reward), picked_t)
        np.testing.assert_array_equal(
            new.obs[GOALS_KEY], np.tile(np.stack(picked_g).ravel(), (end + 1, 1))
        )
        assert new.obs[PROGRESS_KEY][-1].sum() == k
        for key in ("observation",):  # the rest is the original data
            np.testing.assert_array_equal(new.obs[key], traj.obs[key][: end + 1])
        np.testing.assert_array_equal(new.prev_action, traj.prev_action[: end + 1])
        assert traj.total_return == recompute_goal_rewards(traj).total_return  # input untouched
    assert relabeled >= 20


def test_relabel_away_from_a_success_truncates_instead_of_terminating():
    env, spec = make_env(GRID, seed=4), env_spec(GRID)
    policy = _in_order_policy(env.unwrapped)
    traj = next(t for t in (rollout(env, spec, policy) for _ in range(20)) if t.terminated[-1])
    assert traj.terminated[-1] and traj.total_return == 2
    instr = instruction_of(traj)
    unmet = np.zeros_like(instr)  # an all-zero goal is never achieved
    new = relabel_instruction(traj, unmet)
    assert len(new) == len(traj)
    assert not new.terminated.any() and new.truncated[-1]
    assert new.total_return == 0 and new.obs[PROGRESS_KEY].sum() == 0


def test_replay_goals_counts_one_goal_per_transition_in_order():
    fn = get_goal_reward_fn("exact")
    a, b, c = np.eye(3, dtype=np.float32)
    instruction = np.stack([a, b])
    # transitions: achieve b (out of order), a, {a, b} at once, b
    achieved = np.array([[b, c], [a, c], [a, b], [b, c]], dtype=np.float32)
    mask = np.array([[1, 0], [1, 0], [1, 1], [1, 0]], dtype=bool)
    rep = replay_goals(instruction, achieved, mask, fn)
    np.testing.assert_array_equal(rep.hit, [False, True, True, False])
    np.testing.assert_array_equal(rep.progress, [0, 1, 2, 2])
    np.testing.assert_array_equal(rep.reward, [0, 1, 1, 0])
    assert rep.done_index == 2
    masked = replay_goals(instruction, achieved, np.zeros_like(mask), fn)
    assert not masked.hit.any() and masked.done_index is None
    resumed = replay_goals(instruction, achieved, mask, fn, start_progress=1)
    np.testing.assert_array_equal(resumed.hit, [True, False, False, False])
    np.testing.assert_array_equal(resumed.progress, [2, 2, 2, 2])


def test_reward_fn_registry():
    assert isinstance(get_goal_reward_fn("exact"), SequentialGoalReward)
    with pytest.raises(KeyError, match="exact"):
        get_goal_reward_fn("no-such-fn")
    fn = SequentialGoalReward(atol=0.5)
    register_goal_reward_fn("test_registry_fn", fn)
    register_goal_reward_fn("test_registry_fn", fn)  # idempotent
    assert get_goal_reward_fn("test_registry_fn") is fn
    with pytest.raises(ValueError):
        register_goal_reward_fn("test_registry_fn", SequentialGoalReward())
    with pytest.raises(TypeError):
        register_goal_reward_fn("not_a_fn", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GoalSpec(num_goals=0, goal_dim=1)


# --------------------------------------------------------------------------------------------
# a user-made goal env: auto-wrapped by the factory, several achieved goals per step, a custom
# reward function, and meta-RL trials (episode boundaries inside one trajectory)
# --------------------------------------------------------------------------------------------

_PENALTY = SequentialGoalReward(goal_reward=1.0, step_reward=-0.125)
register_goal_reward_fn("test_line_penalty", _PENALTY)
THREES = 100.0  # the extra goal achieved on every cell that is a multiple of 3


class LineGoals(gym.Env):
    """Walk on cells 0..L-1; each step achieves its cell [x] and, on multiples of 3, [THREES].
    The task (a TaskSampler) is the instruction: k cells to visit in order."""

    def __init__(self, length: int = 7, num_goals: int = 2):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)  # 0 left, 1 right
        self.goal_spec = GoalSpec(num_goals, 1, max_achieved=2, reward_fn="test_line_penalty")
        self.max_episode_steps = 3 * length
        self._pinned = None
        self.x = 0

    def sample_task(self, rng):
        return rng.choice(self.length, size=self.goal_spec.num_goals, replace=False).astype(float)

    def set_task(self, task):
        self._pinned = None if task is None else np.asarray(task, dtype=float)

    def instruction(self):
        return self.task.reshape(-1, 1)

    def achieved_goals(self):
        goals = [[self.x]] + ([[THREES]] if self.x % 3 == 0 else [])
        return np.array(goals, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task = self.sample_task(self.np_random) if self._pinned is None else self._pinned
        self.x = self.length // 2
        return np.array([self.x / self.length], np.float32), {}

    def step(self, action):
        self.x = int(np.clip(self.x + (1 if int(action) == 1 else -1), 0, self.length - 1))
        return np.array([self.x / self.length], np.float32), 5.0, False, False, {}


gym.register("test/LineGoals-v0", entry_point=LineGoals)


def test_user_goal_env_in_trials_recomputes_exactly():
    cfg = EnvConfig(id="test/LineGoals-v0", trial_episodes=3)
    env, spec = make_env(cfg, seed=0), env_spec(cfg)
    assert spec.goal_keys == (GOALS_KEY, PROGRESS_KEY)
    assert spec.extras[ACHIEVED_KEY].shape == (2, 1)
    assert spec.max_episode_steps == 3 * 21
    rng = np.random.default_rng(0)
    successes = 0
    for _ in range(40):
        traj = rollout(env, spec, lambda o, i: int(rng.random() < 0.5))
        assert traj.meta.info == {
            "goal_reward_fn": "test_line_penalty",
            "num_goals": 2,
            "trial_episodes": 3,
        }
        bounds = episode_bounds(traj)
        assert len(bounds) == 3
        instructions = [instruction_of(traj, e) for e in range(3)]
        assert all(np.array_equal(instructions[0], x) for x in instructions)  # task kept
        assert not traj.extras[ACHIEVED_MASK_KEY][0].any()  # a reset achieves nothing
        for start, _, _ in bounds:
            assert traj.obs[PROGRESS_KEY][start].sum() == 0  # fresh progress each episode
            # a boundary timestep carries the last transition of the previous episode
            assert start == 0 or traj.extras[ACHIEVED_MASK_KEY][start][0]
        # rewards are goal rewards only (the env's own 5.0 is ignored)
        assert set(np.round(traj.prev_reward[1:], 6)) <= {1.0, -0.125}
        successes += int((traj.prev_reward == 1.0).sum() >= 2)
        _assert_same(recompute_goal_rewards(traj), traj)
        _assert_same(recompute_goal_rewards(decode(encode(traj))), traj)
        times, goals = achieved_events(traj, episode=1)
        s1, _, t1 = bounds[1]
        assert times.min() > s1 and times.max() < t1
        assert THREES in goals[:, 0]
        with pytest.raises(ValueError):
            relabel_instruction(traj, instructions[0])
    assert successes > 5


def test_goal_grid_relative_observation_points_at_the_objects():
    from common.envs.goal_grid import MOVES, GoalGrid

    env = GoalGrid(size=6, num_object_types=3, num_obstacles=3, observation="relative")
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        rel = obs[4:].reshape(3, 2) * 5
        np.testing.assert_allclose(env.pos + rel, env.object_cells, atol=1e-5)
        for a, blocked in enumerate(obs[:4]):
            before = env.pos.copy()
            env.step(a)
            moved = not np.array_equal(env.pos, before)
            assert moved == (not blocked)
            if moved:
                np.testing.assert_array_equal(env.pos, before + MOVES[a])
                env.pos = before  # undo the move (test only) to try the next direction
