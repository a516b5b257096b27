"""Record one rollout of a standardised env as a :class:`~common.records.Trajectory`.

This is the reference for how an actor turns the env conventions (:mod:`common.envs.api`) into
records (:mod:`common.records`): timestep t holds o_t, a_{t-1} (one-hot if discrete),
r_{t-1}, ``time_idx = t`` (step within the episode, or within the whole meta-RL trial),
the flags of o_t, ``info["extras"]`` of the transition into o_t, and the timesteps whose info
says ``episode_start`` become ``meta.episode_starts``; the reset info's ``trajectory_info``
becomes ``meta.info``. Tests and scripted-data generators use it; batched Ray actors do the
same per env slot.
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
    meta = TrajectoryMeta(
        env_id=env_id,
        actor_id=actor_id,
        policy_version=policy_version,
        episode_starts=[],
        info=dict(info.get(INFO_TRAJ, {})),
    )
    steps: dict[str, list] = {k: [] for k in ("prev_action", "prev_reward", "term", "trunc")}
    obs_lists: dict[str, list[np.ndarray]] = {k: [] for k in spec.obs}
    extras_lists: dict[str, list[np.ndarray]] = {k: [] for k in spec.extras}
    prev_action = np.zeros(spec.action_dim, dtype=np.float32)
    reward, terminated, truncated = 0.0, False, False
    t = 0
    while True:
        for k in obs_lists:
            obs_lists[k].append(np.array(obs[k]))
        for k in extras_lists:
            extras_lists[k].append(np.array(info[INFO_EXTRAS][k]))
        if info.get(INFO_EPISODE_START, t == 0):
            meta.episode_starts.append(t)
        steps["prev_action"].append(prev_action)
        steps["prev_reward"].append(reward)
        steps["term"].append(terminated)
        steps["trunc"].append(truncated)
        if terminated or truncated:
            break
        action = policy(obs, info)
        prev_action = action_record(action, spec)
        obs, reward, terminated, truncated, info = env.step(action)
        t += 1
    n = t + 1
    return Trajectory(
        obs={k: np.stack(v) for k, v in obs_lists.items()},
        prev_action=np.stack(steps["prev_action"]).astype(np.float32),
        prev_reward=np.asarray(steps["prev_reward"], dtype=np.float32),
        time_idx=np.arange(n, dtype=np.int32),
        terminated=np.asarray(steps["term"], dtype=bool),
        truncated=np.asarray(steps["trunc"], dtype=bool),
        extras={
            k: np.stack(v).astype(spec.extras[k].dtype, copy=False) for k, v in extras_lists.items()
        },
        meta=meta,
    )
