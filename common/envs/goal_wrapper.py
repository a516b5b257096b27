"""The gym wrapper that makes a :class:`common.goals.GoalTask` env goal-conditioned.

:class:`GoalConditioned` adds the instruction/progress observation keys, the achieved-goal
extras and the trajectory info described in :mod:`common.goals`, and pays the goal reward
computed by :func:`common.goals.replay_goals` (the same code the replay service replays stored
trajectories with). ``common.envs.make_env`` applies it to every env whose ``unwrapped``
implements ``GoalTask``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from common.envs.api import INFO_EXTRAS, OBS_DEFAULT, merge_traj_info
from common.goals import (
    ACHIEVED_KEY,
    ACHIEVED_MASK_KEY,
    GOALS_KEY,
    META_NUM_GOALS,
    META_REWARD_FN,
    PROGRESS_KEY,
    GoalTask,
    get_goal_reward_fn,
    replay_goals,
)
from common.spec import ArraySpec


class GoalConditioned(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds the instruction/progress observation keys, the achieved-goal extras and the goal
    reward to any env whose ``unwrapped`` implements :class:`GoalTask` (see :mod:`common.goals`).

    ``goal_keys`` and ``extras_spec`` describe what it adds (for ``EnvSpec``).
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, GoalTask):
            raise TypeError(f"{type(base).__name__} does not implement GoalTask")
        self._base = base
        spec = base.goal_spec
        self.goal_spec = spec
        self.reward_fn = get_goal_reward_fn(spec.reward_fn)
        k, g, m = spec.num_goals, spec.goal_dim, spec.max_achieved
        inner = env.observation_space
        self._dict_obs = isinstance(inner, gym.spaces.Dict)
        spaces = dict(inner.spaces) if self._dict_obs else {OBS_DEFAULT: inner}
        for key in (GOALS_KEY, PROGRESS_KEY):
            if key in spaces:
                raise ValueError(f"observation key {key!r} is already taken")
        spaces[GOALS_KEY] = gym.spaces.Box(spec.low, spec.high, (k * g,), np.float32)
        spaces[PROGRESS_KEY] = gym.spaces.Box(0.0, 1.0, (k,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.goal_keys = (GOALS_KEY, PROGRESS_KEY)
        self.extras_spec = {
            ACHIEVED_KEY: ArraySpec((m, g), "float32"),
            ACHIEVED_MASK_KEY: ArraySpec((m,), "bool"),
        }
        self._instruction = np.zeros((k, g), dtype=np.float32)
        self._progress = 0

    @property
    def progress(self) -> int:
        """Goals of the current instruction reached so far."""
        return self._progress

    def _obs(self, obs: Any) -> dict[str, np.ndarray]:
        out = dict(obs) if self._dict_obs else {OBS_DEFAULT: obs}
        out[GOALS_KEY] = self._instruction.flatten()  # a copy: observations never share data
        progress = np.zeros(self.goal_spec.num_goals, dtype=np.float32)
        progress[: self._progress] = 1.0
        out[PROGRESS_KEY] = progress
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        spec = self.goal_spec
        instruction = np.array(self._base.instruction(), dtype=np.float32)
        if instruction.shape != (spec.num_goals, spec.goal_dim):
            raise ValueError(
                f"instruction() returned shape {instruction.shape}, "
                f"expected {(spec.num_goals, spec.goal_dim)}"
            )
        self._instruction = instruction
        self._progress = 0
        info[INFO_EXTRAS] = {
            ACHIEVED_KEY: np.zeros((spec.max_achieved, spec.goal_dim), dtype=np.float32),
            ACHIEVED_MASK_KEY: np.zeros(spec.max_achieved, dtype=bool),
        }
        merge_traj_info(info, **{META_REWARD_FN: spec.reward_fn, META_NUM_GOALS: spec.num_goals})
        return self._obs(obs), info

    def step(self, action: Any):
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        spec = self.goal_spec
        got = np.asarray(self._base.achieved_goals(), dtype=np.float32).reshape(-1, spec.goal_dim)
        m = got.shape[0]
        if m > spec.max_achieved:
            raise ValueError(f"achieved_goals() returned {m} goals > max_achieved")
        achieved = np.zeros((spec.max_achieved, spec.goal_dim), dtype=np.float32)
        achieved[:m] = got
        mask = np.zeros(spec.max_achieved, dtype=bool)
        mask[:m] = True
        rep = replay_goals(
            self._instruction, achieved[None], mask[None], self.reward_fn, self._progress
        )
        self._progress = int(rep.progress[0])
        reward = float(rep.reward[0])
        done = self._progress >= spec.num_goals
        info["env_reward"] = env_reward
        info["goals_reached"] = self._progress
        info["success"] = done
        info[INFO_EXTRAS] = {ACHIEVED_KEY: achieved, ACHIEVED_MASK_KEY: mask}
        return self._obs(obs), reward, bool(terminated) or done, bool(truncated), info


__all__ = ["GoalConditioned"]
