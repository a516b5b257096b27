"""``python -m deploy.tools.replay_dump``: a server URL, a run directory (external server, persisted
embedded server, or none: refused in one line); and the start-up check of
``replay.prefill.paths`` against the env (``deploy.config.prepare``)."""

from __future__ import annotations

import uuid

import fakeredis
import pytest
import yaml

from common.config_utils import ConfigError
from deploy.config import compose, prepare
from deploy.tools.replay_dump import dump_target, main
from replay_service import RedisConfig, ReplayConfig, ReplayStore, connect
from replay_service.dump import read_dump, read_manifest, write_dump
from replay_service.server import EmbeddedServer

TMAZE_ACTIONS = 4


@pytest.fixture
def tcp_url(fakeredis_tcp):
    host, port = fakeredis_tcp.server_address[:2]
    return f"redis://{host}:{port}", fakeredis.FakeRedis(server=fakeredis_tcp.fake_server)


def fill(client, ns: str, make_trajectory, n: int = 5) -> None:
    store = ReplayStore(client, ReplayConfig(redis=RedisConfig(namespace=ns)))
    for i in range(n):
        store.insert(make_trajectory(6, tag=i, action_dim=TMAZE_ACTIONS))


def run_dir(tmp_path, replay: dict, deploy: dict | None = None):
    d = tmp_path / "run"
    d.mkdir()
    doc = {"env": {"id": "amago/TMaze-v0"}, "replay": replay, "deploy": deploy or {}}
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    return d


def test_dump_from_a_server_url(tmp_path, tcp_url, make_trajectory, capsys):
    url, client = tcp_url
    ns = f"n{uuid.uuid4().hex[:8]}"
    fill(client, ns, make_trajectory)
    assert main([url, str(tmp_path / "out"), "--namespace", ns]) == 0
    assert "replay dump: 5 trajectories" in capsys.readouterr().out
    trajs, summary = read_dump(tmp_path / "out")
    assert [t.meta.actor_id for t in trajs] == list(range(5)) and summary.rejected == {}
    assert read_manifest(tmp_path / "out").spec is None  # a bare server: layout only


def test_dump_from_a_run_directory_with_an_external_server(tmp_path, tcp_url, make_trajectory):
    url, client = tcp_url
    ns = f"n{uuid.uuid4().hex[:8]}"
    fill(client, ns, make_trajectory, 3)
    client.set(f"{{{ns}}}:b:1", b"\x00rotten")  # a corrupt stored record: skipped, counted
    d = run_dir(tmp_path, {"redis": {"url": url, "namespace": ns}})
    summary = dump_target(str(d), tmp_path / "out")
    assert summary.records == 2 and sum(summary.rejected.values()) == 1
    m = read_manifest(tmp_path / "out")
    assert m.spec is not None and m.spec.action_dim == TMAZE_ACTIONS  # from the run's env


def test_dump_from_a_persisted_embedded_server(tmp_path, make_trajectory):
    data_dir = tmp_path / "valkey"
    with EmbeddedServer(data_dir=data_dir) as server:
        fill(connect(server.redis_config()), "amago", make_trajectory, 4)
    d = run_dir(tmp_path, {"redis": {"url": ""}}, {"embedded_data_dir": str(data_dir)})
    summary = dump_target(str(d), tmp_path / "out")
    assert summary.records == 4


def test_unreachable_replay_is_refused_in_one_line(tmp_path, capsys):
    d = run_dir(tmp_path, {"redis": {"url": ""}})
    assert main([str(d), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.dump_replay_on_exit=true" in err
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "neither a redis:// URL nor a run directory" in capsys.readouterr().err


def test_a_sharded_runs_directory_is_refused_in_one_line(tmp_path, capsys):
    d = run_dir(tmp_path, {"redis": {"url": "redis://a:1", "shards": ["redis://b:1"]}})
    assert main([str(d), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sharded" in err and "dump each shard by URL" in err


def test_start_up_refuses_dumps_the_env_could_not_have_produced(tmp_path, make_trajectory):
    write_dump([make_trajectory(6, action_dim=2)], tmp_path / "d")  # T-Maze has 4 actions
    cfg = compose(
        ["experiment=tmaze", f"replay.prefill.paths=[{tmp_path / 'd'}]", "replay.prefill.mix=0.5"]
    )
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.field == "replay.prefill.paths[0]" and "\n" not in str(e.value)
    assert "action_dim 2" in str(e.value) and "action_dim 4" in str(e.value)
    write_dump([make_trajectory(6, action_dim=4)], tmp_path / "ok")
    ok = compose(
        ["experiment=tmaze", f"replay.prefill.paths=[{tmp_path / 'ok'}]", "replay.prefill.mix=1"]
    )
    cfg, _, derived = prepare(ok)
    assert cfg.replay.rate_limit.samples_per_insert == 0.0
    assert any(d.field == "replay.rate_limit.samples_per_insert" for d in derived)
