"""Opening a redis-py client from a :class:`RedisConfig`."""

from __future__ import annotations

import logging
import warnings
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from common.config_utils import ConfigError
from replay_service.config import RedisConfig

log = logging.getLogger(__name__)


def _without_password(url: str) -> str:
    """``url`` less any password in it (``user:PASSWORD@``, ``?password=``): redis-py lets
    the URL's win over the ``password`` argument, and the config's must win."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{host}" if user else host
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() != "password"]
    if netloc == parts.netloc and len(kept) == len(pairs):
        return url
    query = urlencode(kept) if len(kept) != len(pairs) else parts.query
    out = urlunsplit(parts._replace(netloc=netloc, query=query))
    if (
        not netloc
        and url.startswith(f"{parts.scheme}://")
        and not out.startswith(f"{parts.scheme}://")
    ):
        out = f"{parts.scheme}://" + out[len(parts.scheme) + 1 :]  # keep unix:///path
    return out


def connect(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg.url`` (bytes replies, bounded reconnect retries, optional TLS),
    authenticating with ``cfg.password`` if set (else with a password the URL holds).

    redis-py reconnects lazily: after a server restart the first failing call raises (the
    replay service turns that into ``ReplayUnavailable``) and the next one reconnects.
    """
    cfg.validate()
    if not cfg.url:
        raise ConfigError(
            "url", "empty: start an EmbeddedServer (replay_service.server) and use its url"
        )
    url = cfg.url
    if cfg.tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    kwargs: dict = {
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": cfg.connect_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), cfg.retries),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        "decode_responses": False,
    }
    if cfg.password:  # the config's password wins over one in the URL
        kwargs["password"] = cfg.password
        url = _without_password(url)
    if url.startswith("rediss://") and cfg.tls_ca_file:
        kwargs["ssl_ca_certs"] = cfg.tls_ca_file
    client = redis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    cls = getattr(pool, "connection_class", None)
    if isinstance(cls, type) and issubclass(cls, AbstractConnection):
        pool.connection_class = _coalescing(cls)  # before any connection is made
    return client


#: A command or pipeline of at most this many bytes is sent in one piece (one send, one
#: read on the server) instead of redis-py's chunks (every value over 6,000 bytes on its
#: own: an insert's SET + commit took three sends, the server woken for each). Larger ones
#: keep the chunks, which avoids copying big values.
COALESCE_MAX_BYTES = 128 * 1024

_COALESCING: dict[type, type] = {}


def _joined(chunks: list) -> list:
    if len(chunks) > 1:
        total = 0
        for c in chunks:
            total += c.nbytes if type(c) is memoryview else len(c)
        if total <= COALESCE_MAX_BYTES:
            return [b"".join(chunks)]
    return chunks


def _coalescing(cls: type) -> type:
    """``cls`` (a redis-py connection class) packing commands into one chunk where small."""
    sub = _COALESCING.get(cls)
    if sub is None:

        class Coalescing(cls):  # type: ignore[misc, valid-type]
            def pack_command(self, *args):
                return _joined(super().pack_command(*args))

            def pack_commands(self, commands):
                return _joined(super().pack_commands(commands))

        Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{cls.__name__}"
        sub = _COALESCING[cls] = Coalescing
    return sub


def _eviction_policy(client: redis.Redis) -> str | None:
    """The server's ``maxmemory-policy``: CONFIG GET, else INFO memory (managed servers often
    refuse CONFIG but answer INFO); None if neither tells."""
    try:
        reply = client.config_get("maxmemory-policy")
        value = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy"))
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    except redis.exceptions.ResponseError:  # refused / renamed (managed servers), NOPERM
        pass
    try:
        value = client.info("memory").get("maxmemory_policy")
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    except redis.exceptions.ResponseError:
        pass
    return None


def check_server(client: redis.Redis, field: str = "replay.redis.url") -> str | None:
    """Check at start-up that the server never evicts keys by itself; returns its policy.

    The replay service does FIFO eviction itself and needs ``maxmemory-policy noeviction``:
    any other policy silently deletes blobs (index entries without data), pending uploads and
    remembered insert tokens (duplicates). Raises ``ConfigError`` (``field`` names the config
    entry to blame) naming the policy found. If the server does not say (CONFIG GET and INFO
    both refused), warns and returns None. Connection errors propagate as redis-py's.
    """
    policy = _eviction_policy(client)
    if policy is None:
        msg = (
            "could not read the replay server's maxmemory-policy (CONFIG GET and INFO refused); "
            "make sure it is 'noeviction', or stored trajectories may vanish"
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None
    if policy != "noeviction":
        raise ConfigError(
            field,
            f"the replay server runs maxmemory-policy {policy!r}: it must be 'noeviction' "
            "(the replay service evicts FIFO itself; a server-side policy deletes stored "
            "trajectories, uploads and insert tokens). Set it with "
            "`CONFIG SET maxmemory-policy noeviction` or the server's configuration",
        )
    return policy
