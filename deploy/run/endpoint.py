"""The run's replay endpoint: the external server a config names (checked), or embedded
Valkey servers started for the run and stopped with it (``deploy.embedded_shards`` of them, one
password), and the server's memory for the summary."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

from deploy.config import TrainConfig

log = logging.getLogger("amago")


@contextlib.contextmanager
def replay_endpoint(cfg: TrainConfig) -> Iterator[TrainConfig]:
    """Yield ``cfg`` with a reachable ``replay.redis.url``, starting an embedded server
    (stopped on exit) when the config names none; ``deploy.embedded_shards`` of them (all
    with one password) for a sharded replay, the others named in ``replay.redis.shards``.

    The embedded server always requires a password: the config's, or a random one made for
    this run. The yielded config carries it to the run's clients (actors and learner get
    the config); the run's ``config.yaml`` is written before, so it never holds it."""
    with replay_servers(cfg) as (cfg, _servers):
        yield cfg


@contextlib.contextmanager
def replay_servers(cfg: TrainConfig) -> Iterator[tuple[TrainConfig, list]]:
    """:func:`replay_endpoint`, also yielding the embedded servers it started ([] for an
    external server) for the driver to watch (``deploy.run.replay_health``)."""
    if cfg.replay.redis.url:
        _check_external_server(cfg)
        yield cfg, []
        return
    import secrets

    from replay_service.server import EmbeddedServer

    d = cfg.deploy
    password = cfg.replay.redis.password or secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                EmbeddedServer(
                    password=password,
                    maxmemory_bytes=d.embedded_maxmemory_mb * 2**20,
                    data_dir=_shard_data_dir(d.embedded_data_dir, k, d.embedded_shards),
                )
            )
            for k in range(d.embedded_shards)
        ]
        redis_cfg = dataclasses.replace(
            cfg.replay.redis,
            url=servers[0].url,
            shards=[s.url for s in servers[1:]],
            password=password,
        )
        yield (
            dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis_cfg)),
            servers,
        )


def _shard_data_dir(data_dir: str, k: int, shards: int) -> str | None:
    """Where embedded shard ``k`` persists: ``data_dir`` itself with one shard (as before),
    else ``<data_dir>/shard-<k>``; None = no persistence."""
    if not data_dir:
        return None
    return data_dir if shards == 1 else str(Path(data_dir) / f"shard-{k}")


def _check_external_server(cfg: TrainConfig) -> None:
    """An external replay server must run ``maxmemory-policy noeviction`` (``ConfigError``
    naming ``replay.redis.url`` otherwise). One that cannot be reached yet is left to the
    workers, which wait out outages."""
    import redis

    from common.replay import ReplayUnavailable
    from replay_service import connect
    from replay_service.client import check_server

    r = cfg.replay.redis
    for k in range(cfg.replay.num_shards):
        field = "replay.redis.url" if k == 0 else f"replay.redis.shards[{k - 1}]"
        try:
            check_server(connect(r.shard(k)), field)
        except (redis.exceptions.RedisError, ReplayUnavailable) as e:  # not a policy problem
            log.warning("replay server %s not checked at start-up (%s); workers will wait", k, e)


def server_memory_mb(cfg: TrainConfig) -> dict[str, float]:
    """Resident and peak memory of the Redis-protocol server (from INFO)."""
    from replay_service import connect

    try:
        info = connect(cfg.replay.redis).info("memory")
    except Exception as e:  # a remote server may forbid INFO; memory is informative only
        log.warning("replay server memory unavailable: %s", e)
        return {}
    return {
        "rss_mb": info.get("used_memory_rss", 0) / 2**20,
        "peak_mb": info.get("used_memory_peak", 0) / 2**20,
    }
