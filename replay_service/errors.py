"""Exceptions of the replay service, and the mapping from redis-py's errors onto them.

Callers retry on :class:`ReplayBackpressure` (server full, or the rate limiter said wait) and
on :class:`ReplayUnavailable` (server unreachable or restarting). A malformed record raises
``common.codec.RecordError`` instead (retrying cannot help).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis


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


@contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Re-raise redis-py's connection and out-of-memory errors as replay errors."""
    try:
        yield
    except redis.exceptions.OutOfMemoryError as e:
        raise ReplayBackpressure(f"{what}: Redis is out of memory (maxmemory): {e}") from e
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        raise ReplayUnavailable(f"{what}: Redis unavailable: {e}") from e
    except redis.exceptions.ReadOnlyError as e:
        raise ReplayUnavailable(f"{what}: Redis is a read-only replica: {e}") from e
    except redis.exceptions.ResponseError as e:
        msg = str(e)
        if msg.startswith("OOM") or "OOM command not allowed" in msg:
            raise ReplayBackpressure(f"{what}: Redis is out of memory (maxmemory): {e}") from e
        if msg.startswith(("LOADING", "MASTERDOWN", "TRYAGAIN")):
            raise ReplayUnavailable(f"{what}: Redis not ready: {e}") from e
        raise
