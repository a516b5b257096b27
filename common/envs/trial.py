"""Meta-RL trials: k episodes of one sampled task in a single rollout.

``TrialWrapper(env, episodes=k)`` wraps a standardised env (dict observations) whose
``env.unwrapped`` implements :class:`common.envs.api.TaskSampler`:

* ``reset()`` starts a trial: it samples a task with the wrapper's own RNG, pins it with
  ``set_task`` and resets the inner env (which then keeps that task for all k episodes).
* When an inner episode ends (terminated *or* truncated) before the k-th, the inner env is reset
  (same task) and the trial goes on: ``step`` returns the new episode's first observation with
  the reward of the step that ended the old one, and ``terminated = truncated = False``.
* The trial ends when its k-th inner episode ends. It is reported as ``terminated=True``
  (whether that last episode terminated or hit its time limit): a trial has no continuation,
  so value targets must not bootstrap past its end. The inner flags of that last step are in
  ``info["inner_terminated"]`` / ``info["inner_truncated"]``.

What the agent and the actor see:

* ``obs["episode_start"]`` (float32 ``(1,)``): 1.0 on the first timestep of every inner
  episode (t = 0 included), else 0.0 — the agent's cue that the env was reset.
* ``info["episode_start"]``: True on those same timesteps (actors record them in
  ``TrajectoryMeta.episode_starts``); ``info["episode_index"]``: which inner episode
  (0..k-1) the returned observation belongs to; on a boundary step ``info["final_info"]`` is
  the inner info of the step that ended the previous episode, and ``info["extras"]`` is that
  step's (extras describe the transition, see :mod:`common.envs.api`).
* ``time_idx`` (the actor's step counter) runs over the whole trial: 0 .. trial length; it is
  *not* reset at inner episode starts. The trial horizon is ``k * episode limit``.
* The trial's return is the sum of the rewards of all its inner episodes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from common.envs.api import (
    INFO_EPISODE_START,
    INFO_EXTRAS,
    INFO_TRAJ,
    OBS_EPISODE_START,
    TaskSampler,
    merge_traj_info,
)


def _task_rng(seed: int | None) -> np.random.Generator:
    """Task-sampling RNG: a child of ``seed`` so it does not replay the inner env's stream
    (gymnasium seeds ``np_random`` with the same ``SeedSequence(seed)``)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])


class TrialWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Turns a :class:`TaskSampler` env into k-episode meta-RL trials (see module doc)."""

    def __init__(self, env: gym.Env, episodes: int, seed: int | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, episodes=episodes, seed=seed)
        super().__init__(env)
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        sampler = env.unwrapped
        if not isinstance(sampler, TaskSampler):
            raise TypeError(
                f"{type(sampler).__name__} does not implement TaskSampler "
                "(sample_task(rng), set_task(task)); it cannot be run as a meta-RL trial"
            )
        if not isinstance(env.observation_space, gym.spaces.Dict):
            raise TypeError("TrialWrapper needs dict observations (wrap with Standardize first)")
        if OBS_EPISODE_START in env.observation_space.spaces:
            raise ValueError(f"observation key {OBS_EPISODE_START!r} is already taken")
        self.episodes = int(episodes)
        self._sampler = sampler
        self._rng = _task_rng(seed)
        self.observation_space = gym.spaces.Dict(
            {
                **env.observation_space.spaces,
                OBS_EPISODE_START: gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )
        self._episode = 0
        self.task: Any = None

    @staticmethod
    def _flag(obs: dict[str, np.ndarray], start: bool) -> dict[str, np.ndarray]:
        obs[OBS_EPISODE_START] = np.full((1,), float(start), dtype=np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = _task_rng(seed)
        self.task = self._sampler.sample_task(self._rng)
        self._sampler.set_task(self.task)
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode = 0
        info[INFO_EPISODE_START] = True
        info["episode_index"] = 0
        merge_traj_info(info, trial_episodes=self.episodes)
        return self._flag(dict(obs), True), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated):
            info[INFO_EPISODE_START] = False
            info["episode_index"] = self._episode
            return self._flag(dict(obs), False), reward, False, False, info
        self._episode += 1
        if self._episode >= self.episodes:
            info[INFO_EPISODE_START] = False
            info["episode_index"] = self._episode - 1
            info["inner_terminated"], info["inner_truncated"] = terminated, truncated
            return self._flag(dict(obs), False), reward, True, False, info
        new_obs, new_info = self.env.reset()  # the task stays pinned
        new_info.pop(INFO_TRAJ, None)
        new_info.pop(INFO_EXTRAS, None)
        if INFO_EXTRAS in info:
            new_info[INFO_EXTRAS] = info[INFO_EXTRAS]
        new_info["final_info"] = info
        new_info[INFO_EPISODE_START] = True
        new_info["episode_index"] = self._episode
        return self._flag(dict(new_obs), True), reward, False, False, new_info
