"""The read side of the replay service: rate-limited window sampling into padded batches.

One ``sample()`` is, per chunk of at most ``shape.batch_size`` windows (the learner's
:class:`~replay_service.config.SampleShape`, given to the sampler):

1. draw trajectory ids from the local length index (uniform, or by length; with
   ``task_sampling: uniform_over_tasks`` a task uniformly first, from the task tag the index
   keeps for every id);
2. one round trip: a Lua call that reserves the windows' real timesteps with the rate limiter
   AND returns the index delta (new ids' lengths, evictions), pipelined with an MGET of the
   blobs not in the decode cache. If the limiter refuses, back off and retry (reservation
   only) until the timeout;
3. each blob is decoded (validated; cached), relabeled WHOLE, then cut to a window of
   ``min(N, shape.max_seq_len)`` timesteps with a uniform start;
4. ids found evicted meanwhile, or unusable (see below), are redrawn, and their reserved
   timesteps refunded so the limiter counts exactly what was sampled.

Every process survives any record: decoding, the env-spec check, relabeling, the window and
the collation are guarded PER RECORD. A record that fails is skipped (the batch is filled from
others) and counted in the namespace's ``bad`` hash (``ReplayStats.corrupt``) by reason:

- a codec reason (``truncated``, ``schema``, ``dtype``...): the blob does not decode or
  validate; dropped from the store at once (decoding is deterministic);
- ``schema``: a valid record that does not match the env spec given to the sampler (obs keys,
  shapes, dtypes, action size, spec'd extras), before or after relabeling;
- ``relabel``: the relabeler raised on it;
- ``collate``: it cannot be windowed or batched (inconsistent lengths, a policy_version
  outside int64, or collation raised);
- ``missing``: the index holds it but its blob is gone (an evicting external server, a manual
  DEL): the entry is removed and the totals repaired, atomically (``lua.DROP``);
- ``layout`` (no spec given only): a valid record whose layout differs from this sampler's
  batches (fixed by the first row); skipped by this sampler, never dropped.

``schema``, ``relabel`` and ``collate`` failures are counted each time; a record's second
failure (in this sampler) drops it from the store with the store's bookkeeping (totals,
``dropped_trajectories``).

The length index and the decode cache are caches of what Redis holds (``info`` hash,
head/next/epoch, immutable blobs), refreshed with every reservation; a changed epoch
(namespace cleared, server restarted empty) or a rewind (server restarted from an older
persisted state: the id counter went backwards, or the newest id this sampler knows now holds
another record) rebuilds both. Samplers hold nothing else: run several against one namespace
if needed.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import redis

from common.codec import Limits, RecordError, decode
from common.records import Batch, Trajectory, Window, collate
from common.spec import EnvSpec
from replay_service.config import ReplayConfig, SampleShape
from replay_service.errors import RateLimitTimeout, ReplayError, translated_errors
from replay_service.lua import Keys, Scripts, token_grace_ms
from replay_service.rate_limiter import RateLimits
from replay_service.relabel import Relabeler, get_relabeler
from replay_service.stats import RateMeter, ReplayStats, read_stats

log = logging.getLogger(__name__)

_WAIT_REASONS = {
    -1: "the store is empty",
    -2: "the store holds fewer than rate_limit.min_size_steps timesteps",
    -3: "the sample-to-insert ratio is used up (waiting for inserts)",
}

#: Sample-time reasons (``ReplayStats.corrupt`` keys) besides the codec's own.
SAMPLE_REASONS = ("schema", "relabel", "collate", "missing", "layout")

#: Failures of one record (in one sampler) after which it is dropped from the store.
MAX_STRIKES = 2

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: What every row of one sampler's batches must look like: ((obs key, trailing shape, dtype),
#: ...), action size. From the env spec, else set by the first row.
_Layout = tuple[tuple[tuple[str, tuple[int, ...], str], ...], int]
#: Extras a record must carry (spec only): ((key, trailing shape, dtype), ...).
_Extras = tuple[tuple[str, tuple[int, ...], str], ...]


def _layout(t: Trajectory) -> _Layout:
    obs = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(t.obs.items()))
    return obs, int(t.prev_action.shape[1])


def _spec_layout(spec: EnvSpec) -> tuple[_Layout, _Extras]:
    def items(d) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return tuple(
            (k, tuple(int(x) for x in a.shape), np.dtype(a.dtype).str) for k, a in sorted(d.items())
        )

    return (items(spec.obs), int(spec.action_dim)), items(spec.extras)


def _extras_problem(t: Trajectory, extras: _Extras) -> str | None:
    for k, shape, dtype in extras:
        a = t.extras.get(k)
        if a is None:
            return f"extras {k!r} missing"
        if a.shape[1:] != shape or a.dtype.str != dtype:
            return f"extras {k!r} is {a.shape[1:]} {a.dtype.str}, spec {shape} {dtype}"
    return None


def _structure_problem(t: object) -> str | None:
    """Why ``t`` cannot be windowed and collated (None if it can): the checks behind every
    assignment :func:`common.records.collate` makes."""
    if not isinstance(t, Trajectory):
        return f"not a Trajectory: {type(t).__name__}"
    try:
        arrays = t.arrays()
        n = len(t)
    except Exception as e:  # noqa: BLE001 - anything a malformed object raises
        return f"unreadable: {e!r}"
    if n < 1:
        return "no timesteps"
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim < 1 or a.shape[0] != n:
            return f"{name}: not an (N={n}, ...) array"
    if t.prev_action.ndim != 2 or not t.obs:
        return "prev_action must be (N, A) and obs not empty"
    v = t.meta.policy_version
    if not isinstance(v, (int, np.integer)) or not _INT64_MIN <= int(v) <= _INT64_MAX:
        return f"policy_version {v!r} does not fit int64"
    return None


class _LengthIndex:
    """Lengths of the live ids [base, base + len(lens)); 0 marks an id known to be gone.

    ``check`` is the newest live id seen and its insert token: the reserve script compares
    them with the server's to detect a rewind (ids reused after a restart from older data).
    ``tasks`` holds each id's task (an index into ``names``; ``names[0]`` is "", untagged),
    from the task tag of its stored insert token (``lua.task_token``).
    """

    def __init__(self) -> None:
        self.epoch = b"\x00unknown"
        self.base = 0
        self.lens = np.zeros(0, np.int64)
        self.tasks = np.zeros(0, np.int32)
        self.names: list[str] = [""]
        self._codes: dict[bytes, int] = {b"": 0}
        self.check: tuple[int, bytes] = (-1, b"")
        self._live: np.ndarray | None = None  # positions with lens > 0
        self._cum: np.ndarray | None = None  # cumulative lengths
        self._groups: list[np.ndarray] | None = None  # live positions of each present task

    @property
    def next_id(self) -> int:
        return self.base + len(self.lens)

    def _task_codes(self, tcsv: bytes | None, n: int) -> np.ndarray:
        parts = tcsv.split(b",") if tcsv else []
        if len(parts) != n:  # an older server script (no tags): all untagged
            return np.zeros(n, np.int32)
        out = np.empty(n, np.int32)
        for i, name in enumerate(parts):
            code = self._codes.get(name)
            if code is None:
                code = self._codes[name] = len(self.names)
                self.names.append(name.decode("utf-8", "replace"))
            out[i] = code
        return out

    def update(
        self,
        epoch: bytes,
        head: int,
        frm: int,
        csv: bytes,
        resync: bool,
        cid: int,
        ctok: bytes,
        tcsv: bytes | None = None,
    ) -> bool:
        """Apply a delta from the reserve script; True if the data was replaced (epoch changed
        or a rewind was detected): everything known about the old ids is void."""
        new = np.array(csv.split(b","), dtype=np.int64) if csv else np.zeros(0, np.int64)
        new_tasks = self._task_codes(tcsv, len(new))
        changed = epoch != self.epoch or resync
        if changed or frm != self.next_id:
            self.epoch, self.base, self.lens, self.tasks = epoch, frm, new, new_tasks
            self.check = (-1, b"")
        elif len(new):
            self.lens = np.concatenate([self.lens, new])
            self.tasks = np.concatenate([self.tasks, new_tasks])
        if cid >= 0:
            self.check = (cid, ctok)
        if head > self.base:
            cut = min(head - self.base, len(self.lens))
            self.lens, self.tasks = self.lens[cut:], self.tasks[cut:]
            self.base = head
        self._live = self._cum = self._groups = None
        return changed

    def forget(self, traj_id: int) -> None:
        pos = traj_id - self.base
        if 0 <= pos < len(self.lens) and self.lens[pos]:
            self.lens = self.lens.copy()
            self.lens[pos] = 0
            self._live = self._cum = self._groups = None

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

    def task_counts(self) -> dict[str, int]:
        """Live trajectories per task ("" = untagged)."""
        codes, counts = np.unique(self.tasks[self.live()], return_counts=True)
        return {self.names[c]: int(n) for c, n in zip(codes.tolist(), counts.tolist())}

    def _task_groups(self) -> list[np.ndarray]:
        if self._groups is None:
            live = self.live()
            codes = self.tasks[live]
            self._groups = [live[codes == c] for c in np.unique(codes).tolist()]
        return self._groups

    def draw(
        self, rng: np.random.Generator, m: int, mode: str, by_task: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``m`` ids (with replacement) and their lengths; the index must not be empty.
        ``by_task``: each draw picks a task uniformly among those live, then an id of it."""
        if by_task:
            groups = self._task_groups()
            if len(groups) > 1:
                which = rng.integers(0, len(groups), size=m)
                pos = np.empty(m, np.int64)
                for g in np.unique(which).tolist():
                    sel = np.flatnonzero(which == g)
                    pos[sel] = _pick(rng, groups[g], self.lens, len(sel), mode)
                return self.base + pos, self.lens[pos]
        if mode == "length":
            if self._cum is None:
                self._cum = np.cumsum(self.lens)
            pos = np.searchsorted(self._cum, rng.random(m) * self._cum[-1], side="right")
        else:
            live = self.live()
            pos = live[rng.integers(0, len(live), size=m)]
        return self.base + pos, self.lens[pos]


def _pick(rng: np.random.Generator, group: np.ndarray, lens: np.ndarray, k: int, mode: str):
    """``k`` positions of ``group`` (uniform, or by length)."""
    if mode == "length":
        cum = np.cumsum(lens[group])
        return group[np.searchsorted(cum, rng.random(k) * cum[-1], side="right")]
    return group[rng.integers(0, len(group), size=k)]


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


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """Rows of ``parts`` in order, right-padded to the longest length among them."""
    if len(parts) == 1:
        return parts[0]
    L = max(p.mask.shape[1] for p in parts)

    def cat(arrays: list[np.ndarray]) -> np.ndarray:
        padded = []
        for a in arrays:
            if a.shape[1] < L:
                pad = np.zeros((a.shape[0], L - a.shape[1], *a.shape[2:]), a.dtype)
                a = np.concatenate([a, pad], axis=1)
            padded.append(a)
        return np.concatenate(padded, axis=0)

    return Batch(
        obs={k: cat([p.obs[k] for p in parts]) for k in parts[0].obs},
        prev_action=cat([p.prev_action for p in parts]),
        prev_reward=cat([p.prev_reward for p in parts]),
        time_idx=cat([p.time_idx for p in parts]),
        terminated=cat([p.terminated for p in parts]),
        truncated=cat([p.truncated for p in parts]),
        mask=cat([p.mask for p in parts]),
        policy_version=np.concatenate([p.policy_version for p in parts]),
    )


class Sampler:
    """Draws right-padded windows from one namespace (implements ``ReplaySampler``).

    ``shape`` is the learner's :class:`SampleShape`: windows of at most ``max_seq_len``
    timesteps, ``batch_size`` of them per ``sample()`` by default (and per rate-limiter
    reservation). ``spec`` (optional) fixes the batch layout (observation keys, shapes and
    dtypes, action size) and the extras a record must carry; records that do not match it are
    skipped and counted as ``"schema"``. Without it the first row sampled fixes the layout.
    """

    def __init__(
        self,
        client: redis.Redis,
        cfg: ReplayConfig,
        shape: SampleShape,
        relabel: Relabeler | None = None,
        seed: int | None = 0,
        spec: EnvSpec | None = None,
    ):
        cfg.validate(shape)
        self._client = client
        self._cfg = cfg
        self._shape = shape
        self.keys = Keys(cfg.redis.namespace)
        self._scripts = Scripts(client)
        self._limits = RateLimits.from_config(cfg, shape)
        self._codec_limits = Limits(max_steps=cfg.max_traj_steps, max_bytes=cfg.max_record_bytes)
        self._relabel = relabel or get_relabeler(cfg.relabel, **cfg.relabel_kwargs)
        self._rng = np.random.default_rng(seed)
        self._index = _LengthIndex()
        self._cache = _DecodeCache(cfg.sample_cache_mb * 2**20)
        self._spec = spec
        self._layout: _Layout | None = None
        self._extras: _Extras = ()
        if spec is not None:
            self._layout, self._extras = _spec_layout(spec)
        self._strikes: dict[int, int] = {}  # id -> failures seen here (below MAX_STRIKES)
        self._drop_args = [self.keys.token_prefix, token_grace_ms(cfg.insert_timeout_s)]
        self._meter = RateMeter()
        self._by_task = cfg.task_sampling == "uniform_over_tasks"

    @property
    def config(self) -> ReplayConfig:
        return self._cfg

    @property
    def shape(self) -> SampleShape:
        return self._shape

    def sample(self, batch_size: int | None = None, timeout_s: float | None = None) -> Batch:
        """A batch of ``batch_size`` windows (default ``shape.batch_size``).

        Waits up to ``timeout_s`` (default ``cfg.sample_timeout_s``) while the store is empty,
        below ``rate_limit.min_size_steps`` or the ratio is used up, then raises
        :class:`RateLimitTimeout` (nothing counted as sampled). Raises
        :class:`ReplayUnavailable` if the server cannot be reached. Never raises because of
        what a record holds: unusable records are skipped (module doc).
        """
        b = self._shape.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        timeout = self._cfg.sample_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        rows: list[Window] = []
        row_ids: list[int] = []
        reserved_steps = reserved_windows = 0
        batch: Batch | None = None
        try:
            while batch is None:
                while len(rows) < b:
                    m = min(b - len(rows), self._shape.batch_size)
                    ids, widths, blobs = self._reserve_and_fetch(m, deadline, timeout)
                    reserved_steps += int(widths.sum())
                    reserved_windows += m
                    self._windows(ids, blobs, rows, row_ids)
                batch = self._collate_guarded(rows, row_ids)
        except RateLimitTimeout:
            self._adjust(-reserved_steps, -reserved_windows)  # nothing was sampled after all
            raise
        used = sum(w for _, _, w in rows)
        self._adjust(used - reserved_steps, len(rows) - reserved_windows)
        return batch

    def stats(self) -> ReplayStats:
        """Shared counters of this namespace plus rates since the previous call."""
        return self._meter.update(read_stats(self._client, self.keys))

    def task_counts(self) -> dict[str, int]:
        """Live trajectories per task ("" = untagged) as this sampler's index last saw them."""
        return self._index.task_counts()

    def content(self) -> tuple[int, int]:
        """(trajectories, timesteps) live as this sampler's index last saw them (no round
        trip; refreshed by every sample)."""
        idx = self._index
        return len(idx.live()), int(idx.lens.sum())

    def refund(self, batch: Batch) -> None:
        """Un-count a batch this sampler returned but the caller discarded (its real
        timesteps and windows come off the shared sample counters)."""
        self._adjust(-int(batch.mask.sum()), -len(batch.mask))

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
                ids, lens = idx.draw(self._rng, m, self._cfg.sampling, self._by_task)
                widths = np.minimum(lens, self._shape.max_seq_len)
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
                *idx.check,
            ]
            with translated_errors("sample"):
                if need and not refused:  # optimistic: fetch in the same round trip
                    res, blobs = self._reserve_with_mget(args, need)
                else:
                    res = self._scripts.reserve(keys=[self.keys.meta, self.keys.info], args=args)
                    blobs = None
            status = int(res[0])
            changed = idx.update(
                res[1],
                int(res[2]),
                int(res[4]),
                res[5],
                int(res[6]) == 1,
                int(res[7]),
                res[8],
                res[9] if len(res) > 9 else None,
            )
            if changed:
                self._cache.clear()  # ids now name other data
                self._strikes.clear()
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

    def _windows(
        self,
        ids: np.ndarray,
        blobs: dict[int, bytes | None],
        rows: list[Window],
        row_ids: list[int],
    ) -> None:
        """Append the windows of the trajectories ``ids`` to ``rows`` (their ids to
        ``row_ids``); skips (and counts, forgets or drops) missing or unusable ones."""
        L = self._shape.max_seq_len
        drawn = ids.tolist()
        # this call's trajectories (None: unusable); cached ones taken first, so that caching
        # the new ones cannot push a drawn one out of the LRU
        known: dict[int, Trajectory | None] = {}
        for traj_id in drawn:
            if traj_id not in known and traj_id not in blobs:
                known[traj_id] = self._cache.get(traj_id)
        ghosts: list[int] = []  # live in the index, blob gone
        for traj_id in drawn:
            if traj_id in known:
                traj = known[traj_id]
            else:
                traj = known[traj_id] = self._load(traj_id, blobs.get(traj_id), ghosts)
            if traj is None:
                continue
            try:
                out = self._relabel(traj, self._rng)
            except Exception as e:  # noqa: BLE001 - any record-dependent failure
                if self._strike(traj_id, "relabel", repr(e)):
                    known[traj_id] = None
                continue
            # `traj` came from decode, whose contract covers every structure check: only a
            # relabeler's new object needs them
            reason, detail = self._row_problem(out, checked=out is traj)
            if reason == "layout":  # valid, but not shaped like our batches (no spec)
                self._count_corrupt("layout")
                self._index.forget(traj_id)
                self._cache.discard(traj_id)
                known[traj_id] = None
                continue
            if reason is not None:
                if self._strike(traj_id, reason, detail):
                    known[traj_id] = None
                continue
            if self._layout is None:
                self._layout = _layout(out)
            n = len(out)
            w = min(n, L)
            rows.append((out, int(self._rng.integers(0, n - w + 1)), w))
            row_ids.append(traj_id)
        if ghosts:
            self._drop(ghosts, "missing", only_missing=True)

    def _load(self, traj_id: int, blob: bytes | None, ghosts: list[int]) -> Trajectory | None:
        """Decode (validating), check against the spec and cache one blob; None if it is
        gone or unusable (counted)."""
        if blob is None:
            if self._index.is_live(np.array([traj_id]))[0]:  # not evicted: a vanished blob
                ghosts.append(traj_id)
            self._index.forget(traj_id)
            return None
        try:
            traj = decode(blob, self._codec_limits)
        except Exception as e:  # noqa: BLE001 - whatever a corrupt blob makes the codec raise
            reason = getattr(e, "reason", None) if isinstance(e, RecordError) else None
            self._drop([traj_id], reason if isinstance(reason, str) and reason else "schema")
            return None
        if self._spec is not None:  # (decode checked the structure: _structure_problem)
            problem = self._spec_problem(traj)
            if problem is not None:
                self._strike(traj_id, "schema", problem)
                return None
        if self._cache.max_bytes:
            self._cache.put(traj_id, traj)
        return traj

    def _spec_problem(self, t: Trajectory) -> str | None:
        if _layout(t) != self._layout:
            return "obs or action layout differs from the spec"
        return _extras_problem(t, self._extras)

    def _row_problem(self, out: object, checked: bool = False) -> tuple[str | None, str]:
        """(reason, detail) why a relabeled trajectory cannot be a row of our batches, or
        (None, ""). ``checked``: ``out`` is a decoded record (its structure is valid)."""
        problem = None if checked else _structure_problem(out)
        if problem is not None:
            return "collate", problem
        if self._layout is not None and _layout(out) != self._layout:  # type: ignore[arg-type]
            detail = "obs or action layout differs from the batches'"
            return ("schema" if self._spec is not None else "layout"), detail
        return None, ""

    def _strike(self, traj_id: int, reason: str, detail: str = "") -> bool:
        """Count one failure of a record; at its MAX_STRIKES-th, drop it. True if dropped."""
        self._cache.discard(traj_id)
        n = self._strikes.pop(traj_id, 0) + 1
        if n >= MAX_STRIKES:
            log.warning(
                "replay: dropping record %d (%s, failed %d times): %s", traj_id, reason, n, detail
            )
            self._drop([traj_id], reason)
            return True
        if len(self._strikes) >= 65536:  # bound the memory; forgetting only delays a drop
            self._strikes.clear()
        self._strikes[traj_id] = n
        self._count_corrupt(reason)
        return False

    def _drop(self, traj_ids: list[int], reason: str, only_missing: bool = False) -> None:
        """Remove records from the store (counted once each, by reason); never raises.
        ``only_missing``: only those whose blob is gone (index entries without a blob)."""
        for i in traj_ids:
            self._index.forget(i)
            self._cache.discard(i)
            self._strikes.pop(i, None)
        try:
            with translated_errors("drop"):
                self._scripts.drop(
                    keys=[*self.keys.record_keys(), self.keys.corrupt],
                    args=[
                        self.keys.blob_prefix,
                        reason,
                        int(only_missing),
                        *self._drop_args,
                        *traj_ids,
                    ],
                )
        except (ReplayError, redis.exceptions.RedisError):
            pass  # the next sampler to meet them will try again

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

    def _length(self, rows: list[Window]) -> int:
        if self._cfg.pad_to_max_seq_len:
            return self._shape.max_seq_len
        return max(w for *_, w in rows)

    def _collate_guarded(self, rows: list[Window], row_ids: list[int]) -> Batch | None:
        """The batch of ``rows``; None after removing (and striking) the rows that make
        collation fail, so that the caller refills them."""
        try:
            return self._collate(rows)
        except Exception:  # noqa: BLE001 - find the culprits below
            pass
        L = self._length(rows)
        bad = []
        for i, row in enumerate(rows):
            try:
                collate([row], L)
            except Exception:  # noqa: BLE001
                bad.append(i)
        if not bad:  # only the combination fails (never seen): start the batch over
            bad = list(range(len(rows)))
        for i in reversed(bad):
            traj_id = row_ids.pop(i)
            del rows[i]
            self._strike(traj_id, "collate")
        return None

    def _collate(self, rows: list[Window]) -> Batch:
        """Right-pad ``rows`` into a :class:`Batch` with a boolean mask."""
        return collate(rows, self._length(rows))
