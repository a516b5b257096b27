"""Opening a redis-py client from a :class:`RedisConfig`."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.config_utils import ConfigError
from replay_service.config import RedisConfig


def connect(cfg: RedisConfig) -> redis.Redis:
    """A client for ``cfg.url`` (bytes replies, bounded reconnect retries, optional TLS).

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
    if cfg.password:
        kwargs["password"] = cfg.password
    if url.startswith("rediss://") and cfg.tls_ca_file:
        kwargs["ssl_ca_certs"] = cfg.tls_ca_file
    return redis.Redis.from_url(url, **kwargs)
