"""Reverb-style sample-to-insert ratio limiting, counted in timesteps (pure arithmetic).

Reference: Reverb's ``SampleToInsertRatio(samples_per_insert, min_size_to_sample,
error_buffer)`` with ``min_diff/max_diff = spi * min_size -/+ error_buffer`` and

    CanSample(k):  size >= min_size  and  inserted * spi - sampled - k >= min_diff
    CanInsert(n):  size < min_size (before the insert)  or  (inserted + n) * spi - sampled <= max_diff

where ``inserted`` counts inserted timesteps (I), ``sampled`` sampled real window timesteps
(S) and ``size = inserted - deleted`` the timesteps currently stored (deleted D = evicted or
dropped). For unit-sized operations this is exactly Reverb's rule (its "inserts are free while
``inserted + 1 - deleted <= min_size``" is "size < min_size before the insert"); with sizes,
checking the min-size phase before the insert avoids blocking the insert that crosses it.

Both sides block at once iff ``max_diff - n * spi < diff < min_diff + k`` for some reachable
``diff = I * spi - S``, i.e. iff ``2 * error_buffer < n * spi + k``: the config refuses such an
``error_buffer`` for the largest n and k (``ReplayConfig.effective_error_buffer``; the largest
k is the learner's ``SampleShape.max_sample_steps``).

With ``samples_per_insert == 0`` the ratio is off: inserts never wait and samples wait only
for ``min_size``. Samples also always wait while the store is empty. The same rules run
atomically inside Redis (``replay_service.lua``); this module is their unit-testable twin.
"""

from __future__ import annotations

from dataclasses import dataclass

from replay_service.config import ReplayConfig, SampleShape


@dataclass(frozen=True)
class LimiterState:
    """The shared counters (all in timesteps; trajectories for ``count``)."""

    inserted: int = 0  # I: timesteps ever inserted
    deleted: int = 0  # D: timesteps evicted or dropped
    sampled: int = 0  # S: real window timesteps ever sampled
    count: int = 0  # trajectories currently stored

    @property
    def size(self) -> int:
        return self.inserted - self.deleted


@dataclass(frozen=True)
class RateLimits:
    """The limiter's constants."""

    samples_per_insert: float
    min_size: int
    min_diff: float
    max_diff: float

    @staticmethod
    def from_config(cfg: ReplayConfig, shape: SampleShape | None = None) -> RateLimits:
        """The limits of ``cfg``; ``shape`` (the learner's) is needed when the ratio is on
        with an automatic ``error_buffer`` (``ReplayConfig.effective_error_buffer``)."""
        spi = cfg.rate_limit.samples_per_insert
        offset = spi * cfg.rate_limit.min_size_steps
        eb = cfg.effective_error_buffer(shape) if spi > 0 else 0.0
        return RateLimits(spi, cfg.rate_limit.min_size_steps, offset - eb, offset + eb)

    @property
    def enabled(self) -> bool:
        return self.samples_per_insert > 0

    def can_insert(self, state: LimiterState, n: int) -> bool:
        """May a trajectory of ``n`` timesteps be inserted now?"""
        if not self.enabled or state.size < self.min_size:
            return True
        return (state.inserted + n) * self.samples_per_insert - state.sampled <= self.max_diff

    def can_sample(self, state: LimiterState, k: int) -> bool:
        """May ``k`` real window timesteps be sampled now?"""
        if state.count <= 0 or state.size < self.min_size:
            return False
        if not self.enabled:
            return True
        return state.inserted * self.samples_per_insert - state.sampled - k >= self.min_diff
