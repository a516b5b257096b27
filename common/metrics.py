"""Prometheus metrics: every name the system exports, defined once.

Each process (rollout actor, learner, driver) owns one :class:`Metrics` object with its own
registry and serves it over HTTP (``Metrics.serve``) for Prometheus to scrape. Names are
namespaced ``amago_<component>_...`` and stable: the Grafana dashboard and its tests are
built on :data:`METRICS`. Counters are exported with Prometheus' ``_total`` suffix.

We use prometheus-client endpoints rather than Ray's metrics agent so that names are exactly
those below (Ray prefixes and rewrites custom metric names) and so local runs without the Ray
dashboard agent export the same series.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

disable_created_metrics()  # no `_created` series: they double every counter for nothing


@dataclass(frozen=True)
class MetricDef:
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_LAG_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)

#: name (without the ``_total`` suffix counters get on export) -> definition
METRICS: dict[str, MetricDef] = {
    # --- rollout actors -------------------------------------------------------------------
    "amago_actor_env_steps": MetricDef("counter", "Environment steps taken", ("actor",)),
    "amago_actor_episodes": MetricDef(
        "counter", "Rollouts (episodes or meta-RL trials) finished", ("actor",)
    ),
    "amago_actor_episode_return": MetricDef(
        "gauge",
        "Mean return of the rollouts finished in the last chunk, by task (multi-task runs; "
        '"" otherwise)',
        ("actor", "task"),
    ),
    "amago_actor_inference_latency_seconds": MetricDef(
        "histogram", "Batched policy.act latency per env step", ("actor",), _LAT_BUCKETS
    ),
    "amago_actor_env_faults": MetricDef(
        "counter", "Env exceptions survived (env reset, rollout dropped)", ("actor",)
    ),
    "amago_actor_insert_retries": MetricDef(
        "counter", "Replay inserts retried after backpressure or a lost connection", ("actor",)
    ),
    "amago_actor_policy_version": MetricDef(
        "gauge", "Policy version the actor is acting with", ("actor",)
    ),
    "amago_actor_policy_lag_versions": MetricDef(
        "histogram",
        "Per inserted rollout: newest published learner version the actor had seen at insert "
        "time minus the version the rollout started with (versions count learner updates)",
        ("actor",),
        _LAG_BUCKETS,
    ),
    "amago_actor_epsilon": MetricDef(
        "gauge", "Current exploration epsilon / noise scale", ("actor",)
    ),
    # --- replay service (exported by the learner process, which samples) ----------------------
    "amago_replay_trajectories": MetricDef("gauge", "Trajectories stored"),
    "amago_replay_timesteps": MetricDef("gauge", "Timesteps stored"),
    "amago_replay_bytes": MetricDef("gauge", "Encoded bytes stored"),
    "amago_replay_inserted_trajectories": MetricDef(
        "gauge", "Trajectories inserted since the store was created (all writers)"
    ),
    "amago_replay_inserted_timesteps": MetricDef(
        "gauge", "Timesteps inserted since the store was created (all writers)"
    ),
    "amago_replay_sampled_timesteps": MetricDef(
        "gauge", "Sequence-timesteps sampled since the store was created (all samplers)"
    ),
    "amago_replay_rejected": MetricDef(
        "gauge", "Records rejected at ingest, by reason (all writers)", ("reason",)
    ),
    "amago_replay_corrupt": MetricDef(
        "gauge",
        "Stored records skipped at sample time (corrupt blob, schema, relabel, collate, "
        "missing), by reason (all samplers)",
        ("reason",),
    ),
    "amago_replay_shard_outages": MetricDef(
        "gauge",
        "Sharded replay: times the learner's sampler found a shard unreachable (0 with one server)",
    ),
    "amago_replay_sample_wait_seconds": MetricDef(
        "counter", "Time the learner's sampler waited on the rate limiter or an empty store"
    ),
    # --- learner --------------------------------------------------------------------------
    "amago_learner_updates": MetricDef("counter", "Gradient updates"),
    "amago_learner_seq_timesteps": MetricDef(
        "counter", "Sequence-timesteps trained on (real, unpadded)"
    ),
    "amago_learner_loss": MetricDef("gauge", "Loss terms of the last update", ("term",)),
    "amago_learner_grad_norm": MetricDef("gauge", "Gradient norm before clipping"),
    "amago_learner_q_mean": MetricDef("gauge", "Mean Q of the main discount (unnormalised)"),
    "amago_learner_data_age_updates": MetricDef(
        "gauge",
        "Data age: mean learner version minus the version that produced each sampled row, "
        "over the last train call (updates)",
    ),
    "amago_learner_policy_version": MetricDef("gauge", "Latest published policy version"),
    "amago_learner_gpu_memory_bytes": MetricDef(
        "gauge", "Peak GPU memory allocated by the learner (0 on CPU)"
    ),
    "amago_learner_batch_wait_seconds": MetricDef(
        "counter", "Time train() waited for a prefetched batch"
    ),
    # --- driver ---------------------------------------------------------------------------
    "amago_driver_actor_restarts": MetricDef(
        "counter", "Rollout/evaluation actor restarts seen by the driver (new process)"
    ),
    "amago_driver_learner_restarts": MetricDef(
        "counter", "Learner restarts seen by the driver (resumed from the newest checkpoint)"
    ),
    "amago_driver_replay_restarts": MetricDef(
        "counter", "Embedded replay servers found dead and restarted by the driver"
    ),
    "amago_driver_actors_alive": MetricDef(
        "gauge", "Rollout actors up and in the fleet (started, not leaving)"
    ),
    "amago_driver_actors_desired": MetricDef(
        "gauge", "Rollout actors the fleet should have (deploy.ops.cluster scale N)"
    ),
    "amago_eval_return": MetricDef(
        "gauge",
        'Mean greedy return on fresh evaluation episodes, by task (multi-task runs; "" otherwise)',
        ("task",),
    ),
    "amago_driver_env_steps_per_second": MetricDef(
        "gauge", "Env steps per second over the last report interval"
    ),
    "amago_driver_updates_per_second": MetricDef(
        "gauge", "Learner updates per second over the last report interval"
    ),
}


#: ``metrics_host`` value meaning "this process's Ray node address" (cluster runs)
NODE_HOST = "node"


def resolve_metrics_host(host: str) -> str:
    """``host`` itself, or the Ray node address of this process for :data:`NODE_HOST`."""
    if host != NODE_HOST:
        return host
    import ray

    return ray.util.get_node_ip_address()


class Metrics:
    """The metrics of one process. Unknown names raise ``KeyError`` (no ad-hoc names)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._m: dict = {}

    def _get(self, name: str):
        m = self._m.get(name)
        if m is None:
            d = METRICS[name]
            kw = {"labelnames": d.labels, "registry": self.registry}
            if d.kind == "counter":
                m = Counter(name, d.help, **kw)
            elif d.kind == "gauge":
                m = Gauge(name, d.help, **kw)
            else:
                m = Histogram(name, d.help, buckets=d.buckets, **kw)
            self._m[name] = m
        return m

    def _child(self, name: str, labels: dict[str, str]):
        m = self._get(name)
        return m.labels(**labels) if labels else m

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._child(name, labels).inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._child(name, labels).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._child(name, labels).observe(value)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = any free port; ``host`` may be
        :data:`NODE_HOST`); returns the port."""
        server, _thread = start_http_server(
            port, addr=resolve_metrics_host(host), registry=self.registry
        )
        return int(server.server_address[1])


def process_memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in MiB (Linux /proc; elsewhere
    the current value falls back to the peak). The kernel's high-water mark (``ru_maxrss``)
    is updated lazily and can trail the current figure, so the peak is never below it."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rss = rss_mb("self")
    return {"rss_mb": peak if rss is None else rss, "peak_rss_mb": max(peak, rss or 0.0)}


def rss_mb(pid: int | str) -> float | None:
    """Resident memory of process ``pid`` ("self": this one) in MiB; None if it is gone (or
    there is no /proc)."""
    import os

    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None
