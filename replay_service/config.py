"""Config dataclasses of the replay service (Hydra structured-config schemas).

Plain dataclasses with defaults and simple field types (int/float/str/bool/dict/nested
dataclasses) so OmegaConf can use them as schemas. Every ``validate()`` raises
:class:`common.config_utils.ConfigError` naming the offending field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from common.codec import COMPRESSIONS
from common.config_utils import ConfigError, prefixed, require

if TYPE_CHECKING:
    from common.spec import EnvSpec

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # fullmatch: no trailing newline
SAMPLING_MODES = ("uniform", "length")
TASK_SAMPLING_MODES = ("uniform_over_data", "uniform_over_tasks")
_SECRET = "***"
_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def redact_url(url: str) -> str:
    """``url`` with any password in it (``redis://user:PASSWORD@host``, ``?password=``)
    replaced by ``***``: what may appear in reprs, logs and error messages."""
    m = _SCHEME_RE.match(url)
    if m:
        rest = url[m.end() :]
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, host = rest[:cut].rpartition("@")  # as urllib (and redis-py) split it
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            url = f"{m.group()}{user}:{_SECRET}@{host}{rest[cut:]}"
    if "?" in url:
        base, query = url.split("?", 1)
        query, frag = query.split("#", 1) if "#" in query else (query, None)
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            pairs = [(k, _SECRET if k.lower() == "password" else v) for k, v in pairs]
            url = f"{base}?{urlencode(pairs, safe='*')}" + (f"#{frag}" if frag is not None else "")
    return url


@dataclass
class RedisConfig:
    """Where the replay state lives and how to reach it."""

    # redis://[user@]host:port[/db] or rediss:// (TLS). "" = the run starts an embedded server
    # (replay_service.server.EmbeddedServer) and fills this in before connecting.
    url: str = ""
    # AUTH password ("" = none). Kept out of the URL so it can come from a secret/env override.
    password: str = ""
    # Use TLS even if the URL says redis:// (a rediss:// URL always uses TLS).
    tls: bool = False
    # PEM file of the CA that signed the server certificate ("" = the system trust store).
    tls_ca_file: str = ""
    # Prefix of every key this run uses, so several runs can share one server. [A-Za-z0-9_.-]
    namespace: str = "amago"
    # Seconds a single command may take before it fails (large blobs on slow links need more).
    socket_timeout_s: float = 30.0
    # Seconds to wait for a TCP connection to open.
    connect_timeout_s: float = 5.0
    # Reconnect attempts per command after a connection error before ReplayUnavailable.
    retries: int = 2
    # More servers to shard the replay over (replay_service.shards): each a URL as ``url``
    # (which stays shard 0), all with this password, TLS and namespace. [] = one server.
    # Inserts go to the shard a stable hash of their token names; samples come from all.
    shards: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """As the dataclass repr, but never a secret (the password, one inside the URL)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = redact_url(self.url)
        shown["shards"] = [redact_url(u) for u in self.shards]
        shown["password"] = _SECRET if self.password else ""
        return f"RedisConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def urls(self) -> list[str]:
        """Every shard's URL, shard 0 (``url``) first."""
        return [self.url, *self.shards]

    def shard(self, k: int) -> RedisConfig:
        """The config of shard ``k`` alone (its URL, no further shards)."""
        return replace(self, url=self.urls[k], shards=[])

    def validate(self) -> None:
        require(
            self.url == "" or self.url.startswith(_URL_SCHEMES),
            "url",
            "must be '' or start with redis://, rediss:// or unix://, got "
            f"{redact_url(self.url)!r}",
        )
        require(isinstance(self.shards, (list, tuple)), "shards", "must be a list of server URLs")
        for i, u in enumerate(self.shards):
            require(
                isinstance(u, str) and u.startswith(_URL_SCHEMES),
                f"shards[{i}]",
                f"must start with redis://, rediss:// or unix://, got {redact_url(str(u))!r}",
            )
        require(
            not self.shards or bool(self.url),
            "shards",
            "set, but url is '' (embedded server): name shard 0 in url, or let the run start "
            "several embedded servers (deploy.embedded_shards)",
        )
        require(
            len(set(self.urls)) == len(self.urls),
            "shards",
            "the same server twice (url and shards must all differ)",
        )
        require(
            bool(_NAMESPACE_RE.fullmatch(self.namespace)),
            "namespace",
            f"must match {_NAMESPACE_RE.pattern}, got {self.namespace!r}",
        )
        require(self.socket_timeout_s > 0, "socket_timeout_s", "must be > 0")
        require(self.connect_timeout_s > 0, "connect_timeout_s", "must be > 0")
        require(self.retries >= 0, "retries", "must be >= 0")
        require(
            not self.tls_ca_file or self.tls or self.url.startswith("rediss://"),
            "tls_ca_file",
            "set, but TLS is off (set tls=true or use a rediss:// URL)",
        )


@dataclass
class RateLimitConfig:
    """Sample-to-insert ratio limiter (Reverb's ``SampleToInsertRatio``), counted in TIMESTEPS.

    ``samples_per_insert`` = sampled sequence-timesteps (real, unpadded window steps) per
    inserted timestep. Sampling waits until the store holds ``min_size_steps`` timesteps;
    afterwards ``inserted * spi - sampled`` is kept within ``spi * min_size_steps +/-
    error_buffer``: samples wait when they would go below, inserts when they would go above.
    """

    # Sampled sequence-timesteps per collected timestep; 0 = no ratio control (only min size).
    samples_per_insert: float = 0.0
    # Timesteps the store must hold before sampling starts.
    min_size_steps: int = 1
    # Tolerance around the target in sampled timesteps; < 0 = the smallest value that can
    # never block inserts and samples at once (see ReplayConfig.effective_error_buffer; it
    # depends on the learner's batch shape, SampleShape).
    error_buffer: float = -1.0

    def validate(self) -> None:
        require(
            math.isfinite(self.samples_per_insert) and self.samples_per_insert >= 0,
            "samples_per_insert",
            "must be a finite number >= 0 (0 disables ratio control)",
        )
        require(self.min_size_steps >= 1, "min_size_steps", "must be >= 1")
        require(math.isfinite(self.error_buffer), "error_buffer", "must be finite")

    @property
    def enabled(self) -> bool:
        return self.samples_per_insert > 0


@dataclass
class PrefillConfig:
    """A second replay partition, filled once at start-up from replay dumps
    (``replay_service.dump``) and sampled alongside the fresh data
    (``replay_service.prefill``). FIFO eviction and the rate limiter never touch it."""

    # Replay dumps to load: dump directories (python -m deploy.tools.replay_dump) or run
    # directories whose run wrote one (run.dump_replay_on_exit).
    paths: list[str] = field(default_factory=list)
    # Fraction of every batch drawn from the prefill partition: 0 = off (nothing loaded),
    # 1 = prefill only (then the fresh partition's rate limiter is off: nothing samples it).
    mix: float = 0.0

    def validate(self) -> None:
        require(
            isinstance(self.mix, (int, float)) and math.isfinite(self.mix) and 0 <= self.mix <= 1,
            "mix",
            f"must be a number in [0, 1], got {self.mix!r}",
        )
        require(
            all(isinstance(p, str) and p for p in self.paths), "paths", "must be non-empty paths"
        )
        require(
            self.mix == 0 or bool(self.paths),
            "paths",
            f"empty, but mix={self.mix}: name the replay dumps to prefill from",
        )

    @property
    def enabled(self) -> bool:
        return self.mix > 0


@dataclass(frozen=True)
class SampleShape:
    """What the learner samples: batches of ``batch_size`` windows of at most ``max_seq_len``
    timesteps (``learner.batch_size``, ``learner.max_seq_len``: the run's builder hands it to
    the replay's samplers and writers; the replay config does not repeat them).

    ``batch_size`` is also a sampler's chunk: a bigger ``sample()`` reserves its windows in
    chunks of at most ``batch_size``, so one rate-limiter reservation takes at most
    :attr:`max_sample_steps` timesteps (what the limiter's deadlock-free ``error_buffer``
    depends on)."""

    batch_size: int
    max_seq_len: int

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SampleShape.{name} must be an int >= 1, got {v!r}")

    @property
    def max_sample_steps(self) -> int:
        """Largest number of timesteps one rate-limiter sample reservation takes."""
        return self.batch_size * self.max_seq_len


@dataclass
class ReplayConfig:
    """Capacity, ingest caps, sampling and rate limiting of one replay namespace. What the
    learner samples (batch size, window length) is not here: it is a :class:`SampleShape`
    given to the samplers (and writers) next to this config."""

    # How to reach the Redis-protocol server.
    redis: RedisConfig = field(default_factory=RedisConfig)
    # Capacity in timesteps: the oldest trajectories are evicted (FIFO) beyond it.
    max_steps: int = 1_000_000
    # Capacity in stored (encoded) bytes: the oldest trajectories are evicted beyond it.
    max_bytes: int = 4 * 2**30
    # Ingest cap: longer trajectories are rejected (reason "oversize").
    max_traj_steps: int = 10_000
    # Ingest cap on one encoded record's bytes (reason "oversize").
    max_record_bytes: int = 256 * 2**20
    # True: every batch is (B, L) with L the sample shape's max_seq_len (learner.max_seq_len);
    # False: padded to the longest window in the batch.
    pad_to_max_seq_len: bool = True
    # How a trajectory is drawn: "uniform" or "length" (probability proportional to length).
    sampling: str = "uniform"
    # Multi-task runs (trajectories tagged with meta.info["task"]): "uniform_over_data" draws
    # as above over all trajectories (tasks in proportion to their stored data);
    # "uniform_over_tasks" first draws a task uniformly among those stored, then a trajectory
    # of it as above (untagged trajectories count as one more task).
    task_sampling: str = "uniform_over_data"
    # Compression of arrays when inserting a Trajectory: "" or "zstd".
    compression: str = ""
    # Arrays smaller than this many bytes are stored raw even with compression on.
    compress_min_bytes: int = 4096
    # Decoded trajectories each Sampler keeps for reuse (LRU, MiB of array bytes; 0 = off).
    sample_cache_mb: int = 512
    # Relabeling strategy applied to each whole trajectory at sample time (relabel registry).
    relabel: str = "none"
    # Keyword arguments of the relabeling strategy.
    relabel_kwargs: dict[str, Any] = field(default_factory=dict)
    # Sample-to-insert ratio limiter.
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    # Offline data: a partition prefilled from replay dumps and its share of every batch.
    prefill: PrefillConfig = field(default_factory=PrefillConfig)
    # Seconds insert() waits for the rate limiter before RateLimitTimeout (0 = do not wait).
    insert_timeout_s: float = 60.0
    # Seconds sample() waits for data / the rate limiter before RateLimitTimeout (0 = no wait).
    sample_timeout_s: float = 60.0
    # Longest sleep between two retries while blocked (seconds; waits back off up to it).
    poll_interval_s: float = 0.02
    # Sharded replay (redis.shards): rollouts a writer keeps in memory per unreachable shard
    # and retries later, so that inserts to the other shards go on; beyond it the oldest are
    # dropped (logged) while another shard is up, else the insert raises ReplayUnavailable.
    shard_backlog: int = 64

    @property
    def num_shards(self) -> int:
        return 1 + len(self.redis.shards)

    def shard(self, k: int) -> ReplayConfig:
        """The config of shard ``k`` of a sharded replay: its server, and 1/K of the
        capacities (``max_steps``, ``max_bytes``), of ``rate_limit.min_size_steps`` (rounded
        up) and of the sampler's decode cache (``sample_cache_mb``: a sampler holds one per
        shard), with the global config's limiter tolerance (``error_buffer``) and
        ``samples_per_insert`` unchanged (``replay_service.shards`` explains why; an automatic
        ``error_buffer`` depends on neither capacity, so a shard's is the global one)."""
        n = self.num_shards
        rl = self.rate_limit
        return replace(
            self,
            redis=self.redis.shard(k),
            max_steps=self.max_steps // n,
            max_bytes=self.max_bytes // n,
            sample_cache_mb=self.sample_cache_mb // n,
            rate_limit=replace(rl, min_size_steps=-(-rl.min_size_steps // n)),
        )

    def check_fits(self, spec: EnvSpec, rollout_steps: int) -> None:
        """With the env's measured record size (a ``rollout_steps``-timestep rollout of
        ``spec``'s arrays, encoded as the writers encode it): one whole rollout fits
        ``max_record_bytes`` (else every rollout is rejected as oversize), and ``max_bytes``
        holds ``rate_limit.min_size_steps`` timesteps besides one rollout (else FIFO eviction
        keeps the store below it and sampling never starts). Uncompressed records only: a
        zstd record's size depends on its data."""
        if self.compression:
            return
        size = record_bytes(spec, rollout_steps)
        require(
            size <= self.max_record_bytes,
            "max_record_bytes",
            f"{self.max_record_bytes} bytes < {size}, one whole rollout of this env "
            f"({rollout_steps} timesteps, measured): every rollout would be rejected",
        )
        per_step = size / rollout_steps
        holds = max(0, int((self.max_bytes - size) / per_step))
        need = self.rate_limit.min_size_steps
        require(
            need <= holds,
            "max_bytes",
            f"{self.max_bytes} bytes hold about {holds} timesteps of this env ({per_step:.0f} "
            f"bytes each, measured), fewer than rate_limit.min_size_steps={need}: "
            "sampling could never start",
        )

    def _check_relabeler(self) -> None:
        """Build the relabeler once so a bad name or keyword fails at start-up."""
        from replay_service.relabel import get_relabeler

        try:
            get_relabeler(self.relabel, **dict(self.relabel_kwargs))
        except KeyError as e:
            raise ConfigError("relabel", str(e).strip('"')) from None
        except ConfigError as e:
            if e.field.startswith("relabel"):
                raise
            raise ConfigError(f"relabel_kwargs.{e.field}", str(e).split(": ", 1)[1]) from None
        except TypeError as e:
            raise ConfigError("relabel_kwargs", f"not accepted by {self.relabel!r}: {e}") from None

    def _validate_shard(self, shape: SampleShape | None) -> None:
        """What one shard gets (1/K of the capacities) must be a valid config itself."""
        n = self.num_shards
        try:
            self.shard(0).validate(shape)
        except ConfigError as e:
            msg = str(e).split(": ", 1)[1]
            raise ConfigError(
                e.field,
                f"{msg} (per shard: each of the {n} replay.redis shards gets 1/{n} of "
                "max_steps, max_bytes and rate_limit.min_size_steps)",
            ) from None

    def effective_error_buffer(self, shape: SampleShape | None = None) -> float:
        """The limiter tolerance in use: the configured one, or the smallest safe one for
        the learner's ``shape`` (needed then: ``ValueError`` without it).

        Both sides block at once iff ``2 * error_buffer < spi * n + k`` for an insert of n
        timesteps and a sample reservation of k; the largest n is ``max_traj_steps`` and the
        largest reservation ``shape.max_sample_steps`` (batch_size * max_seq_len: bigger
        batches are reserved in chunks).
        """
        if self.rate_limit.error_buffer >= 0:
            return float(self.rate_limit.error_buffer)
        if shape is None:
            raise ValueError(
                "an automatic rate_limit.error_buffer (< 0) depends on the learner's batch "
                "shape: pass its SampleShape"
            )
        return min_safe_error_buffer(
            self.rate_limit.samples_per_insert, self.max_traj_steps, shape.max_sample_steps
        )

    def validate(self, shape: SampleShape | None = None) -> None:
        """Every field; with the learner's ``shape`` also the limiter tolerance against its
        largest sample reservation (an explicit ``rate_limit.error_buffer`` that could block
        inserts and samples at once is refused)."""
        prefixed("redis", self.redis.validate)
        prefixed("rate_limit", self.rate_limit.validate)
        require(self.shard_backlog >= 0, "shard_backlog", "must be >= 0")
        if self.num_shards > 1:
            self._validate_shard(shape)
        prefixed("prefill", self.prefill.validate)
        require(
            not self.prefill.enabled or len(self.redis.namespace) <= 64 - len(".prefill"),
            "redis.namespace",
            "must leave room for the prefill partition's '<namespace>.prefill' (64 characters)",
        )
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.max_bytes >= 1, "max_bytes", "must be >= 1")
        require(self.max_traj_steps >= 1, "max_traj_steps", "must be >= 1")
        require(
            self.max_traj_steps <= self.max_steps,
            "max_traj_steps",
            f"{self.max_traj_steps} > max_steps={self.max_steps}: one trajectory must fit",
        )
        require(self.max_record_bytes >= 1, "max_record_bytes", "must be >= 1")
        require(
            self.max_record_bytes <= self.max_bytes,
            "max_record_bytes",
            f"{self.max_record_bytes} > max_bytes={self.max_bytes}: one record must fit",
        )
        require(self.sampling in SAMPLING_MODES, "sampling", f"must be one of {SAMPLING_MODES}")
        require(
            self.task_sampling in TASK_SAMPLING_MODES,
            "task_sampling",
            f"must be one of {TASK_SAMPLING_MODES}, got {self.task_sampling!r}",
        )
        require(self.compression in COMPRESSIONS, "compression", f"must be one of {COMPRESSIONS}")
        require(self.compress_min_bytes >= 0, "compress_min_bytes", "must be >= 0")
        require(self.sample_cache_mb >= 0, "sample_cache_mb", "must be >= 0")
        require(isinstance(self.relabel, str) and bool(self.relabel), "relabel", "must be a name")
        require(isinstance(self.relabel_kwargs, Mapping), "relabel_kwargs", "must be a mapping")
        self._check_relabeler()
        require(self.insert_timeout_s >= 0, "insert_timeout_s", "must be >= 0")
        require(self.sample_timeout_s >= 0, "sample_timeout_s", "must be >= 0")
        require(self.poll_interval_s > 0, "poll_interval_s", "must be > 0")
        rl = self.rate_limit
        require(
            rl.min_size_steps <= self.max_steps,
            "rate_limit.min_size_steps",
            f"{rl.min_size_steps} > max_steps={self.max_steps}: sampling could never start",
        )
        require(
            rl.min_size_steps <= self.max_steps - self.max_traj_steps or not rl.enabled,
            "rate_limit.min_size_steps",
            f"{rl.min_size_steps} > max_steps - max_traj_steps = "
            f"{self.max_steps - self.max_traj_steps}: FIFO eviction could take the store below "
            "the minimum size, pausing sampling and letting inserts bypass the ratio",
        )
        if rl.enabled and rl.error_buffer >= 0 and shape is not None:
            need = min_safe_error_buffer(
                rl.samples_per_insert, self.max_traj_steps, shape.max_sample_steps
            )
            if rl.error_buffer < need:
                raise ConfigError(
                    "rate_limit.error_buffer",
                    f"{rl.error_buffer} is too small: inserts of up to max_traj_steps="
                    f"{self.max_traj_steps} and sample reservations of up to "
                    f"learner.batch_size * learner.max_seq_len={shape.max_sample_steps} "
                    f"timesteps could both block forever at once; use >= {need} (or < 0 "
                    "for that value)",
                )


def min_safe_error_buffer(
    samples_per_insert: float, max_insert_steps: int, max_sample_steps: int
) -> float:
    """Smallest tolerance with which inserts and samples can never block at the same time."""
    return (samples_per_insert * max_insert_steps + max_sample_steps) / 2.0


def record_bytes(spec: EnvSpec, steps: int) -> int:
    """Bytes of one uncompressed record of a ``steps``-timestep rollout of ``spec``'s arrays
    (what a writer inserts; contents do not change an uncompressed record's size). Past 64
    timesteps, extrapolated from records of 32 and 64 (so a long pixel rollout is never
    built at start-up)."""
    if steps > 64:
        a, b = _record_bytes(spec, 32), _record_bytes(spec, 64)
        return b + (b - a) * (steps - 64) // 32
    return _record_bytes(spec, steps)


def _record_bytes(spec: EnvSpec, steps: int) -> int:
    import numpy as np

    from common.codec import encode
    from common.records import Trajectory, TrajectoryMeta

    def zeros(a) -> np.ndarray:
        return np.zeros((steps, *a.shape), a.dtype)

    traj = Trajectory(
        obs={k: zeros(a) for k, a in spec.obs.items()},
        prev_action=np.zeros((steps, spec.action_dim), np.float32),
        prev_reward=np.zeros(steps, np.float32),
        time_idx=np.arange(steps, dtype=np.int32),
        terminated=np.zeros(steps, bool),
        truncated=np.zeros(steps, bool),
        extras={k: zeros(a) for k, a in spec.extras.items()},
        meta=TrajectoryMeta(env_id="x" * 64, actor_id=2**31, policy_version=2**31),
    )
    return len(encode(traj, check=False))
