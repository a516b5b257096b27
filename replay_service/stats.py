"""Replay statistics: the shared counters kept in Redis, plus rates derived from them."""

from __future__ import annotations

import time

import redis

from common.replay import ReplayStats
from replay_service.errors import translated_errors
from replay_service.lua import Keys


def _ints(h: dict) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in h.items()}


def read_stats(client: redis.Redis, keys: Keys) -> ReplayStats:
    """The shared counters of ``keys``' namespace (one round trip; rates left at 0)."""
    with translated_errors("stats"):
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.meta)
        pipe.hgetall(keys.rejected)
        pipe.hgetall(keys.corrupt)
        meta_raw, rej, bad = pipe.execute()
    meta = {k.decode(): v for k, v in meta_raw.items()}

    def g(name: str) -> int:
        return int(meta.get(name, 0))

    return ReplayStats(
        trajectories=g("count"),
        timesteps=g("steps"),
        bytes=g("bytes"),
        inserted_trajectories=g("ins_traj"),
        inserted_timesteps=g("ins_steps"),
        inserted_bytes=g("ins_bytes"),
        evicted_trajectories=g("del_traj") - g("drop_traj"),
        dropped_trajectories=g("drop_traj"),
        sampled_windows=g("samp_windows"),
        sampled_timesteps=g("samp_steps"),
        rejected=_ints(rej),
        corrupt=_ints(bad),
    )


class RateMeter:
    """Turns successive counter snapshots into per-second rates."""

    def __init__(self) -> None:
        self._last: tuple[float, ReplayStats] | None = None

    def update(self, s: ReplayStats) -> ReplayStats:
        now = time.monotonic()
        if self._last is not None:
            t0, p = self._last
            dt = max(now - t0, 1e-9)
            s.insert_rate = max(0, s.inserted_trajectories - p.inserted_trajectories) / dt
            s.insert_step_rate = max(0, s.inserted_timesteps - p.inserted_timesteps) / dt
            s.sample_rate = max(0, s.sampled_windows - p.sampled_windows) / dt
            s.sample_step_rate = max(0, s.sampled_timesteps - p.sampled_timesteps) / dt
        self._last = (now, s)
        return s
