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
    finished_slots: list[int] = field(default_factory=list)  # slot of each finished rollout
    episode_returns: list[list[float]] = field(default_factory=list)  # per inner episode

    def merge(self, other: RolloutStats) -> None:
        self.env_steps += other.env_steps
        self.returns += other.returns
        self.lengths += other.lengths
        self.successes += other.successes
        self.env_faults += other.env_faults
        self.act_seconds += other.act_seconds
        self.act_calls += other.act_calls
        self.finished_slots += other.finished_slots
        self.episode_returns += other.episode_returns


def episode_returns(traj: Trajectory) -> list[float]:
    """Return of each (inner) episode of a rollout. The reward of an episode's last action
    arrives with the next episode's first timestep, so episode e spans
    ``prev_reward[start_e + 1 : start_{e+1} + 1]``."""
    bounds = [*traj.meta.episode_starts, len(traj) - 1]
    r = traj.prev_reward
    return [float(r[a + 1 : b + 1].sum()) for a, b in zip(bounds, bounds[1:])]


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
            exploration,
            actor_id,
            env_id,
            greedy,
        )
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
    def run(self, steps: int) -> RolloutStats:
        """Step every env ``steps`` times."""
        st = RolloutStats()
        for _ in range(steps):
            self._step_all(st)
        return st

    def run_rollouts(self, per_slot: int, max_steps: int) -> RolloutStats:
        """Fresh rollouts until every env slot has finished ``per_slot`` of them (evaluation).

        Only each slot's first ``per_slot`` rollouts are reported, so short rollouts are not
        over-represented; stops early after ``max_steps`` batched steps.
        """
        self.reset_all()
        st = RolloutStats()
        done = np.zeros(len(self.envs), np.int64)
        for _ in range(max_steps):
            if (done >= per_slot).all():
                break
            step = RolloutStats()
            self._step_all(step, finished=done)
            keep = [i for i, slot in enumerate(step.finished_slots) if done[slot] <= per_slot]
            st.env_steps += step.env_steps
            st.env_faults += step.env_faults
            st.act_seconds += step.act_seconds
            st.act_calls += step.act_calls
            st.returns += [step.returns[i] for i in keep]
            st.lengths += [step.lengths[i] for i in keep]
            st.successes += [step.successes[i] for i in keep]
            st.finished_slots += [step.finished_slots[i] for i in keep]
            st.episode_returns += [step.episode_returns[i] for i in keep]
        return st

    def _step_all(self, st: RolloutStats, finished: np.ndarray | None = None) -> None:
        t0 = time.perf_counter()
        actions = self.policy.act(self._step_input(), self.slots_idx, greedy=self.greedy)
        st.act_seconds += time.perf_counter() - t0
        st.act_calls += 1
        if self.exploration is not None:
            actions = self.exploration(actions)
        for i, env in enumerate(self.envs):
            if self._step_env(i, env, actions[i], st) and finished is not None:
                finished[i] += 1

    def _step_env(self, i: int, env: gym.Env, action, st: RolloutStats) -> bool:
        """One env step of slot ``i``; True when it finished a rollout."""
        slot = self.slots[i]
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except Exception:
            log.exception("env %d raised in step(); resetting it and dropping its rollout", i)
            st.env_faults += 1
            self.slots[i] = self._reset_slot(i)
            return False
        st.env_steps += 1
        slot.append(obs, action_record(action, self.spec), reward, terminated, truncated, info)
        if not (terminated or truncated):
            return False
        traj = slot.to_trajectory(
            TrajectoryMeta(
                env_id=self.env_id,
                actor_id=self.actor_id,
                policy_version=slot.version,
                episode_starts=slot.episode_starts,
                info=slot.info,
            )
        )
        st.returns.append(traj.total_return)
        st.lengths.append(len(traj))
        st.successes.append(slot.success)
        st.finished_slots.append(i)
        st.episode_returns.append(episode_returns(traj))
        if self.sink is not None:
            self.sink(traj)
        self.slots[i] = self._reset_slot(i)
        return True
