"""Redis-backed replay service: validated idempotent inserts with FIFO capacity, Reverb-style
sample-to-insert rate limiting in timesteps, sample-time relabeling and padded window batches.

Typical use::

    server = EmbeddedServer().start()                 # or an external Redis URL
    cfg = ReplayConfig(redis=server.redis_config(namespace="run1"))
    shape = SampleShape(batch_size=24, max_seq_len=64)  # the learner's batches
    client = connect(cfg.redis)
    store = ReplayStore(client, cfg, shape)           # actors: store.insert(trajectory)
    sampler = Sampler(client, cfg, shape)             # learner: sampler.sample() -> Batch
"""

from replay_service.client import connect
from replay_service.config import RateLimitConfig, RedisConfig, ReplayConfig, SampleShape
from replay_service.errors import (
    RateLimitTimeout,
    ReplayBackpressure,
    ReplayError,
    ReplayUnavailable,
)
from replay_service.rate_limiter import LimiterState, RateLimits
from replay_service.relabel import Relabeler, get_relabeler, register_relabeler, relabeler_names
from replay_service.sampler import Sampler
from replay_service.server import EmbeddedServer
from replay_service.stats import ReplayStats
from replay_service.store import ReplayStore

__all__ = [
    "EmbeddedServer",
    "LimiterState",
    "RateLimitConfig",
    "RateLimitTimeout",
    "RateLimits",
    "RedisConfig",
    "Relabeler",
    "ReplayBackpressure",
    "ReplayConfig",
    "ReplayError",
    "ReplayStats",
    "ReplayStore",
    "ReplayUnavailable",
    "Sampler",
    "SampleShape",
    "connect",
    "get_relabeler",
    "register_relabeler",
    "relabeler_names",
]
