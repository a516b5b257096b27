"""What the replay roles exchange with their callers, shared by every process: the errors a
writer or sampler raises (``common.core.ReplayWriter`` / ``ReplaySampler``) and the statistics
snapshot. The replay service implements them; actors and the learner catch and read them
without importing the service.

Callers retry on :class:`ReplayBackpressure` (server full, or the rate limiter said wait) and
on :class:`ReplayUnavailable` (server unreachable or restarting). A malformed record raises
``common.codec.RecordError`` instead (retrying cannot help).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ReplayError(RuntimeError):
    """Base class of the replay service's runtime errors."""


class ReplayUnavailable(ReplayError, ConnectionError):
    """The server could not be reached (down, restarting, network); the call had no effect
    or its effect is idempotent on retry (inserts carry a dedup token)."""


class ReplayBackpressure(ReplayError):
    """The server refused the write because it is out of memory (``maxmemory`` with
    ``noeviction``): nothing was written. Retry after the store shrinks (eviction, clear())."""


class RateLimitTimeout(ReplayBackpressure, TimeoutError):
    """The sample-to-insert rate limiter (or an empty / too small store) kept the call
    waiting past its timeout; nothing was inserted or sampled."""


@dataclass
class ReplayStats:
    """A snapshot of one namespace. Counters are shared by every process (they live in
    Redis); the ``*_rate`` fields are per second since this object's previous ``stats()``
    call (0.0 on the first call) and ``backpressure_events`` counts this process only."""

    trajectories: int = 0  # stored now
    timesteps: int = 0  # stored now
    bytes: int = 0  # stored now (encoded blobs)
    inserted_trajectories: int = 0  # ever inserted
    inserted_timesteps: int = 0
    inserted_bytes: int = 0
    evicted_trajectories: int = 0  # removed by FIFO capacity eviction
    dropped_trajectories: int = 0  # removed because their blob was found corrupt
    sampled_windows: int = 0  # ever sampled
    sampled_timesteps: int = 0  # real (unpadded) window timesteps ever sampled
    rejected: dict[str, int] = field(default_factory=dict)  # ingest rejections by reason
    corrupt: dict[str, int] = field(default_factory=dict)  # bad blobs at sample time by reason
    insert_rate: float = 0.0  # trajectories/s
    insert_step_rate: float = 0.0  # timesteps/s
    sample_rate: float = 0.0  # windows/s
    sample_step_rate: float = 0.0  # sequence-timesteps/s
    backpressure_events: int = 0  # out-of-memory refusals seen by this process
    shard_outages: int = 0  # sharded replay: times this process found a shard unreachable
    shard_timesteps: list[int] = field(default_factory=list)  # stored per shard ([] = one)

    @property
    def samples_per_insert(self) -> float:
        """Observed sampled timesteps per inserted timestep."""
        return self.sampled_timesteps / max(1, self.inserted_timesteps)
