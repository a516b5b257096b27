"""Stepping a batch of envs with a policy and cutting whole rollouts: no Ray in here.

A rollout is one episode, or one meta-RL trial of k episodes when the env is wrapped into
trials (the wrapper reports ``info["episode_start"]`` on the first timestep of each inner
episode). Each finished rollout becomes a :class:`common.records.Trajectory` (see its time
alignment) handed to ``sink`` — the replay writer in a rollout actor, nothing in evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from actors.exploration import Exploration
from common.core import Policy
from common.envs.api import INFO_EPISODE_START, INFO_EXTRAS, INFO_TRAJ
from common.envs.record import action_record
from common.records import StepInput, Trajectory, TrajectoryMeta
from common.spec import EnvSpec

log = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    """What one `run` call did. Returns/successes are of rollouts finished during the call."""

    env_steps: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    env_faults: int = 0
    act_seconds: float = 0.0
    act_calls: int = 0

    def merge(self, other: RolloutStats) -> None:
        self.env_steps += other.env_steps
        self.returns += other.returns
        self.lengths += other.lengths
        self.successes += other.successes
        self.env_faults += other.env_faults
        self.act_seconds += other.act_seconds
        self.act_calls += other.act_calls


class _Slot:
    """The rollout in progress in one env slot (lists of per-timestep arrays).

    Filled by the env conventions of :mod:`common.envs.api`: ``info["extras"]`` of every
    reset/step become ``Trajectory.extras``, ``info["episode_start"]`` marks episode starts
    and the reset info's ``trajectory_info`` becomes ``TrajectoryMeta.info``.
    """

    def __init__(self, obs: dict[str, np.ndarray], info: dict, spec: EnvSpec, version: int):
        self.obs = {k: [v] for k, v in obs.items()}
        self.extras = {k: [np.asarray(info[INFO_EXTRAS][k])] for k in spec.extras}
        self.prev_action = [np.zeros(spec.action_dim, np.float32)]
        self.prev_reward = [0.0]
        self.terminated = [False]
        self.truncated = [False]
        self.episode_starts = [0]
        self.info = dict(info.get(INFO_TRAJ, {}))
        self.success = 0.0
        self.version = version

    def __len__(self) -> int:
        return len(self.prev_reward)

    def append(self, obs, action_vec, reward, terminated, truncated, info: dict) -> None:
        for k, v in obs.items():
            self.obs[k].append(v)
        for k, v in self.extras.items():
            v.append(np.asarray(info[INFO_EXTRAS][k]))
        self.prev_action.append(action_vec)
        self.prev_reward.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        if info.get(INFO_EPISODE_START, False):
            self.episode_starts.append(len(self.prev_reward) - 1)
        if "success" in info:
            self.success = max(self.success, float(info["success"]))

    def to_trajectory(self, meta: TrajectoryMeta) -> Trajectory:
        n = len(self)
        return Trajectory(
            obs={k: np.stack(v) for k, v in self.obs.items()},
            prev_action=np.stack(self.prev_action).astype(np.float32, copy=False),
            prev_reward=np.asarray(self.prev_reward, np.float32),
            time_idx=np.arange(n, dtype=np.int32),
            terminated=np.asarray(self.terminated, bool),
            truncated=np.asarray(self.truncated, bool),
            extras={k: np.stack(v) for k, v in self.extras.items()},
            meta=meta,
        )


class RolloutWorker:
    """Steps ``envs`` in lock-step with one batched ``policy.act`` call per step.

    Env exceptions never escape: the faulty env is reset, its rollout dropped and the fault
    counted. ``sink`` receives every finished rollout; it may block (replay backpressure).
    """

    def __init__(
        self,
        envs: list[gym.Env],
        spec: EnvSpec,
        policy: Policy,
        sink: Callable[[Trajectory], None] | None,
        exploration: Exploration | None,
        actor_id: int = 0,
        env_id: str = "",
        seed: int = 0,
        greedy: bool = False,
    ):
        self.envs, self.spec, self.policy, self.sink = envs, spec, policy, sink
        self.exploration, self.actor_id, self.env_id, self.greedy = (
            exploration, actor_id, env_id, greedy)
        self.slots_idx = np.arange(len(envs))
        self._seed = seed
        self._resets = 0
        self.slots: list[_Slot] = [self._reset_slot(i) for i in range(len(envs))]

    # -- env handling --------------------------------------------------------------------
    def _reset_slot(self, i: int) -> _Slot:
        self._resets += 1
        for _ in range(3):
            try:
                obs, info = self.envs[i].reset(seed=self._seed * 1_000_003 + self._resets)
                break
            except Exception:  # a broken reset is retried, then surfaces
                log.exception("env %d reset failed", i)
                self._resets += 1
        else:
            raise RuntimeError(f"env slot {i} failed to reset 3 times")
        self.policy.reset(np.array([i]))
        return _Slot(obs, info, self.spec, self.policy.version)

    def reset_all(self) -> None:
        """Drop every rollout in progress and start fresh episodes (used before evaluation)."""
        self.slots = [self._reset_slot(i) for i in range(len(self.envs))]

    def _step_input(self) -> StepInput:
        s = self.slots
        return StepInput(
            obs={k: np.stack([sl.obs[k][-1] for sl in s]) for k in s[0].obs},
            prev_action=np.stack([sl.prev_action[-1] for sl in s]),
            prev_reward=np.array([sl.prev_reward[-1] for sl in s], np.float32),
            time_idx=np.array([len(sl) - 1 for sl in s], np.int64),
        )

    # -- main loop -----------------------------------------------------------------------
    def run(self, steps: int, stop_after_rollouts: int | None = None) -> RolloutStats:
        """Step every env ``steps`` times (or until ``stop_after_rollouts`` rollouts finish)."""
        st = RolloutStats()
        for _ in range(steps):
            t0 = time.perf_counter()
            actions = self.policy.act(self._step_input(), self.slots_idx, greedy=self.greedy)
            st.act_seconds += time.perf_counter() - t0
            st.act_calls += 1
            if self.exploration is not None:
                actions = self.exploration(actions)
            for i, env in enumerate(self.envs):
                self._step_env(i, env, actions[i], st)
            if stop_after_rollouts is not None and len(st.returns) >= stop_after_rollouts:
                break
        return st

    def _step_env(self, i: int, env: gym.Env, action, st: RolloutStats) -> None:
        slot = self.slots[i]
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except Exception:
            log.exception("env %d raised in step(); resetting it and dropping its rollout", i)
            st.env_faults += 1
            self.slots[i] = self._reset_slot(i)
            return
        st.env_steps += 1
        slot.append(obs, action_record(action, self.spec), reward, terminated, truncated, info)
        if not (terminated or truncated):
            return
        traj = slot.to_trajectory(TrajectoryMeta(
            env_id=self.env_id, actor_id=self.actor_id, policy_version=slot.version,
            episode_starts=slot.episode_starts, info=slot.info))
        st.returns.append(traj.total_return)
        st.lengths.append(len(traj))
        st.successes.append(slot.success)
        if self.sink is not None:
            self.sink(traj)
        self.slots[i] = self._reset_slot(i)
