"""The replay client's transport: small commands and pipelines leave in one piece (one send;
redis-py would send every value over 6,000 bytes on its own), big values keep their chunks."""

from __future__ import annotations

import pytest

from replay_service.client import COALESCE_MAX_BYTES, connect


@pytest.fixture(scope="module")
def vclient(embedded_server):
    client = connect(embedded_server.redis_config(namespace="transport"))
    yield client
    client.close()


def test_small_pipelines_are_packed_into_one_chunk(vclient):
    conn = vclient.connection_pool.get_connection()
    try:
        blob = b"x" * 7000
        cmds = [("SET", "k1", blob), ("SET", "k2", memoryview(blob)), ("GET", "k1")]
        assert len(conn.pack_commands(cmds)) == 1
        assert len(conn.pack_command("SET", "k1", blob)) == 1
        big = b"y" * (COALESCE_MAX_BYTES + 1)
        assert len(conn.pack_command("SET", "k3", big)) > 1  # not copied into one buffer
    finally:
        vclient.connection_pool.release(conn)


@pytest.mark.parametrize("size", [0, 10, 5999, 6001, 70_000, COALESCE_MAX_BYTES + 1, 3 << 20])
def test_values_of_every_size_round_trip(vclient, size):
    value = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    pipe = vclient.pipeline(transaction=False)
    pipe.set("v", value)
    pipe.set("w", memoryview(value))
    pipe.get("v")
    pipe.get("w")
    assert pipe.execute() == [True, True, value, value]
