"""The mapping from redis-py's errors onto the replay errors (defined, with their retry
rules, in :mod:`common.replay` so actors and the learner catch them without importing the
service; re-exported here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from common.replay import (  # noqa: F401  (re-exported)
    RateLimitTimeout,
    ReplayBackpressure,
    ReplayError,
    ReplayUnavailable,
)


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
