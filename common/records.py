"""Typed data records shared by actors, the replay service and the learner.

Time alignment (the one convention every component follows)
-----------------------------------------------------------
A rollout of T actions is stored as N = T + 1 *timesteps*. At timestep t:

    obs[k][t]       o_t        the observation the agent sees at step t
    prev_action[t]  a_{t-1}    the action taken at the previous step (zeros at t = 0)
    prev_reward[t]  r_{t-1}    the reward that followed a_{t-1} (0 at t = 0)
    time_idx[t]     t          step index within the episode (or meta-RL trial)
    terminated[t]   o_t is terminal: the episode ended by reaching it (no bootstrap past t)
    truncated[t]    o_t ends the rollout for another reason (time limit, cut): bootstrap from it

The agent's input at step t is (o_t, a_{t-1}, r_{t-1}, t) and it outputs a_t, which is stored as
``prev_action[t + 1]`` together with its reward ``prev_reward[t + 1]``. The transition used by
the learner at t is therefore ``(o_t, a_t = prev_action[t+1], r_t = prev_reward[t+1],
done_t = terminated[t+1], o_{t+1})``. The last timestep of a rollout outputs no action.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: Version of the in-memory layout and of the wire format (see ``common.codec``).
FORMAT_VERSION = 2

#: What a task name (``meta.info["task"]`` of a multi-task run's rollouts) may be: also a
#: Prometheus label value, a metrics.jsonl key part and the replay index's tag
#: (``replay_service.lua``), hence no spaces, ``~``, ``,``, ``/`` or ``:``.
TASK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

#: Core per-timestep arrays every trajectory holds (besides ``obs`` and ``extras``).
CORE_KEYS = ("prev_action", "prev_reward", "time_idx", "terminated", "truncated")


@dataclass
class TrajectoryMeta:
    """Who produced a trajectory, and where its episodes begin.

    ``episode_starts`` lists the timestep index at which each episode of the rollout begins
    (``[0]`` for a single episode; several for a meta-RL trial of k episodes). ``info`` holds
    small free-form scalars/strings (e.g. the goal task's reward-function name); in a
    multi-task run ``info["task"]`` names the task the rollout came from (a
    :data:`TASK_NAME_RE` name; the replay index keeps it, for task-balanced sampling).

    Types are strict (``common.codec`` refuses anything else, never coerces): ``env_id`` a
    ``str``; ``actor_id``/``policy_version`` ``int`` (not bool) within int64; ``info`` a dict
    with ``str`` keys whose values are None, bool, int (int64), finite float, str, or lists /
    dicts of those, nested at most ``Limits.max_info_depth`` deep with at most
    ``Limits.max_info_entries`` entries in all (numpy scalars are converted on encode).
    """

    env_id: str = ""
    actor_id: int = 0
    policy_version: int = 0
    episode_starts: list[int] = field(default_factory=lambda: [0])
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """A whole rollout of N timesteps; every array has leading dimension N (see module doc).

    Attributes:
        obs: observation arrays by key, each ``(N, ...)``; what the policy sees.
        prev_action: ``(N, A)`` float32; a_{t-1} (one-hot for discrete actions), zeros at t=0.
        prev_reward: ``(N,)`` float32; r_{t-1}, 0 at t=0.
        time_idx: ``(N,)`` int32; step within the episode/trial.
        terminated: ``(N,)`` bool; o_t is a terminal state.
        truncated: ``(N,)`` bool; o_t ends the rollout without being terminal.
        extras: arrays ``(N, ...)`` stored with the rollout but hidden from the policy
            (e.g. goals achieved at each step, used by hindsight relabeling).
        meta: producer and episode-boundary metadata.
    """

    obs: dict[str, np.ndarray]
    prev_action: np.ndarray
    prev_reward: np.ndarray
    time_idx: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: TrajectoryMeta = field(default_factory=TrajectoryMeta)

    def __len__(self) -> int:
        return int(self.prev_reward.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays under flat names: ``obs/<k>``, the core keys, ``extras/<k>``."""
        out = {f"obs/{k}": v for k, v in self.obs.items()}
        out.update({k: getattr(self, k) for k in CORE_KEYS})
        out.update({f"extras/{k}": v for k, v in self.extras.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: TrajectoryMeta) -> Trajectory:
        """Inverse of :meth:`arrays`."""
        obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
        extras = {k[7:]: v for k, v in arrays.items() if k.startswith("extras/")}
        return cls(obs=obs, extras=extras, meta=meta, **{k: arrays[k] for k in CORE_KEYS})

    def window(self, start: int, stop: int) -> Trajectory:
        """Timesteps ``[start, stop)`` as a new trajectory (array views, no copy)."""
        starts = [s - start for s in self.meta.episode_starts if start <= s < stop]
        meta = TrajectoryMeta(
            env_id=self.meta.env_id,
            actor_id=self.meta.actor_id,
            policy_version=self.meta.policy_version,
            episode_starts=starts or [0],
            info=dict(self.meta.info),
        )
        return Trajectory.from_arrays({k: v[start:stop] for k, v in self.arrays().items()}, meta)

    @property
    def total_return(self) -> float:
        """Sum of rewards over the rollout (the first timestep's prev_reward is 0)."""
        return float(self.prev_reward[1:].sum())


@dataclass
class Batch:
    """Right-padded training windows; every array has leading shape ``(B, L)``.

    Same time alignment as :class:`Trajectory` along the L axis. ``mask[b, t]`` is True
    where timestep t of row b is real data and False on padding (padding values are zeros
    and carry no meaning: always use the mask). ``policy_version[b]`` is the version of the
    policy that produced row b (for the policy-lag metric).
    """

    obs: dict[str, np.ndarray]
    prev_action: np.ndarray  # (B, L, A)
    prev_reward: np.ndarray  # (B, L)
    time_idx: np.ndarray  # (B, L)
    terminated: np.ndarray  # (B, L)
    truncated: np.ndarray  # (B, L)
    mask: np.ndarray  # (B, L) bool
    policy_version: np.ndarray  # (B,) int64

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]


#: A training window: (trajectory, start, width) stands for its timesteps [start, start + width).
Window = tuple[Trajectory, int, int]


def collate(windows: Sequence[Window], length: int) -> Batch:
    """Right-pad ``windows`` (each ``width <= length``, at least one) into a :class:`Batch` of
    ``length`` timesteps: row i holds window i's timesteps, then zeros with ``mask`` False.
    Observation keys (sorted), trailing shapes and dtypes come from the first window's
    trajectory (all must match it); the core arrays get the :class:`Batch` dtypes."""
    first = windows[0][0]
    b = len(windows)
    obs = {
        k: np.zeros((b, length, *v.shape[1:]), dtype=v.dtype)  # (B, L, ...)
        for k, v in sorted(first.obs.items())
    }
    prev_action = np.zeros((b, length, first.prev_action.shape[1]), np.float32)  # (B, L, A)
    prev_reward = np.zeros((b, length), np.float32)  # (B, L)
    time_idx = np.zeros((b, length), np.int64)  # (B, L)
    terminated = np.zeros((b, length), bool)  # (B, L)
    truncated = np.zeros((b, length), bool)  # (B, L)
    mask = np.zeros((b, length), bool)  # (B, L)
    version = np.zeros(b, np.int64)  # (B,)
    for i, (t, s, w) in enumerate(windows):
        e = s + w
        for k, arr in obs.items():
            arr[i, :w] = t.obs[k][s:e]
        prev_action[i, :w] = t.prev_action[s:e]
        prev_reward[i, :w] = t.prev_reward[s:e]
        time_idx[i, :w] = t.time_idx[s:e]
        terminated[i, :w] = t.terminated[s:e]
        truncated[i, :w] = t.truncated[s:e]
        mask[i, :w] = True
        version[i] = t.meta.policy_version
    return Batch(
        obs=obs,
        prev_action=prev_action,
        prev_reward=prev_reward,
        time_idx=time_idx,
        terminated=terminated,
        truncated=truncated,
        mask=mask,
        policy_version=version,
    )


def trim_padding(batch: Batch, multiple: int = 8) -> Batch:
    """``batch`` without its trailing all-padding columns: cut to its longest real row,
    rounded up to a multiple of ``multiple`` (fewer distinct shapes), never longer than it
    was and at least 2. Sampled windows of short rollouts are mostly padding; the learner's
    model is causal and every loss and statistic is masked, so the columns cut carry nothing
    a real timestep sees, only their compute."""
    b, length = batch.mask.shape
    real = np.flatnonzero(batch.mask.any(axis=0))
    keep = int(real[-1]) + 1 if real.size else 2
    keep = min(length, max(2, -(-keep // multiple) * multiple))
    if keep == length:
        return batch
    cut = lambda x: x[:, :keep]  # noqa: E731
    return replace(
        batch,
        obs={k: cut(v) for k, v in batch.obs.items()},
        prev_action=cut(batch.prev_action),
        prev_reward=cut(batch.prev_reward),
        time_idx=cut(batch.time_idx),
        terminated=cut(batch.terminated),
        truncated=cut(batch.truncated),
        mask=cut(batch.mask),
    )


@dataclass
class StepInput:
    """One timestep for each of n env slots: the agent's input at step t (see module doc).

    obs[k]: (n, ...); prev_action: (n, A) float32; prev_reward: (n,) float32;
    time_idx: (n,) int64.
    """

    obs: dict[str, np.ndarray]
    prev_action: np.ndarray
    prev_reward: np.ndarray
    time_idx: np.ndarray
