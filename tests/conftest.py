"""Shared fixtures: Redis-protocol servers for tests (one per test module).

- ``embedded_server``: a real Valkey server (replay_service.server.EmbeddedServer).
- ``fakeredis_tcp``: a fakeredis server reachable over TCP (other processes can share it);
  ``fakeredis.FakeRedis(server=fakeredis_tcp.fake_server)`` talks to it in-process.
- ``redis_backend``: parametrised over both; ``.client()`` gives a redis-py client and
  ``.url`` an address other processes can use.
- ``client``: a redis-py client of ``redis_backend`` (closed afterwards).
- ``make_trajectory``: a factory of small valid trajectories whose contents identify them.
- ``learning_seed``: the seed of a learning test's run (``AMAGO_TEST_SEED``, default 0), and
  ``seed_overrides(seed)`` the Hydra overrides that seed a run's learner and actors.
- ``figure``: records a learning test's asserted figure, then asserts it against its bar;
  ``benchmarks/test_repeats.py`` runs learning tests over many seeds and reads these records
  (``AMAGO_TEST_FIGURES``: a JSON-lines file they are appended to).
"""

from __future__ import annotations

import json
import operator
import os
import threading

# The suite checks CPU behaviour: bit-exact resumes, acting equal to training to 1e-5, the
# GPU-memory gauge at 0. On a GPU machine learner.device=auto would put learners on CUDA
# (bf16 autocast, non-deterministic atomics in backward) and those checks would fail for
# reasons that are not bugs. So every process the tests start (Ray workers inherit it) sees
# no GPU; benchmarks/gpu_check.sh checks the CUDA path. AMAGO_TEST_GPU=1 keeps the GPUs.
if os.environ.get("AMAGO_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import numpy as np
import pytest
import redis

from common.records import Trajectory, TrajectoryMeta
from replay_service.client import connect
from replay_service.config import RedisConfig
from replay_service.server import EmbeddedServer


def current_seed() -> int:
    """The seed learning tests run with: ``AMAGO_TEST_SEED`` (default 0, what CI runs)."""
    return int(os.environ.get("AMAGO_TEST_SEED", "0"))


def seed_overrides(seed: int) -> tuple[str, ...]:
    """Hydra overrides seeding a run's learner (init, sampling) and actors (envs, exploration)."""
    return (f"learner.seed={seed}", f"actors.seed={seed}")


@pytest.fixture
def learning_seed() -> int:
    return current_seed()


_OPS = {">=": operator.ge, ">": operator.gt, "<": operator.lt, "<=": operator.le}


@pytest.fixture
def figure(request: pytest.FixtureRequest):
    """``figure(name, value, op, bar, **context)``: append the figure to ``AMAGO_TEST_FIGURES``
    (when set; one JSON line), then ``assert value <op> bar``. Recorded before the assertion,
    so a failing repeat's figure is counted too."""

    def check(name: str, value: float, op: str, bar: float, **context: Any) -> None:
        ok = value is not None and bool(_OPS[op](value, bar))
        out = os.environ.get("AMAGO_TEST_FIGURES")
        if out:
            row = {"test": request.node.nodeid, "seed": current_seed(), "figure": name}
            row.update(value=value, op=op, bar=bar, ok=ok, **context)
            with open(out, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
        assert ok, f"{name} = {value} (bar {op} {bar}) {context}"

    return check


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


@pytest.fixture(scope="module")
def fakeredis_tcp() -> Iterator[Any]:
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class RedisBackend:
    """One Redis-protocol server: its name, a URL for other processes, and clients."""

    name: str
    url: str
    fake_server: Any = None  # fakeredis.FakeServer for in-process clients, else None

    def client(self) -> redis.Redis:
        if self.fake_server is not None:
            return fakeredis.FakeRedis(server=self.fake_server)
        return connect(RedisConfig(url=self.url, retries=1))


@pytest.fixture(scope="module", params=["fakeredis", "valkey"])
def redis_backend(request: pytest.FixtureRequest) -> RedisBackend:
    if request.param == "fakeredis":
        tcp = request.getfixturevalue("fakeredis_tcp")
        host, port = tcp.server_address[:2]
        return RedisBackend("fakeredis", f"redis://{host}:{port}", tcp.fake_server)
    server = request.getfixturevalue("embedded_server")
    # The embedded server always requires a password (a random one here); tests pass this
    # URL around as the one address, so it carries the password (tests only: a run's URL
    # never holds one, RedisConfig.password does).
    host_port = server.url.split("://", 1)[1]
    return RedisBackend("valkey", f"redis://:{server.password}@{host_port}")


def _make_trajectory(
    n: int, tag: int = 0, obs_dim: int = 3, action_dim: int = 2, version: int | None = None
) -> Trajectory:
    """A valid ``n``-step trajectory: ``obs[t, :] == tag * 1000 + t``, ``time_idx[t] == t``,
    ``prev_reward[t] == t``, one-hot ``prev_action`` (zeros at t = 0), terminal last step;
    ``meta.actor_id == tag`` and ``meta.policy_version == version`` (default ``tag``)."""
    t = np.arange(n)
    prev_action = np.zeros((n, action_dim), np.float32)
    prev_action[t[1:], t[1:] % action_dim] = 1.0
    terminated = np.zeros(n, bool)
    terminated[-1] = True
    return Trajectory(
        obs={"observation": np.repeat((tag * 1000 + t)[:, None], obs_dim, 1).astype(np.float32)},
        prev_action=prev_action,
        prev_reward=t.astype(np.float32),
        time_idx=t.astype(np.int32),
        terminated=terminated,
        truncated=np.zeros(n, bool),
        meta=TrajectoryMeta(
            env_id="test", actor_id=tag, policy_version=tag if version is None else version
        ),
    )


@pytest.fixture
def make_trajectory():
    """The factory ``make_trajectory(n, tag=0, obs_dim=3, action_dim=2, version=None)``."""
    return _make_trajectory


@pytest.fixture
def client(redis_backend):
    c = redis_backend.client()
    yield c
    c.close()
