"""The Grafana dashboard: well-formed Grafana JSON wired to the provisioned datasource, every
query accepted by a real Prometheus (the platform's package, installed when missing: a failed
install fails these tests; a platform with no way to install it skips them, saying why), and every query answered with data while Prometheus scrapes a
short real training run."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from common.codec import RecordError
from common.net import free_port
from deploy.ops import dashboard
from deploy.ops.dashboard import DATASOURCE_UID, concrete_expr, metric_names, panels
from deploy.ops.prometheus import (
    PrometheusConfig,
    PrometheusServer,
    PrometheusUnavailable,
    PromQLError,
    ensure_prometheus,
    render_config,
)
from deploy.run.scrape import read_dump, series_names
from deploy.tools.metrics_png import SMOKE_OVERRIDES, recorded_run
from replay_service import ReplayConfig, ReplayStore, connect
from replay_service.server import EmbeddedServer

GRAFANA = Path(dashboard.__file__).resolve().parents[1] / "grafana"
# Prometheus hands newly discovered targets to its scrapers at most every 5 s, so a run that
# trains for only a few seconds (SMOKE_OVERRIDES stop after 200 updates) can end before its
# endpoints were scraped twice, and rate() has nothing. This run trains for a fixed 25 s
# instead, however fast the machine is.
RECORDED_OVERRIDES = [
    *(o for o in SMOKE_OVERRIDES if not o.startswith(("run.max_updates=", "run.max_seconds="))),
    "run.max_updates=0",
    "run.max_seconds=25",
]


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(dashboard.DASHBOARD_JSON.read_text())


def test_committed_json_is_the_generated_one():
    assert dashboard.DASHBOARD_JSON.read_text() == dashboard.render(), (
        "deploy/grafana/dashboards/amago.json is stale: run `python -m deploy.ops.dashboard`"
    )


def test_dashboard_is_well_formed_grafana(board):
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and all(isinstance(g[k], int) for k in "hwxy")
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        here = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & here, f"panel {p['title']!r} overlaps another"
        cells |= here
        if p["type"] == "row":
            continue
        assert p["type"] == "timeseries" and p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == DATASOURCE_UID
        assert p["fieldConfig"]["defaults"]["unit"]
    (run_var,) = board["templating"]["list"]
    assert run_var["name"] == "run" and run_var["datasource"]["uid"] == DATASOURCE_UID


def test_provisioning_matches_the_dashboard():
    (ds,) = yaml.safe_load((GRAFANA / "provisioning/datasources/amago.yaml").read_text())[
        "datasources"
    ]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "prometheus"
    assert ds["url"].startswith("http://127.0.0.1:")
    (prov,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/amago.yaml").read_text())[
        "providers"
    ]
    assert prov["type"] == "file" and prov["options"]["path"]
    assert dashboard.DASHBOARD_JSON.parent == GRAFANA / "dashboards"


def test_dashboard_covers_every_monitored_quantity():
    used = set().union(*(metric_names(q.expr) for p in panels() for q in p.queries))
    required = {
        "amago_actor_env_steps_total",
        "amago_learner_updates_total",
        "amago_learner_seq_timesteps_total",
        "amago_actor_episode_return",
        "amago_eval_return",
        "amago_learner_loss",
        "amago_replay_timesteps",
        "amago_replay_trajectories",
        "amago_replay_bytes",
        "amago_replay_inserted_timesteps",
        "amago_replay_sampled_timesteps",
        "amago_replay_rejected",
        "amago_learner_data_age_updates",
        "amago_actor_policy_lag_versions_bucket",
        "amago_driver_actors_alive",
        "amago_driver_actor_restarts_total",
        "amago_actor_inference_latency_seconds_bucket",
        "amago_learner_gpu_memory_bytes",
    }
    assert required <= used, required - used


def test_dashboard_has_a_per_task_return_panel():
    (panel,) = [p for p in panels() if p.title == "Return per task"]
    assert all("by (task)" in q.expr and "{{task}}" in q.legend for q in panel.queries)
    assert {n for q in panel.queries for n in metric_names(q.expr)} == {
        "amago_actor_episode_return",
        "amago_eval_return",
    }


def test_actor_lag_panel_reads_the_histogram():
    (panel,) = [p for p in panels() if p.title == "Actor lag at insert"]
    names = {n for q in panel.queries for n in metric_names(q.expr)}
    assert names == {
        "amago_actor_policy_lag_versions_bucket",
        "amago_actor_policy_lag_versions_sum",
        "amago_actor_policy_lag_versions_count",
    }
    assert [q.legend for q in panel.queries] == ["p50", "p95", "mean"]


def need_prometheus() -> str:
    """The ``prometheus`` binary (installed if missing); skips where the platform cannot
    install it, fails where an install was tried and failed."""
    try:
        return ensure_prometheus()
    except PrometheusUnavailable as e:
        pytest.skip(f"Prometheus is not available on this platform: {e}")
    except RuntimeError as e:
        pytest.fail(f"Prometheus is needed and could not be installed: {e}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    need_prometheus()
    cfg = PrometheusConfig(listen=f"127.0.0.1:{free_port()}")
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), {}, cfg) as server:
        yield server


def test_every_query_is_accepted_by_prometheus(prometheus):
    for p in panels():
        for q in p.queries:
            prometheus.client.query(concrete_expr(q.expr))  # raises PromQLError if refused
    with pytest.raises(PromQLError, match="parse error"):  # the check can fail
        prometheus.client.query("rate(amago_learner_updates_total[1m)")


def test_rendered_scrape_config_passes_promtool(tmp_path):
    need_prometheus()
    cfg_file = tmp_path / "prometheus.yml"
    cfg_file.write_text(
        render_config(
            PrometheusConfig(),
            {"ray": [str(tmp_path / "ray.json")], "amago": [str(tmp_path / "targets" / "*.json")]},
        )
    )
    res = subprocess.run(
        ["promtool", "check", "config", str(cfg_file)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_every_query_returns_data_for_a_real_run(tmp_path):
    """Prometheus (1 s scrapes) records a short real run; every panel query then has data
    within the run's time range, and names only series that the run exported."""
    need_prometheus()
    namespace, password = "dashboard-test", "dashboard-test-password"
    with EmbeddedServer(password=password) as server:
        redis_cfg = server.redis_config(namespace=namespace)
        rcfg = ReplayConfig(redis=redis_cfg)
        with pytest.raises(RecordError):  # one rejected record for the "Rejected" panel
            ReplayStore(connect(redis_cfg), rcfg).insert(b"\x00 not a record")
        overrides = [
            *RECORDED_OVERRIDES,
            f"replay.redis.url={server.url}",
            f"replay.redis.password={password}",
            f"replay.redis.namespace={namespace}",
        ]
        with recorded_run(tmp_path, overrides) as run:
            exported = set().union(
                *(series_names(t) for t in read_dump(run.run_dir / "metrics_final.prom").values())
            )
            empty = []
            for p in panels():
                for q in p.queries:
                    assert metric_names(q.expr) <= exported, (p.title, q.expr)
                    expr = concrete_expr(
                        q.expr, run=run.run_name, rate_interval=run.rate_interval()
                    )
                    series = run.prometheus.query_range(expr, run.start, run.end + 2, 1.0)
                    values = [float(v) for s in series for _, v in s["values"]]
                    if not any(math.isfinite(v) for v in values):
                        empty.append(f"{p.title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
