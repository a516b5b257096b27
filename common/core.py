"""The roles of amago-ray, as small typed interfaces.

Every component is written against these protocols, never against another component's
concrete class, so each can be tested alone (fakeredis for the replay, a fixed dataset for the
learner, a random policy for the actors) and re-wired by the entrypoint.

Usage (what the entrypoint does, minus Ray and error handling)::

    shape = SampleShape(learner_cfg.batch_size, learner_cfg.max_seq_len)   # the learner's
    writer: ReplayWriter = ReplayStore(redis_client, replay_cfg, shape)    # in each actor
    sampler: ReplaySampler = Sampler(redis_client, replay_cfg, shape, relabel)  # in the learner
    learner: Learner = AmagoLearner(env_spec, learner_cfg)
    policy: Policy = learner.make_policy(num_slots=8)                     # in each actor

    step = StepInput(...)                 # one timestep for each of 8 env slots
    actions = policy.act(step, slots=np.arange(8))
    ...                                   # env.step(actions); at episode end:
    policy.reset(np.array([done_slot]))
    writer.insert(trajectory)             # the whole episode (or meta-RL trial)

    metrics = learner.train_step(sampler.sample(batch_size=24))
    policy.load_weights(learner.version, learner.policy_weights())

Time alignment of every record is documented once, in ``common.records``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from common.records import Batch, StepInput, Trajectory
from common.replay import ReplayStats


@runtime_checkable
class Policy(Protocol):
    """Batched, stateful (KV cache / hidden state per env slot) acting."""

    @property
    def version(self) -> int: ...

    def act(self, step: StepInput, slots: np.ndarray, greedy: bool = False) -> np.ndarray:
        """Actions for ``slots`` (int64 ``(n,)`` if discrete, float32 ``(n, A)`` if not)."""

    def reset(self, slots: np.ndarray) -> None:
        """Forget the context of ``slots`` (episode or meta-trial boundary)."""

    def load_weights(self, version: int, weights: dict) -> None:
        """Replace the network weights with a published version."""

    def capacity_timesteps(self) -> int:
        """Timesteps of context the policy keeps per slot (at most the training window)."""


@runtime_checkable
class ReplayWriter(Protocol):
    """Appends whole trajectories to the replay store."""

    def insert(self, traj: Trajectory, token: str | None = None) -> int:
        """Store ``traj``; returns its id. ``token`` makes retries idempotent (one per
        rollout). Raises ``RecordError`` if it is malformed, ``common.replay`` errors when
        the server pushes back or is unreachable."""

    def flush(self, force: bool = False) -> int:
        """Write what the writer holds back (records parked for a shard that was down), now
        if ``force`` (an actor that stops), else when due; returns how many were stored."""


@runtime_checkable
class ReplaySampler(Protocol):
    """Draws training windows from the replay store."""

    def sample(self, batch_size: int, timeout_s: float | None = None) -> Batch:
        """A right-padded batch of windows; blocks while the rate limiter says wait, up to
        ``timeout_s`` (then ``common.replay.RateLimitTimeout``)."""

    def stats(self) -> ReplayStats:
        """The replay's shared counters."""


@runtime_checkable
class Learner(Protocol):
    """The pure learning algorithm: no Ray, no Redis."""

    @property
    def version(self) -> int: ...

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One update; returns scalar metrics."""

    def policy_weights(self) -> dict:
        """CPU weights an actor's :class:`Policy` needs (not the critics or optimizer)."""
