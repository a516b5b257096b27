"""Record one rollout of a standardised env as a :class:`~common.records.Trajectory`.

This is the reference for how an actor turns the env conventions (:mod:`common.envs.api`) into
records (:mod:`common.records`): timestep t holds o_t, a_{t-1} (one-hot if discrete),
r_{t-1}, ``time_idx = t`` (step within the episode, or within the whole meta-RL trial),
the flags of o_t, ``info["extras"]`` of the transition into o_t, and the timesteps whose info
says ``episode_start`` become ``meta.episode_starts``; the reset info's ``trajectory_info``
becomes ``meta.info``. :class:`TrajectoryRecorder` is that rule, coded once: the rollout actors
(:mod:`actors.rollout`, one recorder per env slot) and :func:`rollout` (tests, scripted-data
generators) both fill their trajectories with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from common.envs.api import INFO_EPISODE_START, INFO_EXTRAS, INFO_TRAJ
from common.records import Trajectory, TrajectoryMeta
from common.spec import EnvSpec

#: ``policy(obs, info) -> action`` (an int for discrete actions, a float vector otherwise).
ScriptedPolicy = Callable[[dict[str, np.ndarray], dict[str, Any]], Any]


def action_record(action: Any, spec: EnvSpec) -> np.ndarray:
    """How an action is stored in ``prev_action``: one-hot float32 (discrete) or the float32
    vector clipped to [-1, 1] (what the env wrapper executes)."""
    if spec.discrete:
        rec = np.zeros(spec.action_dim, dtype=np.float32)
        rec[int(action)] = 1.0
        return rec
    return np.clip(np.asarray(action, dtype=np.float32).reshape(spec.action_dim), -1.0, 1.0)


class TrajectoryRecorder:
    """One rollout in progress, recorded with the time alignment of :mod:`common.records`.

    Built from the reset's ``(obs, info)``: timestep 0 holds o_0, ``prev_action`` zeros,
    ``prev_reward`` 0, both flags False and the reset info's extras. Each :meth:`append` of an
    ``env.step(a_t)`` result adds timestep t + 1: o_{t+1}, ``prev_action`` a_t (as
    :func:`action_record` stores it), ``prev_reward`` r_t, the flags of o_{t+1} and
    ``info["extras"]`` of the transition into o_{t+1}. ``episode_starts`` is ``[0]`` plus every
    timestep whose info says ``episode_start``; ``info`` is the reset info's
    ``trajectory_info``. Observation keys are those of ``spec.obs``; arrays are copied as they
    arrive (an env may reuse its buffers).
    """

    def __init__(self, spec: EnvSpec, obs: dict[str, np.ndarray], info: dict[str, Any]):
        self.spec = spec
        self.obs: dict[str, list[np.ndarray]] = {k: [np.array(obs[k])] for k in spec.obs}
        self.extras: dict[str, list[np.ndarray]] = {
            k: [np.array(info[INFO_EXTRAS][k])] for k in spec.extras
        }
        self.prev_action: list[np.ndarray] = [np.zeros(spec.action_dim, np.float32)]
        self.prev_reward: list[float] = [0.0]
        self.terminated: list[bool] = [False]
        self.truncated: list[bool] = [False]
        self.episode_starts: list[int] = [0]
        self.info: dict[str, Any] = dict(info.get(INFO_TRAJ, {}))

    def __len__(self) -> int:
        return len(self.prev_reward)

    @property
    def done(self) -> bool:
        """The last timestep ends the rollout (terminated or truncated)."""
        return self.terminated[-1] or self.truncated[-1]

    def append(
        self,
        action: Any,
        obs: dict[str, np.ndarray],
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
    ) -> None:
        """Record ``env.step(action) -> (obs, reward, terminated, truncated, info)``."""
        for k, v in self.obs.items():
            v.append(np.array(obs[k]))
        for k, v in self.extras.items():
            v.append(np.array(info[INFO_EXTRAS][k]))
        self.prev_action.append(action_record(action, self.spec))
        self.prev_reward.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        if info.get(INFO_EPISODE_START, False):
            self.episode_starts.append(len(self.prev_reward) - 1)

    def to_trajectory(
        self, env_id: str = "", actor_id: int = 0, policy_version: int = 0, start: int = 0
    ) -> Trajectory:
        """Timesteps ``[start, len)`` as a :class:`Trajectory` (``time_idx = t``; the same
        record as ``to_trajectory(...).window(start, len)``, stacking only those timesteps)."""
        n = len(self)
        starts = [s - start for s in self.episode_starts if s >= start]
        meta = TrajectoryMeta(
            env_id=env_id,
            actor_id=actor_id,
            policy_version=policy_version,
            episode_starts=starts or [0],
            info=dict(self.info),
        )
        return Trajectory(
            obs={k: np.stack(v[start:]) for k, v in self.obs.items()},
            prev_action=np.stack(self.prev_action[start:]).astype(np.float32, copy=False),
            prev_reward=np.asarray(self.prev_reward[start:], dtype=np.float32),
            time_idx=np.arange(start, n, dtype=np.int32),
            terminated=np.asarray(self.terminated[start:], dtype=bool),
            truncated=np.asarray(self.truncated[start:], dtype=bool),
            extras={
                k: np.stack(v[start:]).astype(self.spec.extras[k].dtype, copy=False)
                for k, v in self.extras.items()
            },
            meta=meta,
        )


def rollout(
    env: gym.Env,
    spec: EnvSpec,
    policy: ScriptedPolicy,
    *,
    seed: int | None = None,
    env_id: str = "",
    actor_id: int = 0,
    policy_version: int = 0,
) -> Trajectory:
    """Reset ``env``, act with ``policy`` until the rollout ends, return the trajectory."""
    obs, info = env.reset(seed=seed)
    rec = TrajectoryRecorder(spec, obs, info)
    while not rec.done:
        action = policy(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        rec.append(action, obs, reward, terminated, truncated, info)
    return rec.to_trajectory(env_id=env_id, actor_id=actor_id, policy_version=policy_version)
