"""The write side of the replay service: validated, idempotent, capacity-bounded inserts.

An insert is one round trip: a pipeline of a plain SET of the encoded record under a pending
key (the only command carrying the bytes; under ``maxmemory`` + ``noeviction`` it is what gets
refused, before anything else changed) and the Lua commit (``replay_service.lua.COMMIT``):
dedup token check, rate limiter check, RENAME to the next id, totals, and FIFO eviction of the
oldest trajectories while either capacity (timesteps, bytes) is exceeded. While the rate limiter
says wait, only the commit is retried. Any number of writer processes may insert concurrently:
Redis runs scripts one at a time and ids are assigned inside the commit. All state lives in
Redis; a ReplayStore holds no state needed for correctness.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import redis

from common.codec import Limits, RecordError, decode, encode
from common.records import Trajectory
from replay_service.config import ReplayConfig, SampleShape
from replay_service.errors import (
    RateLimitTimeout,
    ReplayBackpressure,
    ReplayError,
    translated_errors,
)
from replay_service.lua import Keys, Scripts, task_token, token_grace_ms
from replay_service.rate_limiter import RateLimits
from replay_service.stats import RateMeter, ReplayStats, read_stats

#: Seconds an uploaded but uncommitted record survives (at least; 2x the insert timeout).
_PENDING_TTL_S = 600.0


class ReplayStore:
    """Inserts whole trajectories into one namespace (implements ``ReplayWriter``).

    ``shape``: the learner's :class:`SampleShape` (what its samplers are given). The insert
    side of the rate limiter needs it when the ratio is on with an automatic
    ``rate_limit.error_buffer`` (``ValueError`` without it then); otherwise it may be omitted.
    """

    def __init__(self, client: redis.Redis, cfg: ReplayConfig, shape: SampleShape | None = None):
        cfg.validate(shape)
        self._client = client
        self._cfg = cfg
        self.keys = Keys(cfg.redis.namespace)
        self._scripts = Scripts(client)
        self._limits = RateLimits.from_config(cfg, shape)
        self._codec_limits = Limits(max_steps=cfg.max_traj_steps, max_bytes=cfg.max_record_bytes)
        self._meter = RateMeter()
        self._backpressure_events = 0
        lim = self._limits
        self._tomb_args = [self.keys.token_prefix, token_grace_ms(cfg.insert_timeout_s)]
        self._static_args = [  # commit ARGV after blob_prefix and epoch
            cfg.max_steps,
            cfg.max_bytes,
            repr(float(lim.samples_per_insert)),
            lim.min_size,
            repr(float(lim.max_diff)),
            *self._tomb_args,
        ]

    @property
    def config(self) -> ReplayConfig:
        return self._cfg

    def flush(self, force: bool = False) -> int:
        """Nothing is ever held back by one server (``ReplayWriter.flush``)."""
        return 0

    def insert(
        self,
        traj: Trajectory | bytes | memoryview,
        timeout_s: float | None = None,
        token: str | None = None,
    ) -> int:
        """Validate and store one trajectory (or an already encoded record); returns its id.

        Waits up to ``timeout_s`` (default ``cfg.insert_timeout_s``) while the rate limiter
        says sampling lags behind, then raises :class:`RateLimitTimeout`. Raises
        ``RecordError`` for a malformed or oversized record (counted by reason, store
        unchanged), :class:`ReplayBackpressure` if Redis is out of memory (nothing written)
        and :class:`ReplayUnavailable` if the server cannot be reached. ``token`` (any
        unique string) makes the insert idempotent across the caller's own retries: a token
        is stored at most once, also when its record was evicted meanwhile (the token is
        remembered for ``lua.token_grace_ms`` after the removal: at least 600 s; a retry
        then returns the evicted id). A fresh one is drawn per call when omitted; the
        service's internal retries always reuse it.
        """
        return self.insert_many([traj], timeout_s, None if token is None else [token])[0]

    def insert_many(
        self,
        trajs: Sequence[Trajectory | bytes | memoryview],
        timeout_s: float | None = None,
        tokens: Sequence[str] | None = None,
    ) -> list[int]:
        """Store several trajectories in one round trip (pipelined); returns their ids.

        Every record is validated before anything is sent (a malformed one raises
        ``RecordError`` and nothing is stored); then each is committed on its own, in order,
        with the same waits and errors as :meth:`insert`. If an error is raised, records
        before it may already be stored: retry with the same ``tokens`` (one per record)
        to store each exactly once.
        """
        prepared = [self._prepare(t) for t in trajs]
        if tokens is None:
            tokens = [secrets.token_hex(16) for _ in prepared]
        if len(tokens) != len(prepared) or len(set(tokens)) != len(tokens):
            raise ValueError("tokens must be unique, one per record")
        tokens = [task_token(t, p[2]) for t, p in zip(tokens, prepared)]  # the index's task tag
        timeout = self._cfg.insert_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        delay = min(0.001, self._cfg.poll_interval_s)
        ttl_ms = int(1000 * max(_PENDING_TTL_S, 2 * timeout))
        epoch = secrets.token_hex(8)
        ids: list[int] = [-1] * len(prepared)
        todo = list(range(len(prepared)))  # not committed yet
        uploaded: set[int] = set()  # pending blob in Redis
        uploads = 0
        try:
            while todo:
                if uploads >= 3 * len(prepared) + 3:
                    raise ReplayError("insert: uploaded records vanished repeatedly")
                uploads += sum(1 for i in todo if i not in uploaded)
                with translated_errors("insert"):
                    results = self._commit(todo, prepared, tokens, uploaded, ttl_ms, epoch)
                waiting, refused = [], None
                for i, res in zip(todo, results):
                    status = res[0]
                    if status in (1, 2):  # committed now, or by an earlier try of this token
                        ids[i] = res[1]
                        uploaded.discard(i)
                    else:
                        waiting.append(i)
                        if status == -1:  # pending blob expired or namespace cleared
                            uploaded.discard(i)
                        else:
                            refused = refused or res
                todo = waiting
                if not todo or refused is None:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    lim = self._limits
                    raise RateLimitTimeout(
                        f"insert waited {timeout:.3g}s for the rate limiter: sampling lags "
                        f"behind (stored {int(refused[1])} timesteps, inserted*spi - sampled "
                        f"would be {float(refused[2]):.6g} > max_diff {lim.max_diff:.6g})"
                    )
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, self._cfg.poll_interval_s)
            return ids
        except ReplayBackpressure as e:
            if not isinstance(e, RateLimitTimeout):
                self._backpressure_events += 1
            raise
        finally:
            if uploaded:  # not committed: do not leave the uploads behind (they would expire)
                try:
                    self._client.delete(*(self.keys.pending(tokens[i]) for i in uploaded))
                except redis.exceptions.RedisError:
                    pass

    def _commit(
        self,
        todo: list[int],
        prepared: list[tuple[bytes | memoryview, int]],
        tokens: Sequence[str],
        uploaded: set[int],
        ttl_ms: int,
        epoch: str,
    ) -> list[tuple[int, int, object]]:
        """One round trip: SET each record of ``todo`` not uploaded yet under its pending key,
        then one commit script for all of them. Returns a (status, a, b) per record."""
        keys = self.keys
        pendings = [keys.pending(tokens[i]) for i in todo]
        pipe = self._client.pipeline(transaction=False)
        sets = [i for i in todo if i not in uploaded]
        for i in sets:
            pipe.set(keys.pending(tokens[i]), prepared[i][0], px=ttl_ms)
        commit_keys = [*keys.record_keys(), *pendings]
        commit_args: list = [keys.blob_prefix, epoch, *self._static_args]
        for i in todo:
            commit_args += [prepared[i][1], tokens[i]]
        pipe.evalsha(self._scripts.commit.sha, len(commit_keys), *commit_keys, *commit_args)
        replies = pipe.execute(raise_on_error=False)
        for i, reply in zip(sets, replies):
            if isinstance(reply, Exception):
                raise reply  # e.g. out of memory: this record was not stored
            uploaded.add(i)
        res = replies[-1]
        if isinstance(res, redis.exceptions.NoScriptError):  # server restarted: reload
            res = self._scripts.commit(keys=commit_keys, args=commit_args)
        elif isinstance(res, Exception):
            raise res
        return [(int(res[j]), int(res[j + 1]), res[j + 2]) for j in range(0, len(res), 3)]

    def _prepare(
        self, traj: Trajectory | bytes | memoryview
    ) -> tuple[bytes | memoryview, int, object]:
        """(encoded record, timesteps, its ``meta.info["task"]``), or RecordError after
        counting the rejection."""
        try:
            if isinstance(traj, Trajectory):
                blob: bytes | memoryview = encode(  # validates with the store's limits
                    traj,
                    self._cfg.compression,
                    self._cfg.compress_min_bytes,
                    limits=self._codec_limits,
                )
                if len(blob) > self._cfg.max_record_bytes:
                    raise RecordError(
                        "record",
                        "oversize",
                        f"{len(blob)} encoded bytes > max {self._cfg.max_record_bytes}",
                    )
                return blob, len(traj), traj.meta.info.get("task")
            if not isinstance(traj, (bytes, memoryview)):
                raise TypeError(f"insert() takes a Trajectory or bytes, not {type(traj).__name__}")
            decoded = decode(traj, self._codec_limits)
            return traj, len(decoded), decoded.meta.info.get("task")
        except RecordError as e:
            self._count_rejection(e.reason)
            raise

    def _count_rejection(self, reason: str) -> None:
        # Best effort: a rejection must surface as RecordError even if counting fails.
        try:
            self._client.hincrby(self.keys.rejected, reason, 1)
        except redis.exceptions.RedisError:
            pass

    def evict(self, n_trajectories: int) -> int:
        """Evict the ``n_trajectories`` oldest trajectories now; returns how many went.

        Works while Redis is out of memory (it only deletes), so it is the way out of
        :class:`ReplayBackpressure` short of :meth:`clear`.
        """
        with translated_errors("evict"):
            return int(
                self._scripts.evict(
                    keys=self.keys.record_keys(),
                    args=[self.keys.blob_prefix, n_trajectories, *self._tomb_args],
                )
            )

    def clear(self) -> None:
        """Delete every key of this namespace (data, counters and limiter state)."""
        with translated_errors("clear"):
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=self.keys.prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._client.delete(*batch)
                    batch.clear()
            if batch:
                self._client.delete(*batch)

    def stats(self) -> ReplayStats:
        """Shared counters of this namespace plus rates since the previous call."""
        s = read_stats(self._client, self.keys)
        s.backpressure_events = self._backpressure_events
        return self._meter.update(s)
