"""The driver's watch over what a local run cannot do without: its embedded replay servers, and
progress itself.

- :class:`ServerWatch`: the embedded Valkey servers of a local run (``deploy.train``'s
  ``replay_endpoint``), checked about once a second from the driver's loop. A server whose
  process died is restarted on the same port, password and data directory (with
  ``deploy.embedded_data_dir`` its AOF brings back what was stored; without, the replay starts
  empty and the samplers wait for new data), counted (``amago_driver_replay_restarts``,
  ``summary.json: replay_server_restarts``) and shown on the console. One that cannot be
  started again ends the run (:attr:`ServerWatch.fatal`). External servers (a cluster's) are
  the operator's: not watched.
- :class:`StallWatch`: no env step and no learner update for ``run.stall_timeout_s`` ends the
  run (``stop_reason: stalled``) instead of letting it wait forever.

    watch = ServerWatch(servers, say=print)
    stall = StallWatch(timeout_s=300)
    while ...:
        watch.check()
        if watch.fatal or stall.stalled(env_steps, updates):
            break
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class ServerWatch:
    """Restarts embedded replay servers whose process died (see the module docstring)."""

    def __init__(
        self,
        servers: Sequence,
        say: Callable[[str], None] = print,
        on_restart: Callable[[int], None] = lambda k: None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = list(servers)
        self.say, self.on_restart = say, on_restart
        self.every_s, self.clock = every_s, clock
        self.restarts = 0
        self.outages: list[dict] = []  # {server, down_at_s, back_after_s} per restart
        self.fatal: str | None = None  # why the run must end (a server that did not come back)
        self._next = 0.0
        self._t0 = clock()

    def check(self) -> None:
        """Restart every server whose process has exited (at most every ``every_s``)."""
        now = self.clock()
        if self.fatal or now < self._next:
            return
        self._next = now + self.every_s
        for k, server in enumerate(self.servers):
            if not server.exited:
                continue
            t0 = self.clock()
            try:
                server.restart(graceful=False)  # clears the dead process's files, same port
            except Exception as e:  # noqa: BLE001 - any failure to come back ends the run
                self.fatal = f"replay server {k} died and could not be restarted: {e}"
                self.say(f"error: {self.fatal}")
                return
            self.restarts += 1
            back = self.clock() - t0
            self.outages.append(
                {"server": k, "down_at_s": round(t0 - self._t0, 1), "back_after_s": round(back, 2)}
            )
            self.on_restart(k)
            kept = (
                "its data dir restored what was stored"
                if server.persistent
                else ("no persistence: the replay starts empty")
            )
            self.say(f"replay server {k} died: restarted in {back:.1f} s ({kept})")

    def summary(self) -> dict:
        return {"restarts": self.restarts, "outages": self.outages, "fatal": self.fatal}


class StallWatch:
    """True once neither env steps nor learner updates moved for ``timeout_s`` (0 = never)."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.clock = timeout_s, clock
        self._seen: tuple[int, int] | None = None
        self._since = clock()

    def stalled(self, env_steps: int, updates: int) -> bool:
        now = self.clock()
        if (env_steps, updates) != self._seen:
            self._seen, self._since = (env_steps, updates), now
            return False
        return bool(self.timeout_s) and now - self._since >= self.timeout_s
