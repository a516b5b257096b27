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

from actors.envbatch import EnvBatch, SyncEnvBatch
from actors.exploration import Exploration
from common.core import Policy
from common.envs.record import TrajectoryRecorder
from common.records import StepInput, Trajectory
from common.spec import EnvSpec

log = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    """What one `run` call did. Returns/successes are of rollouts finished during the call."""

    env_steps: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[float | None] = field(default_factory=list)  # None: env reports none
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


class _Slot(TrajectoryRecorder):
    """The rollout in progress in one env slot: a :class:`~common.envs.record.TrajectoryRecorder`
    (the time alignment and the env conventions of :mod:`common.envs.api`) plus the slot's
    success flag and the policy version it started under."""

    def __init__(self, obs: dict[str, np.ndarray], info: dict, spec: EnvSpec, version: int):
        super().__init__(spec, obs, info)
        self.success: float | None = None  # until the env's info reports a "success"
        self.version = version  # of the policy when the record in progress began
        self.sent = 0  # timesteps [0, sent) already handed to the sink in chunks

    def append(self, action, obs, reward, terminated, truncated, info: dict) -> None:
        super().append(action, obs, reward, terminated, truncated, info)
        if "success" in info:
            self.success = max(self.success or 0.0, float(info["success"]))


class RolloutLoop:
    """Steps ``envs`` in lock-step with one batched ``policy.act`` call per step.

    ``envs`` is a list of envs (stepped in this process) or an
    :class:`actors.envbatch.EnvBatch` (e.g. ``AsyncEnvBatch``: subprocesses); either way the
    loop resets finished envs itself, so records keep the time alignment of
    :mod:`common.records`. Env exceptions never escape: the faulty env is reset, its rollout
    dropped and the fault counted. ``sink`` receives every finished rollout; it may block (replay backpressure).
    The policy acts greedily when ``greedy`` (evaluation) or when ``exploration`` says not to
    sample (``sample_actions: false``); ``exploration`` then perturbs its actions. ``task``
    (multi-task runs) goes into every rollout's ``meta.info["task"]``.

    ``chunk`` = ``(steps, overlap)`` streams long rollouts: every ``steps`` env steps a
    rollout in progress hands the sink a record of its new timesteps with the ``overlap``
    timesteps before them in front (``overlap`` = the training window - 1: every window of
    the rollout then lies whole in one record, and the timestep that ends a chunk starts the
    next), and its last chunk when it ends. The learner then trains on a long rollout while
    it is still going, not only after its end. Statistics are always of whole rollouts.
    """

    def __init__(
        self,
        envs: list[gym.Env] | EnvBatch,
        spec: EnvSpec,
        policy: Policy,
        sink: Callable[[Trajectory], None] | None,
        exploration: Exploration | None,
        actor_id: int = 0,
        env_id: str = "",
        seed: int = 0,
        greedy: bool = False,
        task: str = "",
        chunk: tuple[int, int] | None = None,
    ):
        if chunk is not None and not (chunk[0] >= 1 and chunk[1] >= 1):
            raise ValueError(f"chunk needs steps >= 1 and overlap >= 1, got {chunk}")
        self.chunk = chunk
        self.batch: EnvBatch = SyncEnvBatch(envs) if isinstance(envs, list) else envs
        self.num_envs = self.batch.num_envs
        self.spec, self.policy, self.sink = spec, policy, sink
        self.exploration, self.actor_id, self.env_id, self.greedy = (
            exploration,
            actor_id,
            env_id,
            greedy,
        )
        self.task = task  # meta.info["task"] of every rollout (multi-task runs; "" = none)
        self.slots_idx = np.arange(self.num_envs)
        self._seed = seed
        self._resets = 0
        self.slots: list[_Slot] = [None] * self.num_envs  # type: ignore[list-item]
        self._reset_slots(list(range(self.num_envs)))

    @property
    def envs(self) -> list[gym.Env]:
        """The env objects of an in-process (sync) batch."""
        return self.batch.envs  # type: ignore[attr-defined]

    # -- env handling --------------------------------------------------------------------
    def _next_seed(self) -> int:
        self._resets += 1
        return self._seed * 1_000_003 + self._resets

    def _reset_slots(self, idx: list[int]) -> None:
        """Fresh rollouts in slots ``idx`` (in order: seeds are drawn slot by slot). A
        broken reset is retried twice with new seeds, then surfaces."""
        seeds = [self._next_seed() for _ in idx]
        for _ in range(3):
            failed = []
            for i, res in zip(idx, self.batch.reset(idx, seeds)):
                if isinstance(res, BaseException):
                    log.error("env %d reset failed", i, exc_info=res)
                    failed.append(i)
                    continue
                obs, info = res
                self.policy.reset(np.array([i]))
                self.slots[i] = _Slot(obs, info, self.spec, self.policy.version)
            if not failed:
                return
            idx, seeds = failed, [self._next_seed() for _ in failed]
        raise RuntimeError(f"env slot {idx[0]} failed to reset 3 times")

    def reset_all(self) -> None:
        """Drop every rollout in progress and start fresh episodes (used before evaluation)."""
        self._reset_slots(list(range(self.num_envs)))

    def close(self) -> None:
        """Close the envs (an async batch: its subprocesses)."""
        self.batch.close()

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
        done = np.zeros(self.num_envs, np.int64)
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
        greedy = self.greedy or (
            self.exploration is not None and not self.exploration.sample_actions
        )
        inp = self._step_input()
        actions = self.policy.act(inp, self.slots_idx, greedy=greedy)
        st.act_seconds += time.perf_counter() - t0
        st.act_calls += 1
        if self.exploration is not None:
            actions = self.exploration(actions, inp.time_idx)
        to_reset = []
        for i, res in enumerate(self.batch.step(actions)):
            if isinstance(res, BaseException):
                log.error(
                    "env %d raised in step(); resetting it and dropping its rollout",
                    i,
                    exc_info=res,
                )
                st.env_faults += 1
                to_reset.append(i)
            elif self._record(i, actions[i], res, st):
                to_reset.append(i)
                if finished is not None:
                    finished[i] += 1
        if to_reset:  # slot order, as the seeds of a one-by-one loop would be drawn
            self._reset_slots(to_reset)

    def _record(self, i: int, action, res: tuple, st: RolloutStats) -> bool:
        """Record slot ``i``'s step result; True when it finished a rollout (handed to the
        sink; the caller resets the slot)."""
        slot = self.slots[i]
        obs, reward, terminated, truncated, info = res
        st.env_steps += 1
        slot.append(action, obs, reward, terminated, truncated, info)
        done = terminated or truncated
        due = self.chunk is not None and len(slot) - slot.sent >= self.chunk[0]
        if not (done or due):
            return False
        # a chunk stacks only its own timesteps (the ones not sent yet, after the overlap);
        # a finished rollout is stacked whole once (its stats read every episode)
        first = max(0, slot.sent - self.chunk[1]) if slot.sent else 0
        traj = slot.to_trajectory(self.env_id, self.actor_id, slot.version, 0 if done else first)
        if self.task:
            traj.meta.info["task"] = self.task
        if done:
            st.returns.append(traj.total_return)
            st.lengths.append(len(traj))
            st.successes.append(slot.success)
            st.finished_slots.append(i)
            st.episode_returns.append(episode_returns(traj))
        if self.sink is not None:
            self.sink(traj.window(first, len(traj)) if done and first else traj)
        if not done:
            slot.sent, slot.version = len(slot), self.policy.version
        return done
