"""The read side of the replay service: rate-limited window sampling into padded batches.

One ``sample()`` is, per chunk of at most ``cfg.batch_size`` windows:

1. draw trajectory ids from the local length index (uniform, or by length);
2. one round trip: a Lua call that reserves the windows' real timesteps with the rate limiter
   AND returns the index delta (new ids' lengths, evictions), pipelined with an MGET of the
   blobs not in the decode cache. If the limiter refuses, back off and retry (reservation
   only) until the timeout;
3. each blob is decoded (validated; cached), relabeled WHOLE, then cut to a window of
   ``min(N, max_seq_len)`` timesteps with a uniform start;
4. ids found evicted meanwhile, or corrupt (dropped from the store and counted), are redrawn,
   and their reserved timesteps refunded so the limiter counts exactly what was sampled.

The length index and the decode cache are caches of what Redis holds (``info`` hash,
head/next/epoch, immutable blobs), refreshed with every reservation; a changed epoch
(namespace cleared, server restarted empty) rebuilds both. Samplers hold nothing else: run
several against one namespace if needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import redis

from common.codec import Limits, RecordError, decode
from common.records import Batch, Trajectory, Window, collate
from replay_service.config import ReplayConfig
from replay_service.errors import RateLimitTimeout, ReplayError, translated_errors
from replay_service.lua import Keys, Scripts
from replay_service.rate_limiter import RateLimits
from replay_service.relabel import Relabeler, get_relabeler
from replay_service.stats import RateMeter, ReplayStats, read_stats

_WAIT_REASONS = {
    -1: "the store is empty",
    -2: "the store holds fewer than rate_limit.min_size_steps timesteps",
    -3: "the sample-to-insert ratio is used up (waiting for inserts)",
}

#: What every row of one sampler's batches must look like: ((obs key, trailing shape, dtype),
#: ...), action size. Set by the first row.
_Layout = tuple[tuple[tuple[str, tuple[int, ...], str], ...], int]


def _layout(t: Trajectory) -> _Layout:
    obs = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(t.obs.items()))
    return obs, int(t.prev_action.shape[1])


class _LengthIndex:
    """Lengths of the live ids [base, base + len(lens)); 0 marks an id known to be gone."""

    def __init__(self) -> None:
        self.epoch = b"\x00unknown"
        self.base = 0
        self.lens = np.zeros(0, np.int64)
        self._live: np.ndarray | None = None  # positions with lens > 0
        self._cum: np.ndarray | None = None  # cumulative lengths

    @property
    def next_id(self) -> int:
        return self.base + len(self.lens)

    def update(self, epoch: bytes, head: int, frm: int, csv: bytes) -> bool:
        """Apply a delta from the reserve script; True if the epoch changed (data replaced)."""
        new = np.array(csv.split(b","), dtype=np.int64) if csv else np.zeros(0, np.int64)
        changed = epoch != self.epoch
        if changed or frm != self.next_id:
            self.epoch, self.base, self.lens = epoch, frm, new
        elif len(new):
            self.lens = np.concatenate([self.lens, new])
        if head > self.base:
            self.lens = self.lens[min(head - self.base, len(self.lens)) :]
            self.base = head
        self._live = self._cum = None
        return changed

    def forget(self, traj_id: int) -> None:
        pos = traj_id - self.base
        if 0 <= pos < len(self.lens) and self.lens[pos]:
            self.lens = self.lens.copy()
            self.lens[pos] = 0
            self._live = self._cum = None

    def is_live(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the index (as last refreshed) still holds."""
        pos = ids - self.base
        ok = (pos >= 0) & (pos < len(self.lens))
        ok[ok] = self.lens[pos[ok]] > 0
        return ok

    def live(self) -> np.ndarray:
        if self._live is None:
            self._live = np.flatnonzero(self.lens)
        return self._live

    def draw(self, rng: np.random.Generator, m: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """``m`` ids (with replacement) and their lengths; the index must not be empty."""
        if mode == "length":
            if self._cum is None:
                self._cum = np.cumsum(self.lens)
            pos = np.searchsorted(self._cum, rng.random(m) * self._cum[-1], side="right")
        else:
            live = self.live()
            pos = live[rng.integers(0, len(live), size=m)]
        return self.base + pos, self.lens[pos]


class _DecodeCache:
    """LRU of decoded, validated trajectories (blobs never change once committed)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[int, tuple[Trajectory, int]] = OrderedDict()

    def __contains__(self, traj_id: int) -> bool:
        return traj_id in self._items

    def get(self, traj_id: int) -> Trajectory | None:
        item = self._items.get(traj_id)
        if item is None:
            return None
        self._items.move_to_end(traj_id)
        return item[0]

    def put(self, traj_id: int, traj: Trajectory) -> None:
        nbytes = sum(a.nbytes for a in traj.arrays().values())
        if nbytes > self.max_bytes or traj_id in self._items:
            return
        self._items[traj_id] = (traj, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, b) = self._items.popitem(last=False)
            self.bytes -= b

    def discard(self, traj_id: int) -> None:
        item = self._items.pop(traj_id, None)
        if item is not None:
            self.bytes -= item[1]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class Sampler:
    """Draws right-padded windows from one namespace (implements ``ReplaySampler``)."""

    def __init__(
        self,
        client: redis.Redis,
        cfg: ReplayConfig,
        relabel: Relabeler | None = None,
        seed: int | None = 0,
    ):
        cfg.validate()
        self._client = client
        self._cfg = cfg
        self.keys = Keys(cfg.redis.namespace)
        self._scripts = Scripts(client)
        self._limits = RateLimits.from_config(cfg)
        self._codec_limits = Limits(max_steps=cfg.max_traj_steps, max_bytes=cfg.max_record_bytes)
        self._relabel = relabel or get_relabeler(cfg.relabel, **cfg.relabel_kwargs)
        self._rng = np.random.default_rng(seed)
        self._index = _LengthIndex()
        self._cache = _DecodeCache(cfg.sample_cache_mb * 2**20)
        self._layout: _Layout | None = None
        self._meter = RateMeter()

    @property
    def config(self) -> ReplayConfig:
        return self._cfg

    def sample(self, batch_size: int | None = None, timeout_s: float | None = None) -> Batch:
        """A batch of ``batch_size`` windows (default ``cfg.batch_size``).

        Waits up to ``timeout_s`` (default ``cfg.sample_timeout_s``) while the store is empty,
        below ``rate_limit.min_size_steps`` or the ratio is used up, then raises
        :class:`RateLimitTimeout` (nothing counted as sampled). Raises
        :class:`ReplayUnavailable` if the server cannot be reached.
        """
        b = self._cfg.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        timeout = self._cfg.sample_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        rows: list[Window] = []
        reserved_steps = reserved_windows = 0
        try:
            while len(rows) < b:
                m = min(b - len(rows), self._cfg.batch_size)
                ids, widths, blobs = self._reserve_and_fetch(m, deadline, timeout)
                reserved_steps += int(widths.sum())
                reserved_windows += m
                rows.extend(self._windows(ids, blobs))
        except RateLimitTimeout:
            self._adjust(-reserved_steps, -reserved_windows)  # nothing was sampled after all
            raise
        used = sum(w for _, _, w in rows)
        self._adjust(used - reserved_steps, len(rows) - reserved_windows)
        return self._collate(rows)

    def stats(self) -> ReplayStats:
        """Shared counters of this namespace plus rates since the previous call."""
        return self._meter.update(read_stats(self._client, self.keys))

    # -- steps of sample() -------------------------------------------------------------

    def _reserve_and_fetch(
        self, m: int, deadline: float, timeout: float
    ) -> tuple[np.ndarray, np.ndarray, dict[int, bytes | None]]:
        """Draw ``m`` ids, reserve their window timesteps and fetch the uncached blobs."""
        lim, idx = self._limits, self._index
        delay = min(0.001, self._cfg.poll_interval_s)
        refused = False
        while True:
            if len(idx.live()):
                ids, lens = idx.draw(self._rng, m, self._cfg.sampling)
                widths = np.minimum(lens, self._cfg.max_seq_len)
                k = int(widths.sum())
                need = [i for i in dict.fromkeys(ids.tolist()) if i not in self._cache]
            else:  # nothing known locally: refresh only
                ids = widths = np.zeros(0, np.int64)
                k, need = 0, []
            args = [
                k,
                m,
                repr(float(lim.samples_per_insert)),
                lim.min_size,
                repr(float(lim.min_diff)),
                idx.next_id,
                idx.epoch,
            ]
            with translated_errors("sample"):
                if need and not refused:  # optimistic: fetch in the same round trip
                    res, blobs = self._reserve_with_mget(args, need)
                else:
                    res = self._scripts.reserve(keys=[self.keys.meta, self.keys.info], args=args)
                    blobs = None
            status = int(res[0])
            if idx.update(res[1], int(res[2]), int(res[4]), res[5]):
                self._cache.clear()  # ids now name other data
                if k > 0 and status == 1:  # drawn from the old data: give it back, redraw
                    self._adjust(-k, -m)
                    continue
            if k > 0 and status == 1:
                for i in ids[~idx.is_live(ids)].tolist():  # evicted since the draw: skip them
                    self._cache.discard(i)
                if blobs is None and need:
                    with translated_errors("sample"):
                        blobs = self._client.mget([self.keys.blob(i) for i in need])
                return ids, widths, dict(zip(need, blobs or []))
            if k == 0 and status == 1 and len(idx.live()):
                continue  # the refresh found data: draw now
            refused = refused or k > 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = _WAIT_REASONS.get(status, "the store is empty")
                raise RateLimitTimeout(f"sample waited {timeout:.3g}s: {why}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self._cfg.poll_interval_s)

    def _reserve_with_mget(self, args: list, need: list[int]) -> tuple[list, list]:
        reserve = self._scripts.reserve
        keys = [self.keys.meta, self.keys.info]
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(reserve.sha, len(keys), *keys, *args)
        pipe.mget([self.keys.blob(i) for i in need])
        res, blobs = pipe.execute(raise_on_error=False)
        if isinstance(res, redis.exceptions.NoScriptError):  # server restarted: reload
            res = reserve(keys=keys, args=args)
        elif isinstance(res, Exception):
            raise res
        if isinstance(blobs, Exception):
            raise blobs
        return res, blobs

    def _windows(self, ids: np.ndarray, blobs: dict[int, bytes | None]) -> list[Window]:
        """Windows of the trajectories ``ids``; skips (and forgets) missing or bad ones."""
        rows: list[Window] = []
        L = self._cfg.max_seq_len
        fresh: dict[int, Trajectory | None] = {}  # decoded in this call (None: unusable)
        for traj_id in ids.tolist():
            traj = self._cache.get(traj_id)
            if traj is None:
                if traj_id not in fresh:
                    fresh[traj_id] = self._decode(traj_id, blobs.get(traj_id))
                traj = fresh[traj_id]
                if traj is None:
                    continue
            out = self._relabel(traj, self._rng)
            if out is not traj or traj_id in fresh:  # new object: check its layout
                layout = _layout(out)
                if self._layout is None:
                    self._layout = layout
                elif layout != self._layout:  # valid, but not shaped like our batches
                    self._count_corrupt("layout")
                    self._index.forget(traj_id)
                    self._cache.discard(traj_id)
                    fresh[traj_id] = None
                    continue
            n = len(out)
            w = min(n, L)
            rows.append((out, int(self._rng.integers(0, n - w + 1)), w))
        return rows

    def _decode(self, traj_id: int, blob: bytes | None) -> Trajectory | None:
        """Decode (validating) and cache one blob; None if it is gone or corrupt."""
        if blob is None:  # evicted since the index was refreshed
            self._index.forget(traj_id)
            return None
        try:
            traj = decode(blob, self._codec_limits)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self._drop(traj_id, e.reason if isinstance(e, RecordError) else "schema")
            return None
        if self._cache.max_bytes:
            self._cache.put(traj_id, traj)
        return traj

    def _drop(self, traj_id: int, reason: str) -> None:
        """Remove a corrupt blob from the store (counted by reason); never raises."""
        self._index.forget(traj_id)
        try:
            with translated_errors("drop"):
                self._scripts.drop(
                    keys=[*self.keys.record_keys(), self.keys.corrupt],
                    args=[self.keys.blob_prefix, traj_id, reason],
                )
        except (ReplayError, redis.exceptions.RedisError):
            pass  # the next sampler to meet it will try again

    def _count_corrupt(self, reason: str) -> None:
        try:
            self._client.hincrby(self.keys.corrupt, reason, 1)
        except redis.exceptions.RedisError:
            pass

    def _adjust(self, steps: int, windows: int) -> None:
        """Correct the shared sample counters by what reservations over/under-counted."""
        if steps == 0 and windows == 0:
            return
        with translated_errors("sample"):
            self._scripts.adjust(keys=[self.keys.meta], args=[steps, windows])

    def _collate(self, rows: list[Window]) -> Batch:
        """Right-pad ``rows`` into a :class:`Batch` with a boolean mask."""
        L = self._cfg.max_seq_len if self._cfg.pad_to_max_seq_len else max(w for *_, w in rows)
        return collate(rows, L)
