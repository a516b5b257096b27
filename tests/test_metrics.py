"""Metrics export: a short real training run exports every name the Grafana dashboard reads
(captured by the driver's final scrape of every process, ``metrics_final.prom``), plus unit
tests of the scrape helpers and the environment-driven config of cluster runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import _make_trajectory
from prometheus_client import generate_latest

from common.codec import RecordError
from common.config_utils import ConfigError
from common.metrics import METRICS, Metrics, resolve_metrics_host
from deploy.config import DeployConfig, TrainConfig, compose, resolve_environment
from deploy.ops.dashboard import metric_names, panels
from deploy.run.builder import sample_shape
from deploy.run.scrape import FINAL_DUMP, read_dump, series_names, write_dump
from deploy.tools.metrics_png import SMOKE_OVERRIDES
from replay_service import ReplayStore, connect
from replay_service.server import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent
NUM_ACTORS = 2  # as in SMOKE_OVERRIDES
# Counters that only exist once their event happened (a healthy short run has none).
EVENT_ONLY = {"amago_actor_insert_retries"}
PASSWORD = "metrics-test-password"


def exported_name(name: str) -> set[str]:
    """Series names a METRICS entry appears under in the text exposition."""
    kind = METRICS[name].kind
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny T-Maze run against its own Valkey (with a password, one bad record refused at
    ingest and one stored record that rots)."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("metrics_run")
    from deploy.train import run_training

    with EmbeddedServer(password=PASSWORD) as server:
        cfg = compose(
            [
                *SMOKE_OVERRIDES,
                f"replay.redis.url={server.url}",
                f"replay.redis.password={PASSWORD}",
                "replay.redis.namespace=metrics-test",
                f"deploy.metrics_sd_dir={tmp / 'targets'}",
            ]
        )
        store = ReplayStore(connect(cfg.replay.redis), cfg.replay, sample_shape(cfg.learner))
        with pytest.raises(RecordError):  # a bad writer: counted, exported as rejected
            store.insert(b"\x00 this is not a record")
        # a stored record whose blob rots: the learner skips and drops it (exported as corrupt)
        rotten = store.insert(_make_trajectory(20, obs_dim=3, action_dim=4))
        connect(cfg.replay.redis).set(store.keys.blob(rotten), b"\x93rotten")
        summary = run_training(cfg, tmp / "run")
    return summary, read_dump(Path(summary["metrics_dump"])), tmp


def _all_series(dump: dict[str, str]) -> set[str]:
    return set().union(*(series_names(text) for text in dump.values()))


@pytest.mark.slow
def test_final_dump_scrapes_every_process(real_run):
    summary, dump, tmp = real_run
    assert Path(summary["metrics_dump"]) == tmp / "run" / FINAL_DUMP
    # driver, learner, rollout actors, evaluation actor
    assert len(dump) == 1 + 1 + NUM_ACTORS + 1
    for addr, text in dump.items():
        assert addr.startswith("127.0.0.1:"), addr
        assert series_names(text), f"{addr} exported nothing"
    assert list((tmp / "targets").iterdir()) == []  # the run's file_sd entry is gone


@pytest.mark.slow
def test_run_exports_every_defined_metric_and_nothing_else(real_run):
    _, dump, _ = real_run
    exported = _all_series(dump)
    known = set().union(*(exported_name(n) for n in METRICS))
    assert exported <= known, f"names not defined in common.metrics: {exported - known}"
    missing = {n for n in METRICS if n not in EVENT_ONLY and not exported_name(n) <= exported}
    assert not missing, f"defined but not exported by a real run: {sorted(missing)}"


@pytest.mark.slow
def test_run_exports_every_series_the_dashboard_reads(real_run):
    _, dump, _ = real_run
    exported = _all_series(dump)
    for panel in panels():
        for q in panel.queries:
            unknown = metric_names(q.expr) - exported
            assert not unknown, f"panel {panel.title!r} reads {unknown}, not exported"


@pytest.mark.slow
def test_exported_values_match_the_run(real_run):
    summary, dump, _ = real_run
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        s
        for text in dump.values()
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]

    def total(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    steps = sum(
        s.value
        for s in samples
        if s.name == "amago_actor_env_steps_total" and s.labels["actor"] != "eval"
    )
    assert steps >= summary["env_steps"] > 0  # actors may finish one more chunk
    assert total("amago_learner_updates_total") >= summary["updates"] > 0
    assert total("amago_replay_inserted_trajectories") > 0
    assert total("amago_replay_rejected") == 1  # the one bad record
    assert {s.labels["term"] for s in samples if s.name == "amago_learner_loss"}
    assert total("amago_driver_actors_alive") == NUM_ACTORS
    assert total("amago_learner_gpu_memory_bytes") == 0  # CPU (conftest hides any GPU)


@pytest.mark.slow
def test_final_evaluation_scores_the_final_checkpoint(real_run):
    """The run stops mid-call (max_updates is not a multiple of publish_every); the learner
    still publishes its last version, so the final evaluation and the checkpoint that export
    and evaluate read are the same weights."""
    from learner.checkpoint import checkpoint_name

    summary, _, _ = real_run
    assert summary["final_version"] >= summary["updates"] > 0
    assert summary["final_eval_version"] == summary["final_version"]
    assert Path(summary["final_checkpoint"]).name == checkpoint_name(summary["final_version"])


def test_every_process_reports_a_peak_at_least_its_current_memory(real_run):
    summary, _, _ = real_run
    mem = summary["memory_mb"]
    procs = [mem["learner"], *mem["actors"]]
    assert procs and all(p["peak_rss_mb"] >= p["rss_mb"] > 0 for p in procs), mem


def test_process_memory_peak_is_never_below_current():
    from common.metrics import process_memory_mb

    blob = bytearray(64 * 2**20)  # 64 MiB touched now: current and peak both see it
    m = process_memory_mb()
    assert m["peak_rss_mb"] >= m["rss_mb"] >= 64
    del blob


def test_dump_roundtrip_and_series_names(tmp_path):
    m = Metrics()
    m.inc("amago_learner_updates", 3)
    m.observe("amago_actor_inference_latency_seconds", 0.003, actor="0")
    m.set("amago_learner_loss", 1.5, term="critic_loss")
    text = generate_latest(m.registry).decode()
    path = write_dump(tmp_path / FINAL_DUMP, {"127.0.0.1:1": text, "127.0.0.1:2": ""})
    back = read_dump(path)
    assert back == {"127.0.0.1:1": text, "127.0.0.1:2": ""}
    assert series_names(text) == {
        "amago_learner_updates_total",
        "amago_learner_loss",
        "amago_actor_inference_latency_seconds_bucket",
        "amago_actor_inference_latency_seconds_sum",
        "amago_actor_inference_latency_seconds_count",
    }


def test_dashboard_metric_name_extraction():
    expr = (
        'sum(rate(amago_actor_env_steps_total{run=~"$run"}[$__rate_interval])) / '
        "clamp_min(max(amago_replay_inserted_timesteps), 1)"
    )
    assert metric_names(expr) == {"amago_actor_env_steps_total", "amago_replay_inserted_timesteps"}


def test_metrics_host_resolution_keeps_explicit_hosts():
    assert resolve_metrics_host("127.0.0.1") == "127.0.0.1"


def test_password_comes_from_the_named_environment_variable():
    cfg = TrainConfig()
    cfg.deploy.redis_password_env = "AMAGO_TEST_PW"
    assert resolve_environment(cfg, {"AMAGO_TEST_PW": "s3cret"}).replay.redis.password == "s3cret"
    assert resolve_environment(cfg, {}).replay.redis.password == ""
    cfg.replay.redis.password = "explicit"  # an explicit value wins
    assert resolve_environment(cfg, {"AMAGO_TEST_PW": "s3cret"}).replay.redis.password == "explicit"
    cfg.deploy.redis_password_env = ""
    cfg.replay.redis.password = ""
    assert resolve_environment(cfg, {"AMAGO_TEST_PW": "s3cret"}).replay.redis.password == ""


def test_deploy_config_validation():
    with pytest.raises(ConfigError) as e:
        DeployConfig(metrics_host="node").validate()  # local runs stay on loopback
    assert e.value.field == "metrics_host"
    DeployConfig(ray_address="auto", metrics_host="node").validate()
    with pytest.raises(ConfigError) as e:
        DeployConfig(metrics_sd_file="/a.json", metrics_sd_dir="/b").validate()
    assert e.value.field == "metrics_sd_dir"
    cfg = compose([])
    cfg.deploy.require_external_redis = True
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == "replay.redis.url"
    cfg.replay.redis.url = "redis://127.0.0.1:6389"
    cfg.validate()
