"""The Grafana dashboard, defined once in Python and written to
``deploy/grafana/dashboards/amago.json`` (``python -m deploy.ops.dashboard`` regenerates it; a
test checks the committed file matches).

Every query uses only metric names from :data:`common.metrics.METRICS` (a test checks that a
short real run exports each one). Queries carry two Grafana variables: ``$run`` (the ``run``
label the driver puts on its scrape targets) and ``$__rate_interval``; :func:`concrete_expr`
substitutes them the way Grafana does, for Prometheus itself (tests, ``make metrics-png``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE_UID = "amago-prometheus"  # uid of the provisioned Prometheus datasource
DASHBOARD_UID = "amago-ray"
DASHBOARD_JSON = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "amago.json"
PANEL_W, PANEL_H, COLUMNS = 8, 8, 3  # grid: 24 columns wide, three panels per row
R = "[$__rate_interval]"
RUN = 'run=~"$run"'


@dataclass(frozen=True)
class Query:
    expr: str  # PromQL (with the $run / $__rate_interval Grafana variables)
    legend: str = ""  # Grafana legend format, e.g. "{{actor}}"


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"  # Grafana unit id
    description: str = ""
    key: bool = False  # rendered by `make metrics-png`


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


ROWS: tuple[Row, ...] = (
    Row(
        "Throughput",
        (
            Panel(
                "Env steps / s",
                (
                    _q(
                        f'sum(rate(amago_actor_env_steps_total{{{RUN},actor!="eval"}}{R}))',
                        "all actors",
                    ),
                    _q(
                        f'sum by (actor) (rate(amago_actor_env_steps_total{{{RUN},actor!="eval"}}{R}))',
                        "actor {{actor}}",
                    ),
                ),
                "short",
                "Environment steps taken by the rollout actors (evaluation excluded).",
                True,
            ),
            Panel(
                "Learner updates / s",
                (_q(f"sum(rate(amago_learner_updates_total{{{RUN}}}{R}))", "updates/s"),),
                "short",
                "Gradient updates of the learner.",
                True,
            ),
            Panel(
                "Sequence-timesteps / s",
                (
                    _q(f"sum(rate(amago_learner_seq_timesteps_total{{{RUN}}}{R}))", "trained on"),
                    _q(f"sum(rate(amago_replay_sampled_timesteps{{{RUN}}}{R}))", "sampled"),
                ),
                "short",
                "Real (unpadded) window timesteps trained on / sampled per second.",
                True,
            ),
            Panel(
                "Learner waiting",
                (
                    _q(
                        f"sum(rate(amago_learner_batch_wait_seconds_total{{{RUN}}}{R}))",
                        "train() waiting for a batch",
                    ),
                    _q(
                        f"sum(rate(amago_replay_sample_wait_seconds_total{{{RUN}}}{R}))",
                        "sampler waiting (rate limiter / empty store)",
                    ),
                ),
                "percentunit",
                "Fraction of wall time spent waiting; near 1 = data-starved.",
            ),
            Panel(
                "Episodes / s",
                (
                    _q(
                        f'sum(rate(amago_actor_episodes_total{{{RUN},actor!="eval"}}{R}))',
                        "episodes/s",
                    ),
                ),
                "short",
                "Rollouts (episodes or meta-RL trials) finished per second.",
            ),
            Panel(
                "Exploration",
                (_q(f"amago_actor_epsilon{{{RUN}}}", "actor {{actor}}"),),
                "short",
                "Current epsilon / noise scale per actor.",
            ),
        ),
    ),
    Row(
        "Learning",
        (
            Panel(
                "Return",
                (
                    _q(
                        f'avg(amago_actor_episode_return{{{RUN},actor!="eval"}})',
                        "rollouts (exploring)",
                    ),
                    _q(f"avg(amago_eval_return{{{RUN}}})", "greedy evaluation"),
                ),
                "short",
                "Mean return of recent rollouts, and of the last greedy evaluation (multi-task "
                "runs: the mean over tasks).",
                True,
            ),
            Panel(
                "Return per task",
                (
                    _q(
                        f'avg by (task) (amago_actor_episode_return{{{RUN},actor!="eval"}})',
                        "{{task}} (exploring)",
                    ),
                    _q(f"max by (task) (amago_eval_return{{{RUN}}})", "{{task}} (greedy)"),
                ),
                "short",
                "Multi-task runs (env.tasks): mean return of each task's recent rollouts and "
                "of its last greedy evaluation (the `task` label; one unlabelled series in a "
                "single-task run).",
            ),
            Panel(
                "Losses",
                (_q(f"amago_learner_loss{{{RUN}}}", "{{term}}"),),
                "short",
                "Loss terms of the last update.",
                True,
            ),
            Panel(
                "Grad norm and Q",
                (
                    _q(f"amago_learner_grad_norm{{{RUN}}}", "grad norm (before clipping)"),
                    _q(f"amago_learner_q_mean{{{RUN}}}", "mean Q (main discount)"),
                ),
                "short",
                "Gradient norm before clipping and the mean unnormalised Q.",
            ),
        ),
    ),
    Row(
        "Replay",
        (
            Panel(
                "Replay size",
                (
                    _q(f"max(amago_replay_timesteps{{{RUN}}})", "timesteps"),
                    _q(f"max(amago_replay_trajectories{{{RUN}}})", "trajectories"),
                ),
                "short",
                "What the store holds now (FIFO beyond capacity).",
                True,
            ),
            Panel(
                "Replay bytes",
                (_q(f"max(amago_replay_bytes{{{RUN}}})", "stored (encoded)"),),
                "bytes",
                "Encoded bytes stored.",
            ),
            Panel(
                "Insert / sample rate",
                (
                    _q(
                        f"sum(rate(amago_replay_inserted_timesteps{{{RUN}}}{R}))",
                        "inserted timesteps/s",
                    ),
                    _q(
                        f"sum(rate(amago_replay_inserted_trajectories{{{RUN}}}{R}))",
                        "inserted trajectories/s",
                    ),
                    _q(
                        f"sum(rate(amago_replay_sampled_timesteps{{{RUN}}}{R}))",
                        "sampled timesteps/s",
                    ),
                ),
                "short",
                "Ingest and sampling rates (all writers and samplers of the namespace).",
                True,
            ),
            Panel(
                "Samples per insert",
                (
                    _q(
                        f"max(amago_replay_sampled_timesteps{{{RUN}}}) / "
                        f"clamp_min(max(amago_replay_inserted_timesteps{{{RUN}}}), 1)",
                        "observed",
                    ),
                ),
                "short",
                "Sampled sequence-timesteps per inserted timestep (the rate limiter's target).",
            ),
            Panel(
                "Rejected records",
                (_q(f"sum by (reason) (amago_replay_rejected{{{RUN}}})", "{{reason}}"),),
                "short",
                "Records refused at ingest, by reason (all writers, since the store began).",
            ),
            Panel(
                "Replay shard outages",
                (_q(f"max(amago_replay_shard_outages{{{RUN}}})", "found unreachable"),),
                "short",
                "Sharded replay: times the learner's sampler found a shard unreachable "
                "(its rows then come from the other shards; 0 with one server).",
            ),
        ),
    ),
    Row(
        "Actors and policy",
        (
            Panel(
                "Policy lag",
                (
                    _q(f"amago_learner_data_age_updates{{{RUN}}}", "data age of sampled rows"),
                    _q(
                        f"max(amago_learner_policy_version{{{RUN}}}) - on() group_right() "
                        f'amago_actor_policy_version{{{RUN},actor!="eval"}}',
                        "actor {{actor}} behind",
                    ),
                ),
                "short",
                "Learner version minus the version that produced the sampled data (data age) / "
                "that acts now.",
                True,
            ),
            Panel(
                "Actor lag at insert",
                (
                    _q(
                        "histogram_quantile(0.5, sum by (le) (rate("
                        f'amago_actor_policy_lag_versions_bucket{{{RUN},actor!="eval"}}{R})))',
                        "p50",
                    ),
                    _q(
                        "histogram_quantile(0.95, sum by (le) (rate("
                        f'amago_actor_policy_lag_versions_bucket{{{RUN},actor!="eval"}}{R})))',
                        "p95",
                    ),
                    _q(
                        f'sum(rate(amago_actor_policy_lag_versions_sum{{{RUN},actor!="eval"}}{R})) / '
                        f'sum(rate(amago_actor_policy_lag_versions_count{{{RUN},actor!="eval"}}{R}))',
                        "mean",
                    ),
                ),
                "short",
                "Per inserted rollout: versions (learner updates) between the newest published "
                "policy the actor had seen and the one the rollout started with.",
            ),
            Panel(
                "Actor health",
                (
                    _q(f"max(amago_driver_actors_alive{{{RUN}}})", "actors alive"),
                    _q(f"max(amago_driver_actors_desired{{{RUN}}})", "actors desired"),
                    _q(
                        f"sum(increase(amago_driver_actor_restarts_total{{{RUN}}}[5m]))",
                        "actor restarts (5 min)",
                    ),
                    _q(
                        f"sum(increase(amago_driver_learner_restarts_total{{{RUN}}}[5m]))",
                        "learner restarts (5 min)",
                    ),
                    _q(
                        f"sum(increase(amago_actor_env_faults_total{{{RUN}}}[5m]))",
                        "env faults (5 min)",
                    ),
                ),
                "short",
                "Rollout actors up and asked for (the elastic fleet), Ray restarts of failed "
                "actors and learner, env exceptions.",
            ),
            Panel(
                "Inference latency",
                (
                    _q(
                        "histogram_quantile(0.5, sum by (le) (rate("
                        f'amago_actor_inference_latency_seconds_bucket{{{RUN},actor!="eval"}}{R})))',
                        "p50",
                    ),
                    _q(
                        "histogram_quantile(0.95, sum by (le) (rate("
                        f'amago_actor_inference_latency_seconds_bucket{{{RUN},actor!="eval"}}{R})))',
                        "p95",
                    ),
                    _q(
                        f'sum(rate(amago_actor_inference_latency_seconds_sum{{{RUN},actor!="eval"}}{R})) / '
                        f'sum(rate(amago_actor_inference_latency_seconds_count{{{RUN},actor!="eval"}}{R}))',
                        "mean",
                    ),
                ),
                "s",
                "Batched policy.act latency per env step (KV-cached: flat in context length).",
                True,
            ),
            Panel(
                "Learner GPU memory",
                (_q(f"max(amago_learner_gpu_memory_bytes{{{RUN}}})", "peak allocated"),),
                "bytes",
                "Peak GPU memory allocated by the learner (0 on CPU).",
            ),
            Panel(
                "Driver view",
                (
                    _q(f"amago_driver_env_steps_per_second{{{RUN}}}", "env steps/s"),
                    _q(f"amago_driver_updates_per_second{{{RUN}}}", "updates/s"),
                ),
                "short",
                "Throughput as the driver's console line reports it.",
            ),
        ),
    ),
)


def panels() -> list[Panel]:
    return [p for row in ROWS for p in row.panels]


def concrete_expr(expr: str, run: str = ".*", rate_interval: str = "1m") -> str:
    """``expr`` with the Grafana variables substituted (as Grafana would send it)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$run", run)


_NAME = re.compile(r"\bamago_[a-z0-9_]+")


def metric_names(expr: str) -> set[str]:
    """The amago series names a query reads (every name we export starts with ``amago_``)."""
    return set(_NAME.findall(expr))


def _targets(p: Panel, ds: dict) -> list[dict]:
    """The Grafana query targets of one panel, lettered A, B, ..."""
    return [
        {
            "refId": chr(ord("A") + k),
            "datasource": ds,
            "expr": q.expr,
            "legendFormat": q.legend or "__auto",
            "range": True,
        }
        for k, q in enumerate(p.queries)
    ]


def _row_json(row: Row, panel_id: int, y: int) -> dict:
    """The Grafana JSON of one (expanded) row header at height ``y``."""
    return {
        "id": panel_id,
        "type": "row",
        "title": row.title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": [],
    }


def _panel_json(p: Panel, panel_id: int, i: int, y: int, ds: dict) -> dict:
    """The Grafana JSON of the ``i``-th timeseries panel of a row whose panels start at ``y``."""
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": p.title,
        "description": p.description,
        "datasource": ds,
        "gridPos": {
            "h": PANEL_H,
            "w": PANEL_W,
            "x": (i % COLUMNS) * PANEL_W,
            "y": y + (i // COLUMNS) * PANEL_H,
        },
        "targets": _targets(p, ds),
        "fieldConfig": {
            "defaults": {"unit": p.unit, "custom": {"lineWidth": 1, "fillOpacity": 0}},
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def _layout(ds: dict) -> list[dict]:
    """Every row header and panel as Grafana JSON, laid out top to bottom."""
    out: list[dict] = []
    next_id, y = 1, 0
    for row in ROWS:
        out.append(_row_json(row, next_id, y))
        next_id, y = next_id + 1, y + 1
        for i, p in enumerate(row.panels):
            out.append(_panel_json(p, next_id, i, y, ds))
            next_id += 1
        y += -(-len(row.panels) // COLUMNS) * PANEL_H
    return out


def _run_variable(ds: dict) -> dict:
    """The ``$run`` template variable (multi-select over the runs Prometheus has seen)."""
    return {
        "name": "run",
        "label": "run",
        "type": "query",
        "datasource": ds,
        "query": {"query": "label_values(amago_learner_updates_total, run)", "refId": "run"},
        "definition": "label_values(amago_learner_updates_total, run)",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "refresh": 2,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def build() -> dict:
    """The dashboard as Grafana JSON."""
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    return {
        "uid": DASHBOARD_UID,
        "title": "amago-ray training",
        "tags": ["amago", "ray", "rl"],
        "description": "Rollout actors, replay service and AMAGO learner (metrics: "
        "common/metrics.py; generated by deploy/ops/dashboard.py).",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "",
        "templating": {"list": [_run_variable(ds)]},
        "annotations": {"list": []},
        "links": [],
        "panels": _layout(ds),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m deploy.ops.dashboard", description="Write the Grafana dashboard JSON."
    )
    ap.add_argument("--out", type=Path, default=DASHBOARD_JSON, help="default: %(default)s")
    out = ap.parse_args(argv).out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out} ({len(panels())} panels)")


if __name__ == "__main__":
    main()
