"""Goal-conditioned tasks with k-goal instructions, built so rewards can be recomputed later.

An *instruction* is a sequence of k goals ``(k, G)`` ("reach goal 1, then goal 2, ..."); a goal
is a float32 vector of length G (e.g. a one-hot object type, or a position). Goals count only
in order: a transition *hits* when one of the goals it achieved satisfies the instruction's
first not-yet-reached goal (at most one goal per transition). The episode terminates when all k
are reached. Rewards are a function of (achieved goals, instruction progress) only, computed
by a :class:`GoalRewardFn` looked up by name, so the replay service can replay them from the
stored arrays — and replace the instruction with goals achieved later (hindsight relabeling).

Arrays (names are the constants below; time alignment as in :mod:`common.records`):

``obs["goals"][t]``           float32 ``(k * G,)`` the instruction, flattened (row i = goal i);
                              constant within an episode. Reshape with ``(k, G)``.
``obs["goal_progress"][t]``   float32 ``(k,)`` 1.0 for the goals already reached when o_t is
                              observed, 0.0 for the rest (no magic values).
``extras["achieved"][t]``     float32 ``(M, G)`` goals achieved by the transition *into* o_t
                              (i.e. by a_{t-1}, aligned with ``prev_reward[t]``), padded to M.
``extras["achieved_mask"][t]`` bool ``(M,)`` which rows of ``achieved[t]`` are real; all False
                              at an episode's first timestep (a reset achieves nothing).
``meta.info["goal_reward_fn"]`` registry name of the reward function; ``meta.info["num_goals"]``
                              is k (G is ``extras["achieved"].shape[-1]``).

Hence ``prev_reward[t] = fn.reward(hit[t], progress_before[t], k)`` for every transition t of an
episode, where ``hit`` and ``progress`` come from replaying ``achieved``/``achieved_mask``
against the instruction (:func:`replay_goals`); :func:`recompute_goal_rewards` does it for a
whole stored trajectory and :func:`relabel_instruction` swaps in a new instruction
(:func:`relabel_episodes`: one per episode of a meta-RL trial).

Making your own env goal-conditioned
------------------------------------
1. Implement :class:`GoalTask` on the (unwrapped) env: a ``goal_spec`` attribute
   (:class:`GoalSpec`: k, G, M, the reward function's name), ``instruction()`` returning the
   current episode's ``(k, G)`` goals (called right after ``reset``) and ``achieved_goals()``
   returning the ``(m, G)`` goals (m <= M) achieved by the last ``step`` (e.g. the object the
   agent now stands on; ``(0, G)`` when none). Its own reward is ignored (kept in
   ``info["env_reward"]``); its own ``terminated`` still ends the episode.
2. If the default :class:`SequentialGoalReward` (exact match, 1.0 per goal) does not fit,
   register your reward function under a new name with :func:`register_goal_reward_fn` in a
   module that both the rollout actors and the replay service import, and name it in
   ``goal_spec.reward_fn``.
3. ``common.envs.make_env`` wraps any :class:`GoalTask` env in
   :class:`common.envs.goal_wrapper.GoalConditioned` (or wrap it yourself); the wrapper adds
   the observation keys, the extras and the trajectory info.

This module is plain numpy (no gymnasium): the replay service relabels with it without loading
the env suite. The gym wrapper lives in :mod:`common.envs.goal_wrapper`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from common.records import Trajectory

GOALS_KEY = "goals"
PROGRESS_KEY = "goal_progress"
ACHIEVED_KEY = "achieved"
ACHIEVED_MASK_KEY = "achieved_mask"
META_REWARD_FN = "goal_reward_fn"
META_NUM_GOALS = "num_goals"


@dataclass(frozen=True)
class GoalSpec:
    """Shape of a task's goals and the name of its reward function."""

    num_goals: int  # k: goals per instruction
    goal_dim: int  # G: length of one goal vector
    max_achieved: int = 1  # M: most goals a single transition can achieve
    reward_fn: str = "exact"  # registry name of the GoalRewardFn (see get_goal_reward_fn)
    low: float = -math.inf  # lower bound of every goal entry (observation space)
    high: float = math.inf  # upper bound of every goal entry (observation space)

    def __post_init__(self) -> None:
        for name in ("num_goals", "goal_dim", "max_achieved"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GoalSpec.{name} must be >= 1, got {getattr(self, name)}")


@runtime_checkable
class GoalTask(Protocol):
    """What an env provides to become goal-conditioned (see the module doc)."""

    goal_spec: GoalSpec

    def instruction(self) -> np.ndarray:
        """``(k, G)`` goals of the current episode, in the order they must be reached."""

    def achieved_goals(self) -> np.ndarray:
        """``(m, G)``, m <= M: the goals achieved by the last transition."""


@runtime_checkable
class GoalRewardFn(Protocol):
    """Turns achieved goals and instruction progress into rewards (vectorised, pure)."""

    def reached(self, achieved: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """``achieved (..., G)`` vs one ``goal (G,)`` -> ``(...)`` bool: goal satisfied."""

    def reward(self, hit: np.ndarray, progress: np.ndarray, num_goals: int) -> np.ndarray:
        """``hit (n,)`` bool (the transition reached the active goal), ``progress (n,)`` int
        (goals completed before it) -> ``(n,)`` float32 rewards."""


@dataclass(frozen=True)
class SequentialGoalReward:
    """A goal is reached when an achieved goal equals it within ``atol`` (every entry);
    a hit pays ``goal_reward``, any other transition ``step_reward``."""

    atol: float = 0.0  # per-entry tolerance of the goal match
    goal_reward: float = 1.0  # reward for reaching the instruction's next goal
    step_reward: float = 0.0  # reward of every other transition (e.g. a small time penalty)

    def reached(self, achieved: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return np.all(np.abs(achieved - goal) <= self.atol, axis=-1)

    def reward(self, hit: np.ndarray, progress: np.ndarray, num_goals: int) -> np.ndarray:
        return np.where(hit, self.goal_reward, self.step_reward).astype(np.float32)


_REWARD_FNS: dict[str, GoalRewardFn] = {"exact": SequentialGoalReward()}


def register_goal_reward_fn(name: str, fn: GoalRewardFn) -> None:
    """Make ``fn`` available under ``name`` (re-registering the same object is a no-op)."""
    if not isinstance(fn, GoalRewardFn):
        raise TypeError(f"{fn!r} does not implement GoalRewardFn (reached, reward)")
    if _REWARD_FNS.get(name, fn) is not fn:
        raise ValueError(f"goal reward function {name!r} is already registered")
    _REWARD_FNS[name] = fn


def get_goal_reward_fn(name: str) -> GoalRewardFn:
    """The reward function registered under ``name`` (KeyError naming the known ones)."""
    try:
        return _REWARD_FNS[name]
    except KeyError:
        raise KeyError(
            f"unknown goal reward function {name!r}; registered: {sorted(_REWARD_FNS)}"
        ) from None


# --------------------------------------------------------------------------------------------
# replaying achieved goals against an instruction (the one implementation of the reward logic)
# --------------------------------------------------------------------------------------------


@dataclass
class GoalReplay:
    """Per-transition outcome of one episode under one instruction (n transitions)."""

    hit: np.ndarray  # (n,) bool: transition i reached the goal that was active
    progress: np.ndarray  # (n,) int64: goals completed after transition i
    reward: np.ndarray  # (n,) float32
    num_goals: int  # k

    @property
    def done_index(self) -> int | None:
        """Index of the transition that completed the whole instruction, if any."""
        idx = np.flatnonzero(self.progress >= self.num_goals)
        return int(idx[0]) if idx.size else None


def replay_goals(
    instruction: np.ndarray,
    achieved: np.ndarray,
    mask: np.ndarray,
    fn: GoalRewardFn,
    start_progress: int = 0,
) -> GoalReplay:
    """Replay ``n`` transitions' achieved goals ``(n, M, G)`` / ``mask (n, M)`` against
    ``instruction (k, G)``, the first ``start_progress`` goals being already reached: goal j is
    hit at the first transition after goal j-1's hit that achieved it. This is the one
    implementation of the goal logic: :class:`~common.envs.goal_wrapper.GoalConditioned`
    calls it for each step
    (n = 1) and the replay service for whole episodes, so both agree exactly."""
    n, k = achieved.shape[0], instruction.shape[0]
    hit = np.zeros(n, dtype=bool)
    t0 = 0 if mask.any() else n  # nothing achieved: nothing to match
    for j in range(start_progress, k):
        if t0 >= n:
            break
        ok = (fn.reached(achieved[t0:], instruction[j]) & mask[t0:]).any(axis=-1)  # (n - t0,)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            break
        hit[t0 + idx[0]] = True
        t0 += int(idx[0]) + 1
    progress = start_progress + np.cumsum(hit, dtype=np.int64)
    reward = np.asarray(fn.reward(hit, progress - hit, k), dtype=np.float32)
    return GoalReplay(hit=hit, progress=progress, reward=reward, num_goals=k)


# --------------------------------------------------------------------------------------------
# stored trajectories: recompute, relabel
# --------------------------------------------------------------------------------------------


def goal_shape(traj: Trajectory) -> tuple[int, int]:
    """``(k, G)`` of a goal-conditioned trajectory."""
    g = int(traj.extras[ACHIEVED_KEY].shape[-1])
    return int(traj.obs[GOALS_KEY].shape[-1]) // g, g


def reward_fn_of(traj: Trajectory) -> GoalRewardFn:
    """The reward function named in ``traj.meta.info``."""
    return get_goal_reward_fn(str(traj.meta.info[META_REWARD_FN]))


def episode_bounds(traj: Trajectory) -> list[tuple[int, int, int]]:
    """Per episode ``(start, obs_stop, trans_stop)``: its observations are timesteps
    ``[start, obs_stop)`` and its transitions (``prev_reward``/``extras`` entries) are timesteps
    ``[start + 1, trans_stop)``. Inside a trial the timestep that starts the next episode carries
    the previous episode's last transition, so ``trans_stop = obs_stop + 1`` there."""
    n = len(traj)
    starts = list(traj.meta.episode_starts)
    out = []
    for i, s in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else n
        out.append((s, nxt, min(nxt + 1, n)))
    return out


def instruction_of(traj: Trajectory, episode: int = 0) -> np.ndarray:
    """``(k, G)`` instruction of one episode of a stored trajectory."""
    k, g = goal_shape(traj)
    start = episode_bounds(traj)[episode][0]
    return np.asarray(traj.obs[GOALS_KEY][start], dtype=np.float32).reshape(k, g)


def achieved_events(traj: Trajectory, episode: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every goal achieved in one episode, in time order: ``(times (E,), goals (E, G))`` where
    ``times`` are timestep indices (the transition into that timestep achieved the goal)."""
    start, _, stop = episode_bounds(traj)[episode]
    mask = np.asarray(traj.extras[ACHIEVED_MASK_KEY][start + 1 : stop], dtype=bool)
    t, m = np.nonzero(mask)
    goals = np.asarray(traj.extras[ACHIEVED_KEY][start + 1 : stop], dtype=np.float32)[t, m]
    return (t + start + 1).astype(np.int64), goals


def _replay_all(
    traj: Trajectory, fn: GoalRewardFn
) -> tuple[np.ndarray, np.ndarray, list[GoalReplay]]:
    """Recomputed ``prev_reward`` and progress observations, and each episode's replay."""
    k, g = goal_shape(traj)
    achieved = np.asarray(traj.extras[ACHIEVED_KEY], dtype=np.float32)
    mask = np.asarray(traj.extras[ACHIEVED_MASK_KEY], dtype=bool)
    goals = np.asarray(traj.obs[GOALS_KEY], dtype=np.float32)
    prev_reward = np.array(traj.prev_reward, dtype=np.float32)
    progress_obs = np.zeros((len(traj), k), dtype=np.float32)
    replays = []
    for start, obs_stop, trans_stop in episode_bounds(traj):
        rep = replay_goals(
            goals[start].reshape(k, g),
            achieved[start + 1 : trans_stop],
            mask[start + 1 : trans_stop],
            fn,
        )
        prev_reward[start + 1 : trans_stop] = rep.reward
        counts = np.concatenate([[0], rep.progress])[: obs_stop - start]  # (obs_stop - start,)
        progress_obs[start:obs_stop] = np.arange(k) < counts[:, None]
        replays.append(rep)
    return prev_reward, progress_obs, replays


def recompute_goal_rewards(traj: Trajectory, fn: GoalRewardFn | None = None) -> Trajectory:
    """``traj`` with ``prev_reward`` and ``obs["goal_progress"]`` recomputed from its
    instruction and achieved goals (episode by episode). On data from
    :class:`~common.envs.goal_wrapper.GoalConditioned` this reproduces the stored arrays
    exactly; after editing ``obs["goals"]`` it gives the rewards of the new instruction. Flags
    are left as they are (see :func:`relabel_instruction`). The input is not modified."""
    prev_reward, progress_obs, _ = _replay_all(traj, fn or reward_fn_of(traj))
    obs = dict(traj.obs)
    if PROGRESS_KEY in obs:
        obs[PROGRESS_KEY] = progress_obs
    return dataclasses.replace(traj, obs=obs, prev_reward=prev_reward)


def relabel_instruction(
    traj: Trajectory, instruction: np.ndarray, fn: GoalRewardFn | None = None
) -> Trajectory:
    """``traj`` (one episode) as if the instruction had been ``instruction (k, G)``.

    Replaces ``obs["goals"]`` at every timestep, recomputes rewards and progress, and fixes the
    flags: if the new instruction is completed at timestep t*, the result ends there
    (``terminated[t*]``, later timesteps dropped); otherwise the length is unchanged and the
    last timestep is ``terminated`` only if the env itself terminated there (not by completing
    the original instruction), else ``truncated`` (the relabeled episode would have gone on).
    An env termination on the very step that completed the original instruction is read as
    completion. The input is not modified. Meta-RL trials: :func:`relabel_episodes`.
    """
    if len(traj.meta.episode_starts) != 1:
        raise ValueError(
            "relabel_instruction handles single-episode trajectories only; "
            "use relabel_episodes for meta-RL trials"
        )
    return relabel_episodes(traj, [instruction], fn)


def relabel_episodes(
    traj: Trajectory,
    instructions: Sequence[np.ndarray | None],
    fn: GoalRewardFn | None = None,
) -> Trajectory:
    """``traj`` as if episode e had been given ``instructions[e]`` (``(k, G)``; None keeps the
    stored one). Each episode is replayed on its own transitions only (never across episodes).

    ``obs["goals"]`` is replaced, ``prev_reward`` and ``obs["goal_progress"]`` recomputed.
    Where a new instruction is completed *early*, at timestep t* (the one reached by the
    completing transition) before the episode's last one, nothing after t* belongs to that
    episode any more:

    * the last (or only) episode: the rollout ends at t*; later timesteps are dropped and
      ``terminated[t*]`` is set (for a single episode exactly :func:`relabel_instruction`);
    * an earlier episode of a trial: the trial would have reset the env right there, so the
      episode's timesteps t* .. next start - 1 are dropped and the next episode follows the
      completing transition at once: the new boundary timestep has the next episode's first
      observation with ``prev_action``/``prev_reward``/extras/flags of t* (the trial
      wrapper's own boundary layout). ``time_idx`` is renumbered to stay contiguous (where it
      counted across the dropped timesteps) and ``meta.episode_starts`` moves along.

    Flags otherwise: one episode — as :func:`relabel_instruction`. Trials — unchanged: inner
    boundaries carry no flags and the trial's last timestep stays as stored (the trial wrapper
    ends every trial ``terminated``). Arrays that are only cut are views of the input's; the
    input is not modified.
    """
    starts = list(traj.meta.episode_starts)
    if len(instructions) != len(starts):
        raise ValueError(f"{len(instructions)} instructions for {len(starts)} episodes")
    fn = fn or reward_fn_of(traj)
    k, g = goal_shape(traj)
    n = len(traj)
    bounds = episode_bounds(traj)
    stored = traj.obs[GOALS_KEY]
    goals = np.empty((n, k * g), dtype=stored.dtype)  # (n, k * G)
    for e, ((s, obs_stop, _), new) in enumerate(zip(bounds, instructions)):
        instr = instruction_of(traj, e) if new is None else np.asarray(new, dtype=np.float32)
        if instr.shape != (k, g):
            raise ValueError(f"instruction shape {instr.shape} != {(k, g)}")
        goals[s:obs_stop] = instr.reshape(-1)
    relabeled = dataclasses.replace(traj, obs={**traj.obs, GOALS_KEY: goals})
    prev_reward, progress_obs, replays = _replay_all(relabeled, fn)
    # rows of the result: observations from obs_rows[i], transition data from trans_rows[i]
    obs_rows: list[np.ndarray] = []
    trans_rows: list[np.ndarray] = []
    carried = 0  # the transition the episode's first timestep carries (the previous one's last)
    last_done = False
    for e, ((s, _, trans_stop), rep) in enumerate(zip(bounds, replays)):
        done = rep.done_index
        last = e == len(bounds) - 1
        end = trans_stop - 1 if done is None else s + 1 + done  # its last transition kept
        rows = np.arange(s, end + 1 if last else end)
        obs_rows.append(rows)
        trans_rows.append(np.concatenate([[carried], rows[1:]]).astype(np.int64))
        carried = end
        last_done = last and done is not None
    obs_idx, trans_idx = np.concatenate(obs_rows), np.concatenate(trans_rows)
    m = len(obs_idx)
    prefix = bool(obs_idx[-1] == m - 1 and np.array_equal(obs_idx, trans_idx))

    def rows_of(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return a[:m] if prefix else a[idx]  # a view when only the tail is cut

    obs = {key: rows_of(v, obs_idx) for key, v in traj.obs.items()}
    obs[GOALS_KEY] = rows_of(goals, obs_idx)
    if PROGRESS_KEY in obs:
        obs[PROGRESS_KEY] = rows_of(progress_obs, obs_idx)
    terminated = np.array(rows_of(traj.terminated, trans_idx), dtype=bool)
    truncated = np.array(rows_of(traj.truncated, trans_idx), dtype=bool)
    if len(bounds) == 1:
        terminated[:] = False
        if last_done:
            terminated[-1] = True
            truncated[:-1] = False  # (a time limit hit on that same step stays recorded)
        else:
            env_terminated = False
            if traj.terminated[-1]:  # by the env itself, or by completing the original goals?
                env_terminated = _replay_all(traj, fn)[2][0].done_index != n - 2
            terminated[-1] = env_terminated
            truncated[-1] = bool(traj.truncated[-1]) or (
                bool(traj.terminated[-1]) and not env_terminated
            )
    elif last_done:
        terminated[-1] = True
    if prefix:
        time_idx = traj.time_idx[:m]
    else:  # shift by the timesteps dropped since the counter last restarted
        t = np.asarray(traj.time_idx)[obs_idx]
        dropped = obs_idx - np.arange(m)
        restart = np.concatenate([[True], np.diff(t.astype(np.int64)) <= 0])
        since = np.maximum.accumulate(np.where(restart, np.arange(m), 0))
        time_idx = (t - (dropped - dropped[since])).astype(traj.time_idx.dtype)
    meta = dataclasses.replace(
        traj.meta,
        episode_starts=np.cumsum([0] + [len(r) for r in obs_rows[:-1]]).tolist(),
        info=dict(traj.meta.info),
    )
    return Trajectory(
        obs=obs,
        prev_action=rows_of(traj.prev_action, trans_idx),
        prev_reward=rows_of(prev_reward, trans_idx),
        time_idx=time_idx,
        terminated=terminated,
        truncated=truncated,
        extras={key: rows_of(v, trans_idx) for key, v in traj.extras.items()},
        meta=meta,
    )


__all__ = [
    "ACHIEVED_KEY",
    "ACHIEVED_MASK_KEY",
    "GOALS_KEY",
    "META_NUM_GOALS",
    "META_REWARD_FN",
    "PROGRESS_KEY",
    "GoalReplay",
    "GoalRewardFn",
    "GoalSpec",
    "GoalTask",
    "SequentialGoalReward",
    "achieved_events",
    "episode_bounds",
    "get_goal_reward_fn",
    "goal_shape",
    "instruction_of",
    "recompute_goal_rewards",
    "register_goal_reward_fn",
    "relabel_episodes",
    "relabel_instruction",
    "replay_goals",
    "reward_fn_of",
]
