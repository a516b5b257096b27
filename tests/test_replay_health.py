"""The driver's watches (deploy/run/replay_health.py) against real embedded Valkey servers, no Ray:
a killed server is restarted on its port and password (with a data dir, with what it stored),
one that cannot come back is fatal, and a run that stops moving is seen as stalled."""

from __future__ import annotations

import os
import signal

import pytest

from deploy.run.replay_health import ServerWatch, StallWatch
from replay_service import EmbeddedServer, connect


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _kill(server: EmbeddedServer) -> None:
    os.kill(server._server._process.pid, signal.SIGKILL)
    server._server._process.wait(timeout=5)


@pytest.mark.parametrize("persistent", [True, False])
def test_a_killed_server_is_restarted_on_its_port_with_its_data(tmp_path, persistent):
    data_dir = tmp_path / "valkey" if persistent else None
    said: list[str] = []
    restarted: list[int] = []
    with EmbeddedServer(data_dir=data_dir) as server:
        client = connect(server.redis_config())
        client.set("kept", b"1")
        if persistent:
            client.execute_command("BGREWRITEAOF")  # on disk now (AOF everysec otherwise)
            client.save()
        port = server.port
        clock = Clock()
        watch = ServerWatch([server], say=said.append, on_restart=restarted.append, clock=clock)
        watch.check()
        assert watch.restarts == 0 and not server.exited
        _kill(server)
        assert server.exited
        clock.t += 0.5
        watch.check()  # within every_s of the last check: not yet
        assert watch.restarts == 0
        clock.t += 1.0
        watch.check()
        assert watch.restarts == 1 and restarted == [0] and watch.fatal is None
        assert server.running and server.port == port
        client = connect(server.redis_config())
        assert (client.get("kept") == b"1") is persistent
        assert "replay server 0 died: restarted" in said[-1]
        assert ("restored" in said[-1]) is persistent
        assert watch.summary()["outages"][0]["server"] == 0


def test_a_server_that_cannot_come_back_is_fatal(tmp_path):
    class Broken:
        exited = True
        persistent = False

        def restart(self, graceful: bool = True) -> None:
            raise OSError("port taken")

    said: list[str] = []
    watch = ServerWatch([Broken()], say=said.append, clock=Clock())
    watch.check()
    assert watch.fatal == "replay server 0 died and could not be restarted: port taken"
    assert said == [f"error: {watch.fatal}"] and watch.restarts == 0


def test_stall_watch():
    clock = Clock()
    stall = StallWatch(60.0, clock=clock)
    assert not stall.stalled(0, 0)
    clock.t = 59.0
    assert not stall.stalled(0, 0)
    clock.t = 61.0
    assert stall.stalled(0, 0)
    assert not stall.stalled(10, 0)  # env steps moved: the clock starts again
    clock.t = 100.0
    assert not stall.stalled(10, 0)
    clock.t = 125.0
    assert stall.stalled(10, 0)
    assert not StallWatch(0.0, clock=clock).stalled(0, 0)
    never = StallWatch(0.0, clock=clock)
    never.stalled(0, 0)
    clock.t = 10_000.0
    assert not never.stalled(0, 0)  # 0 = never
