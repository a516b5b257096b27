"""Offline data: a prefill partition loaded from replay dumps, and batches mixing it with
fresh data.

The prefill partition is its own namespace, ``<namespace>.prefill``, on the run's server:

- loaded once at start-up, before the learner samples (:func:`load_prefill`): each dump of
  ``replay.prefill.paths`` (``replay_service.dump``) is read through the codec's validation,
  checked against the env spec and inserted (every record as often as the dumps hold it);
  unusable records are skipped and counted, never fatal;
- never evicted: its capacity is unbounded (the server's ``maxmemory`` remains the
  backstop) and nothing inserts into it after the load, so the FIFO eviction of the fresh
  partition, a different namespace, cannot reach it;
- never rate limited: its limiter is off (``samples_per_insert = 0``, ``min_size_steps = 1``).

:class:`MixedSampler` draws ``replay.prefill.mix`` of every batch from it (stochastically
rounded per batch, so the expected share is exact) and the rest from the fresh partition
through its ordinary sampler. The fresh partition's rate limiter then counts FRESH data only:
``samples_per_insert`` = fresh sampled timesteps per collected timestep, so the learner trains
``spi / (1 - mix)`` sampled timesteps per collected one in all, and waits (``min_size_steps``,
the ratio) only for the fresh part of a batch. With ``mix = 1`` nothing samples the fresh
partition: :func:`fresh_rate_limit` turns its limiter off so actors never wait for a learner
that will not sample what they insert, and the learner never waits for fresh data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import redis
import xxhash

from common.codec import Limits
from common.config_utils import ConfigError
from common.records import Batch
from common.replay import ReplayStats
from common.spec import EnvSpec
from replay_service.config import PrefillConfig, RateLimitConfig, ReplayConfig, SampleShape
from replay_service.dump import (
    DumpError,
    DumpSummary,
    Manifest,
    iter_records,
    read_manifest,
    spec_problems,
)
from replay_service.relabel import Relabeler
from replay_service.sampler import concat_batches

log = logging.getLogger(__name__)

PREFILL_SUFFIX = ".prefill"
#: Capacity of the prefill partition (timesteps and bytes): in effect unbounded.
_UNBOUNDED = 2**53
_FIELD = "replay.prefill.paths"


def prefill_namespace(namespace: str) -> str:
    return namespace + PREFILL_SUFFIX


def partition_config(cfg: ReplayConfig) -> ReplayConfig:
    """The config of the prefill partition of ``cfg``'s namespace: no eviction, no limiter."""
    redis_cfg = dataclasses.replace(  # a sharded replay keeps it on shard 0 (redis.url)
        cfg.redis, namespace=prefill_namespace(cfg.redis.namespace), shards=[]
    )
    return dataclasses.replace(
        cfg,
        redis=redis_cfg,
        max_steps=_UNBOUNDED,
        max_bytes=_UNBOUNDED,
        rate_limit=RateLimitConfig(samples_per_insert=0.0, min_size_steps=1),
        prefill=PrefillConfig(),
    )


def fresh_rate_limit(cfg: ReplayConfig) -> tuple[ReplayConfig, str | None]:
    """``cfg`` with the fresh partition's limiter off when ``prefill.mix == 1`` (nothing
    samples fresh data then), and why; else ``cfg`` unchanged and None."""
    if cfg.prefill.mix < 1 or cfg.rate_limit.samples_per_insert == 0:
        return cfg, None
    rl = dataclasses.replace(cfg.rate_limit, samples_per_insert=0.0)
    return dataclasses.replace(cfg, rate_limit=rl), "replay.prefill.mix=1: fresh data is unsampled"


def check_dumps(cfg: ReplayConfig, spec: EnvSpec) -> list[Manifest]:
    """The manifests of ``cfg.prefill.paths``, each checked against the env ``spec``: a
    missing or malformed dump or one whose records the env could not have produced raises
    :class:`ConfigError` naming ``replay.prefill.paths`` (one line). Nothing is loaded."""
    out = []
    for i, path in enumerate(cfg.prefill.paths):
        try:
            m = read_manifest(path)
        except (DumpError, OSError) as e:
            raise ConfigError(f"{_FIELD}[{i}]", str(e)) from None
        problems = spec_problems(m, spec)
        if problems:
            raise ConfigError(
                f"{_FIELD}[{i}]", f"{path}: does not match the env: " + "; ".join(problems)
            )
        if m.timesteps and m.records and m.timesteps // m.records > cfg.max_traj_steps:
            log.warning("%s: trajectories longer than replay.max_traj_steps are skipped", path)
        out.append(m)
    return out


def record_token(dump: int, index: int, blob: bytes | memoryview) -> str:
    """The insert token of the ``index``-th record of the ``dump``-th dump: where it comes
    from and its content. Identical rollouts are common in scripted data and weigh as
    often as they occur: they are not merged."""
    return f"pf-{dump}-{index}-{xxhash.xxh3_64_hexdigest(blob)}"


@dataclasses.dataclass
class PrefillReport:
    """What :func:`load_prefill` stored and skipped."""

    namespace: str
    trajectories: int = 0  # stored
    timesteps: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)  # skipped, by reason
    dumps: list[dict] = dataclasses.field(default_factory=list)  # per dump: path, read, skipped
    seconds: float = 0.0

    def line(self) -> str:
        skipped = f", skipped {self.rejected}" if self.rejected else ""
        return (
            f"prefill: {self.trajectories} trajectories ({self.timesteps:,} timesteps) from "
            f"{len(self.dumps)} dump(s) into {self.namespace!r} in {self.seconds:.1f}s"
            f"{skipped}"
        )


def load_prefill(
    client: redis.Redis,
    cfg: ReplayConfig,
    spec: EnvSpec,
    manifests: Sequence[Manifest] | None = None,
    chunk: int = 64,
) -> PrefillReport:
    """Clear the prefill partition of ``cfg``'s namespace and load ``cfg.prefill.paths`` into
    it (checked first: :func:`check_dumps`). Records that fail the codec's validation, are
    longer than ``max_traj_steps`` or do not match ``spec`` are skipped and counted (also in
    the partition's ingest-rejection counters). Raises :class:`ConfigError` if no usable
    record was found (sampling could never start)."""
    from replay_service.store import ReplayStore

    t0 = time.monotonic()
    manifests = check_dumps(cfg, spec) if manifests is None else manifests
    pcfg = partition_config(cfg)
    store = ReplayStore(client, pcfg)
    store.clear()
    report = PrefillReport(pcfg.redis.namespace)
    limits = Limits(max_steps=cfg.max_traj_steps, max_bytes=cfg.max_record_bytes)
    for d, m in enumerate(manifests):
        summary = DumpSummary(str(m.path))
        blobs: list[bytes] = []
        tokens: list[str] = []
        for i, (blob, _) in enumerate(iter_records(m, limits, cfg.max_record_bytes, summary)):
            blobs.append(blob)
            tokens.append(record_token(d, i, blob))
            if len(blobs) >= chunk:
                store.insert_many(blobs, tokens=tokens)
                blobs, tokens = [], []
        if blobs:
            store.insert_many(blobs, tokens=tokens)
        for reason, n in summary.rejected.items():
            report.rejected[reason] = report.rejected.get(reason, 0) + n
            try:
                client.hincrby(store.keys.rejected, reason, n)
            except redis.exceptions.RedisError:
                pass
        report.dumps.append(
            {"path": str(m.path), "records": summary.records, "skipped": dict(summary.rejected)}
        )
    stats = store.stats()
    report.trajectories, report.timesteps = stats.trajectories, stats.timesteps
    report.seconds = time.monotonic() - t0
    if report.trajectories == 0:
        raise ConfigError(
            _FIELD,
            f"no usable trajectory in {list(cfg.prefill.paths)} (skipped {report.rejected})",
        )
    return report


class MixedSampler:
    """Batches of ``mix`` prefill rows and ``1 - mix`` fresh rows (implements
    ``ReplaySampler``). Each batch of B rows takes ``floor(mix * B)`` rows from the prefill
    partition, plus one more with probability ``frac(mix * B)``; prefill rows come first.

    ``stats()`` are the fresh partition's (what the rate limiter and the run's progress
    follow), with the prefill partition's sample-time problems added to ``corrupt`` as
    ``prefill_<reason>``; :meth:`prefill_stats` has the partition's own counters."""

    def __init__(self, fresh, prefill, mix: float, seed: int | None = 0):
        if not 0 <= mix <= 1 or not math.isfinite(mix):
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        self.fresh, self.prefill, self.mix = fresh, prefill, float(mix)
        self._rng = np.random.default_rng(seed)
        self.rows = {"prefill": 0, "fresh": 0}  # rows drawn so far from each partition

    @property
    def config(self) -> ReplayConfig:
        return self.fresh.config

    @property
    def shape(self) -> SampleShape:
        return self.fresh.shape

    def split(self, batch_size: int) -> int:
        """How many of ``batch_size`` rows come from the prefill partition (this draw)."""
        x = self.mix * batch_size
        n = int(math.floor(x))
        if x - n > 0 and self._rng.random() < x - n:
            n += 1
        return min(n, batch_size)

    def sample(self, batch_size: int | None = None, timeout_s: float | None = None) -> Batch:
        b = self.shape.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        timeout = self.config.sample_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        n_pre = self.split(b)
        parts = []
        # fresh rows first: only they can wait (rate limiter, min size), and a wait that
        # times out then wastes no prefill draw
        if b - n_pre:
            parts.append(self.fresh.sample(b - n_pre, timeout_s=timeout))
        if n_pre:
            remaining = max(deadline - time.monotonic(), 0.0)
            parts.insert(0, self.prefill.sample(n_pre, timeout_s=remaining))
        self.rows["prefill"] += n_pre
        self.rows["fresh"] += b - n_pre
        return concat_batches(parts)

    def stats(self) -> ReplayStats:
        st = self.fresh.stats()
        try:
            pre = self.prefill.stats()
        except Exception:  # noqa: BLE001 - the fresh stats matter more
            return st
        for reason, n in pre.corrupt.items():
            st.corrupt[f"prefill_{reason}"] = n
        return st

    def prefill_stats(self) -> ReplayStats:
        return self.prefill.stats()


def make_mixed_sampler(
    cfg: ReplayConfig,
    shape: SampleShape,
    client: redis.Redis,
    relabel: Relabeler | None = None,
    seed: int | None = 0,
    spec: EnvSpec | None = None,
) -> MixedSampler:
    """The learner's sampler when ``cfg.prefill.mix > 0``: fresh and prefill samplers on one
    client (the same relabeling, the same spec check, the learner's ``shape``), mixed. With a
    sharded replay the fresh sampler draws from every shard and the prefill partition is on
    shard 0 (``client``)."""
    from replay_service.sampler import Sampler
    from replay_service.shards import ShardedSampler, connect_shards

    fresh_cfg, _ = fresh_rate_limit(cfg)
    if fresh_cfg.num_shards > 1:
        fresh = ShardedSampler(
            [client, *connect_shards(fresh_cfg)[1:]], fresh_cfg, shape, relabel, seed, spec
        )
    else:
        fresh = Sampler(client, fresh_cfg, shape, relabel=relabel, seed=seed, spec=spec)
    pre_seed = None if seed is None else seed + 7919
    prefill = Sampler(
        client, partition_config(cfg), shape, relabel=relabel, seed=pre_seed, spec=spec
    )
    return MixedSampler(fresh, prefill, cfg.prefill.mix, seed=None if seed is None else seed + 1)
