"""Sharded replay: one namespace spread over K Redis-protocol servers (``replay.redis.url``
plus ``replay.redis.shards``), each an ordinary replay namespace (``replay_service.lua``).

Placement. A trajectory goes to shard ``crc32(token) mod K`` of its insert token (the
caller's, before the store's task tag), so a retry with the same token reaches the same shard,
whose dedup makes it exactly-once as with one server. Each shard has 1/K of the capacities
(``ReplayConfig.shard``): FIFO eviction, totals and dedup tokens are per shard; ``stats()`` sums
the shards. Ids are per shard; :class:`ShardedStore` returns ``local_id * K + shard``.

Sampling. :class:`ShardedSampler` holds one :class:`Sampler` per shard and splits every batch
of B rows over the shards by a multinomial draw weighted by what each shard holds (live
trajectories with ``sampling: uniform``, timesteps with ``length``; from the shard sampler's
index, so no extra round trip), so each stored trajectory is as likely as in one store (up to
the staleness of a shard's index, refreshed whenever that shard is sampled). Each shard's part
is a non-waiting ``sample(n, timeout_s=0)``; a shard that refuses (empty, below its min size,
ratio used up) is left out and its rows are redrawn over the others in the same call. Only when
every reachable shard refuses does the call wait (backing off as ``Sampler``), and on its
timeout it refunds what it had sampled and raises ``RateLimitTimeout``. Rows come grouped by
shard (a batch's row order carries no meaning).

Rate limiter: per shard, globally bounded. Every shard runs the limiter of the config with the
same ``samples_per_insert`` and ``error_buffer`` (the global config's effective one) and 1/K of
``min_size_steps`` (rounded up). Each shard k keeps ``d_k = I_k*spi - S_k`` within
``spi*m_k +/- error_buffer``; the global ``d = sum d_k`` is therefore within ``spi*sum(m_k) +/-
K*error_buffer`` of the target (``sum m_k`` is ``min_size_steps`` rounded up to a multiple of
K). Inserts are spread evenly by the hash and samples go to shards in proportion to their
content, which FIFO keeps in proportion to their inserts, so the shards' ratios ``S_k/I_k``
are equal in expectation and the observed global ``S/I`` follows ``spi`` as with one store;
the K-fold tolerance is the worst case (every shard at the same edge at once). Sampling starts
once some shard holds ``ceil(min_size_steps / K)`` timesteps.

No deadlock: on each shard inserts and samples cannot block at once (the config's
``error_buffer`` condition, checked per shard). A writer waiting on shard k's limiter means k
accepts samples, and a sampler waits only when every reachable shard refuses, so it samples k
and the writer goes on.

Outages cost only the dead shard. :class:`ShardedStore`: a ``ReplayUnavailable`` from shard k
parks that shard's records of the call in memory (the insert returns -1 for them) and the call
succeeds; the backlog is retried with the same tokens (exactly once) at later inserts, at most
every ``retry_s`` (backing off to ``max_retry_s``), before their own records. A backlog holds
``replay.shard_backlog`` records per shard; beyond it, while some other shard is up, its oldest
parked records are dropped (counted in ``shed``, logged), so that a long outage of one shard
never stalls the writer; when every shard is down an insert that cannot park raises
``ReplayUnavailable`` as with one server (the caller retries). A parked rollout lives in the
writer's memory: a writer that dies, or a run that ends before the shard is back, loses it. :class:`ShardedSampler` skips a dead shard for
``retry_s`` (backing off) and draws from the others; only when no shard can be reached does it
raise ``ReplayUnavailable``. Both count outages (``ReplayStats.shard_outages``, exported by the
learner as ``amago_replay_shard_outages``).
"""

from __future__ import annotations

import logging
import secrets
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import redis

from common.codec import RecordError
from common.records import Batch, Trajectory
from common.replay import ReplayStats
from common.spec import EnvSpec
from replay_service.config import ReplayConfig, SampleShape
from replay_service.errors import RateLimitTimeout, ReplayBackpressure, ReplayUnavailable
from replay_service.relabel import Relabeler
from replay_service.sampler import Sampler, concat_batches
from replay_service.stats import RateMeter
from replay_service.store import ReplayStore

log = logging.getLogger(__name__)

_COUNTERS = (
    "trajectories",
    "timesteps",
    "bytes",
    "inserted_trajectories",
    "inserted_timesteps",
    "inserted_bytes",
    "evicted_trajectories",
    "dropped_trajectories",
    "sampled_windows",
    "sampled_timesteps",
    "backpressure_events",
)


def shard_of(token: str, num_shards: int) -> int:
    """The shard of an insert token: stable across processes and runs (not ``hash()``)."""
    return zlib.crc32(token.encode()) % num_shards


def connect_shards(cfg: ReplayConfig) -> list[redis.Redis]:
    """One client per shard of ``cfg.redis``."""
    from replay_service.client import connect

    return [connect(cfg.redis.shard(k)) for k in range(cfg.num_shards)]


def merge_stats(parts: Sequence[ReplayStats]) -> ReplayStats:
    """The shards' counters summed (rates left at 0); ``shard_timesteps`` per shard."""
    out = ReplayStats()
    for s in parts:
        for name in _COUNTERS:
            setattr(out, name, getattr(out, name) + getattr(s, name))
        for mine, theirs in ((out.rejected, s.rejected), (out.corrupt, s.corrupt)):
            for reason, n in theirs.items():
                mine[reason] = mine.get(reason, 0) + n
    out.shard_timesteps = [s.timesteps for s in parts]
    return out


class _Health:
    """Which shards are down and when each is due for another try (exponential backoff)."""

    def __init__(self, n: int, retry_s: float, max_retry_s: float, clock: Callable[[], float]):
        self._retry_s, self._max_retry_s, self._clock = retry_s, max_retry_s, clock
        self._due = [0.0] * n  # monotonic time from which shard k may be tried again
        self._backoff = [0.0] * n  # 0 = up
        self.outages = 0  # times a shard was found unreachable

    def is_down(self, k: int) -> bool:
        return self._backoff[k] > 0

    def due(self, k: int) -> bool:
        """Up, or down and its retry time has come."""
        return self._clock() >= self._due[k]

    def failed(self, k: int) -> None:
        self.outages += 1
        b = self._backoff[k]
        self._backoff[k] = self._retry_s if b == 0 else min(2 * b, self._max_retry_s)
        self._due[k] = self._clock() + self._backoff[k]

    def ok(self, k: int) -> None:
        self._backoff[k] = 0.0
        self._due[k] = 0.0

    def down(self) -> list[int]:
        return [k for k, b in enumerate(self._backoff) if b > 0]


class ShardedStore:
    """Inserts into K shards by token hash (implements ``ReplayWriter``); module doc.
    ``shape``: the learner's, as for ``ReplayStore``."""

    def __init__(
        self,
        clients: Sequence[redis.Redis],
        cfg: ReplayConfig,
        shape: SampleShape | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        cfg.validate(shape)
        if len(clients) != cfg.num_shards:
            raise ValueError(f"{len(clients)} clients for {cfg.num_shards} shards")
        self._cfg = cfg
        self.stores = [ReplayStore(c, cfg.shard(k), shape) for k, c in enumerate(clients)]
        self.health = _Health(len(clients), retry_s, max_retry_s, clock)
        # per shard: parked (record, token) pairs waiting for the shard to come back
        self.backlog: list[list[tuple[Trajectory | bytes | memoryview, str]]] = [
            [] for _ in clients
        ]
        self.shed = 0  # parked rollouts dropped because their shard's backlog was full
        self._meter = RateMeter()
        self._last: list[ReplayStats | None] = [None] * len(clients)

    @property
    def config(self) -> ReplayConfig:
        return self._cfg

    @property
    def num_shards(self) -> int:
        return len(self.stores)

    def insert(
        self,
        traj: Trajectory | bytes | memoryview,
        timeout_s: float | None = None,
        token: str | None = None,
    ) -> int:
        """As ``ReplayStore.insert`` on the token's shard; -1 if that shard is down and the
        record was parked for a later retry (module doc)."""
        return self.insert_many([traj], timeout_s, None if token is None else [token])[0]

    def insert_many(
        self,
        trajs: Sequence[Trajectory | bytes | memoryview],
        timeout_s: float | None = None,
        tokens: Sequence[str] | None = None,
    ) -> list[int]:
        """As ``ReplayStore.insert_many``, each shard's records in one call to that shard;
        ids ``local * K + shard``, -1 for parked ones. An error of one shard (other than an
        outage it can park for) is raised after the other shards were written: retry with
        the same ``tokens``."""
        if tokens is None:
            tokens = [secrets.token_hex(16) for _ in trajs]
        if len(tokens) != len(trajs) or len(set(tokens)) != len(tokens):
            raise ValueError("tokens must be unique, one per record")
        self.flush()
        K = self.num_shards
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(tokens):
            groups.setdefault(shard_of(t, K), []).append(i)
        ids = [-1] * len(trajs)
        error: Exception | None = None
        for k, idx in groups.items():
            recs, toks = [trajs[i] for i in idx], [tokens[i] for i in idx]
            can_park = self._can_park(k, len(idx))
            try:
                if self.health.is_down(k) and not self.health.due(k) and can_park:
                    for r in recs:  # the checks an insert makes before any I/O
                        self.stores[k]._prepare(r)
                    self._park(k, recs, toks)
                    continue
                got = self.stores[k].insert_many(recs, timeout_s, toks)
            except ReplayUnavailable as e:
                self.health.failed(k)
                if can_park:
                    self._park(k, recs, toks)
                else:
                    error = error or e
                continue
            except (RecordError, ReplayBackpressure) as e:
                error = error or e
                continue
            self.health.ok(k)
            for i, local in zip(idx, got):
                ids[i] = local * K + k
        if error is not None:
            raise error
        return ids

    def _can_park(self, k: int, n: int) -> bool:
        """Whether ``n`` records for shard k may be parked: there is room in its backlog, or
        another shard is up (then the oldest parked ones make room: module doc)."""
        if len(self.backlog[k]) + n <= self._cfg.shard_backlog:
            return True
        return any(not self.health.is_down(j) for j in range(self.num_shards) if j != k)

    def _park(self, k: int, recs: list, toks: list[str]) -> None:
        """Park records for shard k, dropping its oldest parked ones beyond the backlog."""
        parked = self.backlog[k]
        parked.extend(zip(recs, toks))
        over = len(parked) - self._cfg.shard_backlog
        if over > 0:
            del parked[:over]
            self.shed += over
            log.warning(
                "replay shard %d unreachable and its backlog full: dropped %d parked rollouts "
                "(%d so far)",
                k,
                over,
                self.shed,
            )

    def flush(self, force: bool = False) -> int:
        """Retry the parked records of every shard that is due (``force``: every shard, due
        or not: an actor that stops); returns how many were stored. Never raises: a shard
        that fails again stays parked (backing off)."""
        stored = 0
        for k, parked in enumerate(self.backlog):
            if not parked or not (force or self.health.due(k)):
                continue
            recs, toks = [r for r, _ in parked], [t for _, t in parked]
            try:
                self.stores[k].insert_many(recs, 0.0, toks)  # never wait for its limiter here
            except ReplayUnavailable:
                self.health.failed(k)
                continue
            except ReplayBackpressure:  # its limiter or memory: try again at the next insert
                self.health.ok(k)
                continue
            except RecordError:  # cannot happen (validated before parking); do not loop on it
                pass
            self.health.ok(k)
            stored += len(parked)
            parked.clear()
        return stored

    @property
    def parked(self) -> int:
        return sum(len(b) for b in self.backlog)

    def evict(self, n_trajectories: int) -> int:
        """Evict the ``ceil(n / K)`` oldest trajectories of every shard; returns how many
        went."""
        per = -(-n_trajectories // self.num_shards)
        return sum(s.evict(per) for s in self.stores)

    def clear(self) -> None:
        """Delete every key of this namespace on every shard (and the parked records)."""
        for s in self.stores:
            s.clear()
        for b in self.backlog:
            b.clear()

    def stats(self) -> ReplayStats:
        """Summed counters of the shards (a down shard's last known ones) plus rates."""
        return _merged(self.stores, self._last, self.health, self._meter)


def _merged(parts: Sequence, last: list, health: _Health, meter: RateMeter) -> ReplayStats:
    for k, p in enumerate(parts):
        if health.is_down(k) and not health.due(k):
            continue
        try:
            last[k] = p.stats()
        except ReplayUnavailable:
            health.failed(k)
    out = merge_stats([s if s is not None else ReplayStats() for s in last])
    out.shard_outages = health.outages
    return meter.update(out)


class ShardedSampler:
    """Batches drawn across K shards in proportion to their contents (implements
    ``ReplaySampler``); module doc. ``shape``: the learner's, as for ``Sampler`` (every
    shard's sampler gets it)."""

    def __init__(
        self,
        clients: Sequence[redis.Redis],
        cfg: ReplayConfig,
        shape: SampleShape,
        relabel: Relabeler | None = None,
        seed: int | None = 0,
        spec: EnvSpec | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        cfg.validate(shape)
        if len(clients) != cfg.num_shards:
            raise ValueError(f"{len(clients)} clients for {cfg.num_shards} shards")
        self._cfg = cfg
        self._shape = shape
        self.samplers = [
            Sampler(
                c,
                cfg.shard(k),
                shape,
                relabel=relabel,
                seed=None if seed is None else seed + 1009 * (k + 1),
                spec=spec,
            )
            for k, c in enumerate(clients)
        ]
        self._rng = np.random.default_rng(seed)
        self.health = _Health(len(clients), retry_s, max_retry_s, clock)
        self._by_steps = cfg.sampling == "length"
        self.rows = [0] * len(clients)  # rows drawn so far from each shard
        self._meter = RateMeter()
        self._last: list[ReplayStats | None] = [None] * len(clients)

    @property
    def config(self) -> ReplayConfig:
        return self._cfg

    @property
    def shape(self) -> SampleShape:
        return self._shape

    def _weights(self, shards: list[int]) -> np.ndarray:
        """Each shard's share: its live trajectories (or timesteps), as its index last saw
        them; a shard not seen yet gets the others' mean (at least 1), so it is looked at."""
        w = np.array(
            [float(self.samplers[k].content()[1 if self._by_steps else 0]) for k in shards]
        )
        known = w[w > 0]
        w[w <= 0] = max(float(known.mean()) if len(known) else 1.0, 1.0)
        return w / w.sum()

    def _eligible(self, refused: set[int]) -> list[int]:
        """Shards to draw from now: not refused in this round and up (or due for a retry);
        if every shard is down, all that were not refused (try them all)."""
        h = self.health
        rest = [k for k in range(len(self.samplers)) if k not in refused]
        up = [k for k in rest if not h.is_down(k) or h.due(k)]
        if up:
            return up
        return rest if len(h.down()) == len(self.samplers) else []

    def sample(self, batch_size: int | None = None, timeout_s: float | None = None) -> Batch:
        """A batch of ``batch_size`` windows from the shards (module doc). Waits up to
        ``timeout_s`` while every reachable shard refuses, then refunds and raises
        ``RateLimitTimeout``; raises ``ReplayUnavailable`` if no shard can be reached."""
        b = self._shape.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        timeout = self._cfg.sample_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        delay = min(0.001, self._cfg.poll_interval_s)
        parts: list[tuple[int, Batch]] = []
        need = b
        refused: set[int] = set()
        reached = False  # some shard answered in this call
        unavailable: ReplayUnavailable | None = None
        try:
            while need:
                shards = self._eligible(refused)
                if not shards:
                    if not reached and unavailable is not None:
                        raise unavailable
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RateLimitTimeout(
                            f"sample waited {timeout:.3g}s: every replay shard refused "
                            f"(empty, below min size or ratio used up; down: "
                            f"{self.health.down()})"
                        )
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, self._cfg.poll_interval_s)
                    refused.clear()
                    continue
                split = self._rng.multinomial(need, self._weights(shards))
                for k, n in zip(shards, split.tolist()):
                    if n == 0:
                        continue
                    try:
                        part = self.samplers[k].sample(n, timeout_s=0)
                    except RateLimitTimeout:
                        self.health.ok(k)
                        reached = True
                        refused.add(k)
                        continue
                    except ReplayUnavailable as e:
                        self.health.failed(k)
                        unavailable = e
                        refused.add(k)
                        continue
                    self.health.ok(k)
                    reached = True
                    parts.append((k, part))
                    self.rows[k] += n
                    need -= n
        except BaseException:
            self._refund(parts)
            raise
        return concat_batches([p for _, p in parts])

    def _refund(self, parts: list[tuple[int, Batch]]) -> None:
        for k, part in parts:
            self.rows[k] -= len(part.mask)
            try:
                self.samplers[k].refund(part)
            except (ReplayUnavailable, redis.exceptions.RedisError):
                pass  # that shard over-counts one batch: its limiter errs on the safe side

    def stats(self) -> ReplayStats:
        """Summed counters of the shards (a down shard's last known ones) plus rates."""
        return _merged(self.samplers, self._last, self.health, self._meter)

    def task_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samplers:
            for task, n in s.task_counts().items():
                out[task] = out.get(task, 0) + n
        return out

    def content(self) -> tuple[int, int]:
        c = [s.content() for s in self.samplers]
        return sum(x for x, _ in c), sum(y for _, y in c)


def make_writer(cfg: ReplayConfig, shape: SampleShape | None = None) -> ReplayStore | ShardedStore:
    """The writer for ``cfg`` (``shape``: the learner's, see ``ReplayStore``): a ReplayStore
    with one server, else a ShardedStore."""
    if cfg.num_shards == 1:
        from replay_service.client import connect

        return ReplayStore(connect(cfg.redis), cfg, shape)
    return ShardedStore(connect_shards(cfg), cfg, shape)


def make_sampler(
    cfg: ReplayConfig,
    shape: SampleShape,
    relabel: Relabeler | None = None,
    seed: int | None = 0,
    spec: EnvSpec | None = None,
) -> Sampler | ShardedSampler:
    """The sampler for ``cfg`` (fresh data) drawing the learner's ``shape``: a Sampler with
    one server, else sharded."""
    if cfg.num_shards == 1:
        from replay_service.client import connect

        return Sampler(connect(cfg.redis), cfg, shape, relabel=relabel, seed=seed, spec=spec)
    return ShardedSampler(connect_shards(cfg), cfg, shape, relabel=relabel, seed=seed, spec=spec)


__all__ = [
    "ShardedSampler",
    "ShardedStore",
    "connect_shards",
    "make_sampler",
    "make_writer",
    "merge_stats",
    "shard_of",
]
