"""Training entrypoint: builds the replay service, the learner and the rollout actors, runs
them to a budget, evaluates greedily along the way and writes a run directory.

    python -m deploy.train                                   # local: Ray + embedded Valkey
    python -m deploy.train experiment=bandit run.max_env_steps=20000
    python -m deploy.train env.id=CartPole-v1                # any env: the generic defaults
    make cluster-up && source .state/cluster/env.sh     # then, see docs/deploy.md:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m deploy.train deploy=cluster run.max_env_steps=20000

The run directory holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``,
``learning_curve.png``, ``summary.json``, ``metrics_final.prom`` (a last scrape of every
process's metrics endpoint, ``deploy.dump_final_metrics``) and what the trackers of
``run.tracking`` write (``deploy/tracking.py``; TensorBoard event files by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.reports import ActorReport, EvalReport, LearnerReport
from common.spec import EnvSpec
from deploy.config import RunConfig, TrainConfig, prepare, resolve_environment
from deploy.fleet import Fleet, FleetSetup, start_control
from deploy.replay_health import ServerWatch, StallWatch
from deploy.signals import StopRequest
from deploy.supervisor import EVAL_RULE, Supervisor, learner_rule
from deploy.tracking import Tracker, TrackerSet, make_trackers

log = logging.getLogger("amago")


@contextlib.contextmanager
def replay_endpoint(cfg: TrainConfig) -> Iterator[TrainConfig]:
    """Yield ``cfg`` with a reachable ``replay.redis.url``, starting an embedded server
    (stopped on exit) when the config names none; ``deploy.embedded_shards`` of them (all
    with one password) for a sharded replay, the others named in ``replay.redis.shards``.

    The embedded server always requires a password: the config's, or a random one made for
    this run. The yielded config carries it to the run's clients (actors and learner get
    the config); the run's ``config.yaml`` is written before, so it never holds it."""
    with replay_servers(cfg) as (cfg, _servers):
        yield cfg


@contextlib.contextmanager
def replay_servers(cfg: TrainConfig) -> Iterator[tuple[TrainConfig, list]]:
    """:func:`replay_endpoint`, also yielding the embedded servers it started ([] for an
    external server) for the driver to watch (``deploy.replay_health``)."""
    if cfg.replay.redis.url:
        _check_external_server(cfg)
        yield cfg, []
        return
    import secrets

    from replay_service.server import EmbeddedServer

    d = cfg.deploy
    password = cfg.replay.redis.password or secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                EmbeddedServer(
                    password=password,
                    maxmemory_bytes=d.embedded_maxmemory_mb * 2**20,
                    data_dir=_shard_data_dir(d.embedded_data_dir, k, d.embedded_shards),
                )
            )
            for k in range(d.embedded_shards)
        ]
        redis_cfg = dataclasses.replace(
            cfg.replay.redis,
            url=servers[0].url,
            shards=[s.url for s in servers[1:]],
            password=password,
        )
        yield (
            dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis_cfg)),
            servers,
        )


def _shard_data_dir(data_dir: str, k: int, shards: int) -> str | None:
    """Where embedded shard ``k`` persists: ``data_dir`` itself with one shard (as before),
    else ``<data_dir>/shard-<k>``; None = no persistence."""
    if not data_dir:
        return None
    return data_dir if shards == 1 else str(Path(data_dir) / f"shard-{k}")


def _check_external_server(cfg: TrainConfig) -> None:
    """An external replay server must run ``maxmemory-policy noeviction`` (``ConfigError``
    naming ``replay.redis.url`` otherwise). One that cannot be reached yet is left to the
    workers, which wait out outages."""
    import redis

    from common.replay import ReplayUnavailable
    from replay_service import connect
    from replay_service.client import check_server

    r = cfg.replay.redis
    for k in range(cfg.replay.num_shards):
        field = "replay.redis.url" if k == 0 else f"replay.redis.shards[{k - 1}]"
        try:
            check_server(connect(r.shard(k)), field)
        except (redis.exceptions.RedisError, ReplayUnavailable) as e:  # not a policy problem
            log.warning("replay server %s not checked at start-up (%s); workers will wait", k, e)


CONSOLE_LOG = "train.log"


def console(run_dir: Path, text: str) -> None:
    """A console line, also appended to ``<run dir>/train.log`` (where Hydra's log goes)."""
    print(text, flush=True)
    with open(Path(run_dir) / CONSOLE_LOG, "a") as f:
        f.write(text + "\n")


class RunLog:
    """metrics.jsonl rows (each also sent to the run's trackers, ``deploy/tracking.py``), the
    console line and the driver's own Prometheus metrics."""

    def __init__(
        self,
        run_dir: Path,
        metrics,
        trackers: Iterable[Tracker] = (),
        t0: float | None = None,
    ):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a", buffering=1)
        self.metrics = metrics
        self.trackers = TrackerSet(trackers)
        self.t0 = time.monotonic() if t0 is None else t0  # the run's clock (time_s) starts
        self._last = (self.t0, 0, 0)
        self.budget: RunConfig | None = None  # for the console's budget / ETA figure

    def say(self, text: str) -> None:
        console(self.run_dir, text)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def row(self, **fields) -> dict:
        fields = {"time_s": round(self.elapsed(), 3), **fields}
        self.file.write(json.dumps(fields) + "\n")
        self.trackers.log_row(fields)
        return fields

    def progress(self, p: RunProgress) -> None:
        now = time.monotonic()
        t_prev, s_prev, u_prev = self._last
        dt = max(now - t_prev, 1e-9)
        sps, ups = (p.env_steps - s_prev) / dt, (p.updates - u_prev) / dt
        self._last = (now, p.env_steps, p.updates)
        self.metrics.set("amago_driver_env_steps_per_second", sps)
        self.metrics.set("amago_driver_updates_per_second", ups)
        ret = float(np.mean(p.recent)) if p.recent else None
        by_task = {t: float(np.mean(v)) if v else None for t, v in p.recent_by_task.items()}
        by_task = {t: by_task.get(t) for t in p.tasks}
        lr = p.last_learner
        stored = lr.replay.timesteps if lr and lr.replay else None
        age = lr.data_age if lr else None  # data age of sampled rows (updates)
        lags = p.take_recent_lags()  # actor lag of the rollouts inserted since the last row
        actor_lag = float(np.mean(lags)) if lags else None
        named = dict(
            env_steps=p.env_steps,
            updates=p.updates,
            return_mean=ret,
            env_steps_per_s=round(sps, 2),
            updates_per_s=round(ups, 3),
            replay_timesteps=stored,
            data_age=age,
            actor_policy_lag=actor_lag,
        )
        named.update(actors_alive=p.actors_alive, actors_desired=p.actors_desired)
        named.update({f"return_mean/{t}": v for t, v in by_task.items()})
        self.row(**{**(lr.losses if lr else {}), **named})  # learner means, then the driver's
        fmt = lambda v: "   -" if v is None else f"{v:6.3f}"  # noqa: E731
        tasks = ""
        if by_task:  # multi-task: recent return per task, then the last evaluation's
            last = p.evals[-1].get("by_task", {}) if p.evals else {}
            tasks = " | " + " ".join(
                f"{t} {fmt(v).strip()}/{fmt(last.get(t)).strip()}" for t, v in by_task.items()
            )
        self.say(
            f"[{self.elapsed():7.1f}s] steps {p.env_steps:>9,d} ({sps:6.0f}/s) | "
            f"updates {p.updates:>7,d} ({ups:5.1f}/s) | return {fmt(ret)} | "
            f"eval {fmt(p.evals[-1]['return'] if p.evals else None)} | "
            f"replay {stored or 0:>9,} steps | data age {age or 0.0:6.1f} | "
            f"actor lag {actor_lag or 0.0:5.1f} | actors {p.actors_alive}/{p.actors_desired}"
            f"{tasks}{self._budget_left(p)}"
        )

    def _budget_left(self, p: RunProgress) -> str:
        """`` | budget 43% ETA 1m12s``: the share used of the budget nearest its end and the
        time left at the recent pace (a run may stop sooner: stop_at_return)."""
        r = self.budget
        if r is None:
            return ""
        used = [u / getattr(r, k) for k, u in p.budget_used(self.elapsed()) if getattr(r, k)]
        if not used:
            return ""
        f = min(max(used), 1.0)
        if f <= 0 or p.first_update_s is None:
            return " | budget   0% (starting)"
        trained = self.elapsed() - p.first_update_s
        eta = trained * (1 - f) / f
        return f" | budget {100 * f:3.0f}% ETA {int(eta) // 60}m{int(eta) % 60:02d}s"

    def close(self) -> None:
        self.file.close()
        self.trackers.close()


def _trackers_or_none(future) -> list[Tracker]:
    """The trackers a background start made, or none if it failed (to close them)."""
    try:
        return future.result()
    except Exception:
        return []


def _node_address(_actor) -> str:
    """Run inside an actor (``__ray_call__``): the address its metrics are served on."""
    from common.metrics import NODE_HOST, resolve_metrics_host

    return resolve_metrics_host(NODE_HOST)


def _node_id(_actor) -> str:
    """Run inside an actor (``__ray_call__``): the Ray node it runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _node_of(handle) -> str:
    import ray

    return ray.get(handle.__ray_call__.remote(_node_id), timeout=30)


def _metrics_addresses(driver_addr: str, handles: list) -> list[str]:
    """``host:port`` of every process's metrics endpoint, ``node`` hosts made concrete."""
    return [driver_addr, *_process_addresses(handles)]


def _process_addresses(handles: list) -> list[str]:
    """``host:port`` of the metrics endpoints of the actors ``handles``."""
    import ray

    from common.metrics import NODE_HOST

    out = []
    for h, addr in zip(handles, ray.get([h.metrics_address.remote() for h in handles])):
        host, port = addr.rsplit(":", 1)
        if host == NODE_HOST:
            host = ray.get(h.__ray_call__.remote(_node_address))
        out.append(f"{host}:{port}")
    return out


def _sd_path(cfg: TrainConfig, run_dir: Path) -> tuple[str, bool]:
    """Where this run lists its scrape targets, and whether the file goes when the run ends."""
    d = cfg.deploy
    if d.metrics_sd_dir:
        return str(
            Path(d.metrics_sd_dir) / f"{cfg.run.name}-{run_dir.name}-{os.getpid()}.json"
        ), True
    return d.metrics_sd_file, False


def _write_sd_file(path: str, addresses: list[str], run_name: str) -> None:
    """Prometheus file_sd targets for every process of this run."""
    doc = [{"targets": sorted(set(addresses)), "labels": {"job": "amago", "run": run_name}}]
    tmp = Path(path + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def _server_memory_mb(cfg: TrainConfig) -> dict[str, float]:
    """Resident and peak memory of the Redis-protocol server (from INFO)."""
    from replay_service import connect

    try:
        info = connect(cfg.replay.redis).info("memory")
    except Exception as e:  # a remote server may forbid INFO; memory is informative only
        log.warning("replay server memory unavailable: %s", e)
        return {}
    return {
        "rss_mb": info.get("used_memory_rss", 0) / 2**20,
        "peak_mb": info.get("used_memory_peak", 0) / 2**20,
    }


def _answers(refs: list, timeout_s: float = 10.0) -> list:
    """Results of end-of-run calls to rollout actors; None for one that died or hangs (a
    restarting actor must not fail a finished run)."""
    import ray

    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=timeout_s))
        except (ray.exceptions.RayError, TimeoutError) as e:
            log.warning("rollout actor did not answer at the end of the run: %s", type(e).__name__)
            out.append(None)
    return out


def run_training(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train to the budget; returns (and writes) the run summary.

    Checks everything first (:func:`deploy.config.prepare`: raises ``ConfigError`` before any
    process or server starts), fills in the derived fields, prints them and writes the
    config the run uses to ``run_dir/config.yaml``. The run's clock (``time_s`` of
    metrics.jsonl and the summary's times) starts here: config checks, the embedded replay
    server's start and, if the run starts Ray itself, Ray's start are on it."""
    started = time.monotonic()
    cfg, spec, derived = prepare(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, run_dir / "config.yaml")  # before the environment's password goes in
    for d in derived:
        console(run_dir, f"derived: {d}")
    cfg = resolve_environment(cfg)
    with replay_servers(cfg) as (cfg, servers):
        from deploy.replay_dump import dump_run_replay, load_run_prefill

        prefill = load_run_prefill(cfg, spec)  # offline data, before the learner samples
        summary = _train(cfg, spec, run_dir, started, servers=servers)
        if prefill is not None:
            summary["prefill"] = prefill
        if cfg.run.dump_replay_on_exit:
            summary["replay_dump"] = dump_run_replay(cfg, spec, run_dir)
    summary["derived"] = {d.field: d.value for d in derived}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save_config(cfg: TrainConfig, path: Path) -> None:
    """The resolved config a run uses (derived fields filled in) as YAML, without secrets (a
    password given on the command line is left out, one inside a server URL is ``***``: pass
    it through the environment variable ``deploy.redis_password_env`` names)."""
    from omegaconf import OmegaConf

    from replay_service.config import redact_url

    r = cfg.replay.redis
    redis = dataclasses.replace(
        r, password="", url=redact_url(r.url), shards=[redact_url(u) for u in r.shards]
    )
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis))
    OmegaConf.save(OmegaConf.structured(cfg), path)


def _train(
    cfg: TrainConfig,
    spec: EnvSpec,
    run_dir: Path,
    started: float | None = None,
    servers: list | None = None,
) -> dict:
    import ray

    from common.metrics import Metrics, resolve_metrics_host
    from common.ray_utils import init_ray
    from deploy.builder import build_workers

    # The trackers start on a thread while Ray and the workers start (TensorBoard's writer
    # imports torch: ~1 s); a backend that is not installed failed in prepare() already.
    pool = ThreadPoolExecutor(1, thread_name_prefix="trackers")
    trackers = pool.submit(make_trackers, cfg, run_dir)
    pool.shutdown(wait=False)
    started_ray = not ray.is_initialized()
    d = cfg.deploy
    init_ray(d.ray_address, num_cpus=(d.num_cpus or os.cpu_count()) if not d.ray_address else None)
    from deploy.builder import learner_placement

    try:  # learner.device=cuda where no GPU can ever come fails here, in one line
        use_gpu, _ = learner_placement(
            cfg.learner.device, ray.cluster_resources().get("GPU", 0), local=not d.ray_address
        )
    except Exception:
        if started_ray:
            ray.shutdown()
        TrackerSet(_trackers_or_none(trackers)).close()
        raise
    metrics = Metrics()
    driver_addr = ""
    if d.serve_metrics:
        driver_addr = f"{resolve_metrics_host(d.metrics_host)}:{metrics.serve(d.metrics_host)}"
    runlog = RunLog(run_dir, metrics, t0=started)
    stop = StopRequest()
    metrics.inc("amago_driver_replay_restarts", 0)  # exported from the start
    watch = ServerWatch(
        servers or [],
        say=runlog.say,
        on_restart=lambda k: metrics.inc("amago_driver_replay_restarts", 1),
    )
    handed = False
    sd_path, sd_temporary = _sd_path(cfg, run_dir)
    handles: list = []
    try:
        w = build_workers(cfg, spec, run_dir, use_gpu, started=handles)
        runlog.trackers = TrackerSet(trackers.result())  # a tracker that failed to start raises
        handed = True
        base = (
            _metrics_addresses(driver_addr, [w.learner, *w.evaluators]) if d.serve_metrics else []
        )

        def list_targets(actor_addrs: list[str]) -> None:
            if sd_path and base:
                _write_sd_file(sd_path, [*base, *actor_addrs], cfg.run.name)

        sup = Supervisor(metrics)
        control, control_as = _start_control(cfg, run_dir, len(w.actors), len(w.tasks))
        handles.append(control)
        fleet = Fleet(
            _fleet_setup(cfg, w, handles, list_targets if d.serve_metrics else None),
            sup,
            metrics,
            w.actors,
            [w.tasks.index(t) for t in w.actor_tasks] if w.tasks else [0] * len(w.actors),
            control=control,
            clock=runlog.elapsed,  # the time_s of metrics.jsonl
        )
        list_targets(fleet.addresses())
        with stop.installed():  # after Ray's start: its core worker aborts on SIGTERM
            summary = _loop(cfg, runlog, metrics, w, sup, fleet, stop, watch)
        summary["replay_server_restarts"] = watch.summary()
        summary["fleet"] = {"control": control_as, **fleet.summary()}
        actors = fleet.handles()
        _answers([a.stop.remote() for a in actors])  # unblock collects held by backpressure
        addrs = [*base, *fleet.addresses()]
        if d.dump_final_metrics and addrs:
            from deploy.scrape import FINAL_DUMP, scrape_all, write_dump

            summary["metrics_dump"] = str(write_dump(run_dir / FINAL_DUMP, scrape_all(addrs)))
        summary["memory_mb"] = {
            "learner": ray.get(w.learner.memory_mb.remote()),
            "actors": _answers([a.memory_mb.remote() for a in actors]),
            "replay_server": _server_memory_mb(cfg),
        }
    finally:
        if not handed:  # failed before the trackers were handed over: close what started
            runlog.trackers = TrackerSet(_trackers_or_none(trackers))
        runlog.close()
        if sd_temporary:
            Path(sd_path).unlink(missing_ok=True)
        from learner.group import release

        for h in handles:
            with contextlib.suppress(Exception):
                release(h)
        if started_ray:
            ray.shutdown()
    summary["run_dir"] = str(run_dir)
    if cfg.run.plot:
        from deploy.plots import plot_learning_curve

        summary["plot"] = str(
            plot_learning_curve(
                runlog.path, run_dir / "learning_curve.png", title=f"{cfg.run.name}: {cfg.env.id}"
            )
        )
    return summary


def _start_control(cfg: TrainConfig, run_dir: Path, n: int, tasks: int) -> tuple[object, str]:
    """The run's fleet control (``deploy/fleet.py``), and the name ``scale --run`` takes."""
    import ray

    handle, name = start_control(
        cfg.run.name, run_dir.name, n, max(1, tasks), cfg.actors.max_num_actors
    )
    run = name.split("/", 1)[1]
    where = (
        f" --address {ray.get_runtime_context().gcs_address}" if not cfg.deploy.ray_address else ""
    )
    console(run_dir, f"fleet: resize with `python -m deploy.cluster scale N --run {run}{where}`")
    return handle, run


def _fleet_setup(cfg: TrainConfig, w, started: list, on_addresses) -> FleetSetup:
    """The elastic fleet of this run's rollout actors: new ones through the builder's
    factory, ids after the evaluation actors' (``n .. n + tasks - 1``)."""
    return FleetSetup(
        make_actor=w.make_actor,
        weights=[t.weight for t in cfg.env.task_list()],
        task_names=list(w.tasks),
        first_new_id=len(w.actors) + len(w.evaluators),
        low=max(1, len(w.tasks)),
        high=cfg.actors.max_num_actors,
        drain_timeout_s=cfg.actors.drain_timeout_s,
        address_of=(lambda h: _process_addresses([h])[0]) if on_addresses else None,
        node_of=_node_of,
        on_addresses=on_addresses or (lambda addrs: None),
        started=started,
    )


@dataclass
class RunProgress:
    """What the driver knows of the run so far, updated from the workers' reports.

    Multi-task runs (``tasks`` non-empty) also keep recent returns per task and evaluate in
    rounds (one evaluation actor per task): a round's row holds each task's return and their
    mean (``return``), and the run is solved at the first round where every task with a
    threshold (``thresholds``: its ``stop_at_return``, else ``run.stop_at_return``) reached it.
    """

    env_steps: int = 0
    updates: int = 0
    recent: list[float] = field(default_factory=list)  # returns of recent exploring rollouts
    evals: list[dict] = field(default_factory=list)  # periodic greedy evaluations
    solved: dict | None = None  # the first evaluation at or above run.stop_at_return
    last_learner: LearnerReport | None = None
    # updates a crashed learner made after its last checkpoint (redone by its successor), and
    # each restart: where it resumed and what it discarded
    discarded_updates: int = 0
    learner_resumes: list[dict] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # multi-task runs: the task names
    thresholds: dict[str, float] = field(default_factory=dict)  # task -> stop return
    recent_by_task: dict[str, list[float]] = field(default_factory=dict)
    _round: dict[str, EvalReport] = field(default_factory=dict)  # this round's evaluations
    # actor lag (``ActorReport.policy_lags``): rollouts since the last console row, and a
    # histogram over the whole run (lag -> rollouts) for summary.json
    _recent_lags: list[int] = field(default_factory=list)
    lag_counts: dict[int, int] = field(default_factory=dict)
    # data age (``LearnerReport.data_age``) weighted by updates, for summary.json
    _age_sum: float = 0.0
    # the learner's time inside ``train`` calls and the part of it spent waiting for a batch
    learner_seconds: float = 0.0
    learner_wait_s: float = 0.0
    # start-up (run clock, ``time_s``): every worker built; the first learner update reported
    workers_ready_s: float | None = None
    first_update_s: float | None = None
    actors_alive: int = 0  # the elastic fleet (deploy/fleet.py), as of the last console row
    actors_desired: int = 0

    def on_actor(self, r: ActorReport) -> None:
        self.env_steps += r.env_steps
        self._recent_lags += r.policy_lags
        for lag in r.policy_lags:
            self.lag_counts[lag] = self.lag_counts.get(lag, 0) + 1
        self.recent = (self.recent + r.returns)[-200:]
        if r.task:
            mine = self.recent_by_task.get(r.task, [])
            self.recent_by_task[r.task] = (mine + r.returns)[-200:]

    def on_learner(self, r: LearnerReport) -> None:
        prev = self.last_learner
        if prev is not None and r.incarnation != prev.incarnation:  # a restarted learner
            resumed_at = r.version - r.updates  # the version of the checkpoint it resumed
            lost = max(0, prev.version - resumed_at)
            self.discarded_updates += lost
            self.learner_resumes.append(
                {"resumed_from": r.resumed_from, "version": resumed_at, "discarded_updates": lost}
            )
        self.updates += r.updates
        self.last_learner = r
        self._age_sum += r.data_age * r.updates
        self.learner_seconds += r.seconds
        self.learner_wait_s += r.batch_wait_s

    def take_recent_lags(self) -> list[int]:
        """Actor lags of the rollouts reported since the previous call."""
        out, self._recent_lags = self._recent_lags, []
        return out

    def lag_summary(self) -> dict:
        """summary.json's staleness figures: ``data_age`` (mean over all updates of the
        sampled rows' age, in updates) and ``actor_policy_lag`` (per inserted rollout,
        versions behind the learner at insert time: mean, median, p95, max, rollouts)."""
        n = sum(self.lag_counts.values())
        lag = None
        if n:
            lags = np.repeat(list(self.lag_counts), list(self.lag_counts.values()))
            lag = {
                "mean": float(lags.mean()),
                "p50": float(np.percentile(lags, 50)),
                "p95": float(np.percentile(lags, 95)),
                "max": int(lags.max()),
                "rollouts": int(n),
            }
        age = self._age_sum / self.updates if self.updates else None
        return {"data_age": age, "actor_policy_lag": lag}

    def on_eval(self, r: EvalReport, time_s: float, stop_at: float | None) -> dict:
        ev = r.mean_return()
        row = {"time_s": time_s, "env_steps": self.env_steps, "updates": self.updates}
        self.evals.append({**row, "return": float("nan") if ev is None else ev})
        if stop_at is not None and ev is not None and ev >= stop_at and self.solved is None:
            self.solved = self.evals[-1]
        return self.evals[-1]

    def start_round(self) -> None:
        """A new evaluation round (multi-task): what the previous one missed is void."""
        self._round = {}

    def on_task_eval(self, r: EvalReport, time_s: float) -> dict | None:
        """One task's evaluation (multi-task); the round's row once every task reported."""
        self._round[r.task] = r
        if set(self._round) != set(self.tasks):
            return None
        by_task = {t: self._round[t].mean_return() for t in self.tasks}
        nan = float("nan")
        row = {
            "time_s": time_s,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "return": _task_mean(by_task.values()),
            "by_task": {t: nan if v is None else v for t, v in by_task.items()},
            "success_by_task": {t: self._round[t].success_rate() for t in self.tasks},
        }
        self._round = {}
        self.evals.append(row)
        reached = [
            by_task[t] is not None and by_task[t] >= thr for t, thr in self.thresholds.items()
        ]
        if reached and all(reached) and self.solved is None:
            self.solved = row
        return row

    def stop_reason(self, r: RunConfig, elapsed_s: float) -> str | None:
        """Which budget ended the run (``max_env_steps``, ``max_updates``, ``max_seconds``),
        ``solved`` (``run.stop_at_return`` reached), or None while none has."""
        if self.solved is not None:
            return "solved"
        for name, used in self.budget_used(elapsed_s):
            limit = getattr(r, name)
            if limit and used >= limit:
                return name
        if self.first_update_s is None and r.max_startup_s and elapsed_s >= r.max_startup_s:
            return "no_update"
        return None

    def budget_used(self, elapsed_s: float) -> list[tuple[str, float]]:
        """What each budget has used: env steps, updates, seconds of training (counted from
        the first learner update: start-up is not training)."""
        trained_s = 0.0 if self.first_update_s is None else elapsed_s - self.first_update_s
        return [
            ("max_env_steps", self.env_steps),
            ("max_updates", self.updates),
            ("max_seconds", trained_s),
        ]

    def out_of_budget(self, r: RunConfig, elapsed_s: float) -> bool:
        return self.stop_reason(r, elapsed_s) is not None


def _task_mean(values: Iterable[float | None]) -> float:
    """Mean over tasks (each task counts once, whatever its number of rollouts)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def task_thresholds(cfg: TrainConfig) -> dict[str, float]:
    """Multi-task runs: each task's stop return (its own, else ``run.stop_at_return``)."""
    out = {}
    for t in cfg.env.task_list():
        thr = t.stop_at_return if t.stop_at_return is not None else cfg.run.stop_at_return
        if thr is not None:
            out[t.name] = float(thr)
    return out


def _loop(
    cfg: TrainConfig,
    runlog: RunLog,
    metrics,
    w,
    sup: Supervisor,
    fleet: Fleet,
    stop: StopRequest,
    watch: ServerWatch,
) -> dict:
    """Keep every worker busy until a budget is reached or a stop is requested (the rollout
    actors are ``fleet``'s, already registered with ``sup``), evaluating along the way; then
    the final checkpoint and (unless stopped by a signal) the final evaluation."""
    r = cfg.run
    rule = learner_rule(cfg.learner.worker.max_restarts, LEARNER_OUTAGE_S)
    sup.add("learner", 0, lambda: w.learner.train.remote(r.updates_per_call, 10.0), rule)
    for k, ev_actor in enumerate(w.evaluators):
        sup.add("eval", k, lambda a=ev_actor: a.evaluate.remote(r.eval_episodes), EVAL_RULE)
    multi = bool(w.tasks)
    p = RunProgress(tasks=list(w.tasks), thresholds=task_thresholds(cfg))
    runlog.budget = r
    p.workers_ready_s = runlog.elapsed()
    sup.call_all("actor")
    sup.call("learner")
    next_log = r.log_every_s
    next_eval = r.eval_every_s if r.eval_every_s > 0 else float("inf")
    evaluating = lambda: any(sup.busy("eval", k) for k in range(len(w.evaluators)))  # noqa: E731
    stall = StallWatch(r.stall_timeout_s)
    stalled = False
    while not stop.requested and not p.out_of_budget(r, runlog.elapsed()):
        watch.check()
        stalled = stall.stalled(p.env_steps, p.updates)
        if watch.fatal or stalled:
            break
        for done in sup.poll(timeout_s=0.5):
            if done.kind == "actor":
                p.on_actor(done.report)
                fleet.on_report(done.index, done.report)
            elif done.kind == "learner":
                p.on_learner(done.report)
                if p.first_update_s is None and done.report.updates:
                    p.first_update_s = runlog.elapsed()
            elif multi:
                ev = p.on_task_eval(done.report, runlog.elapsed())
                t = done.report.task
                metrics.set("amago_eval_return", _nan(done.report.mean_return()), task=t)
                if ev is not None:
                    runlog.row(**_eval_fields(ev), eval_return=ev["return"])
                continue
            else:
                ev = p.on_eval(done.report, runlog.elapsed(), r.stop_at_return)
                metrics.set("amago_eval_return", ev["return"], task="")
                runlog.row(
                    **{k: ev[k] for k in ("env_steps", "updates")},
                    eval_return=ev["return"],
                    eval_success=done.report.success_rate(),
                )
                continue
            sup.call(done.kind, done.index)  # (not for an actor leaving the fleet)
        fleet.step()
        if runlog.elapsed() >= next_eval and not evaluating():
            p.start_round()
            sup.call_all("eval")
            next_eval = runlog.elapsed() + r.eval_every_s
        if runlog.elapsed() >= next_log:
            p.actors_alive, p.actors_desired = fleet.alive(), fleet.desired
            runlog.progress(p)
            next_log = runlog.elapsed() + r.log_every_s
    train_time = runlog.elapsed()
    checkpoint = _finish_learner(w)  # the final evaluation evaluates exactly these weights
    checkpoint["stop_reason"] = (
        stop.reason
        or ("replay_server_lost" if watch.fatal else None)
        or ("stalled" if stalled else None)
        or p.stop_reason(r, train_time)
    )
    if stalled:
        runlog.say(
            f"error: no env step and no update for run.stall_timeout_s={r.stall_timeout_s:g} s:"
            " stopping the run"
        )
    if stop.requested or watch.fatal or stalled:  # checkpoint and summary, no final evaluation
        r = dataclasses.replace(r, final_eval_episodes=0)
    if multi:
        return {**_final_multi(cfg, r, runlog, sup, p, w, train_time), **checkpoint}
    final = lambda: w.evaluator.evaluate.remote(r.final_eval_episodes)  # noqa: E731
    res = sup.call_blocking("eval", call=final) if r.final_eval_episodes else None
    final_return = res.mean_return() if res else None
    if final_return is not None:
        runlog.row(env_steps=p.env_steps, updates=p.updates, eval_return=final_return, final=True)
        runlog.say(
            f"final {'sampled' if r.eval_sample else 'greedy'} evaluation over "
            f"{len(res.returns)} rollouts: return {final_return:.3f}"
        )
    elif res is not None:  # every rollout hit the step cap (an env without a working limit)
        log.warning("final evaluation finished no rollout within its step cap")
    return {
        **_summary(cfg, p, sup, res if final_return is not None else None, train_time),
        **checkpoint,
    }


def _finish_learner(w) -> dict:
    """Ends training: the learner (its queued ``train`` calls done first) publishes its last
    version and writes the final checkpoint, so the final evaluation, which refreshes the
    weights, scores the checkpoint that export and evaluate later read."""
    import ray

    path = ray.get(w.learner.close.remote())
    return {"final_checkpoint": path, "final_version": ray.get(w.learner.version.remote())}


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _eval_fields(ev: dict) -> dict:
    """metrics.jsonl fields of a multi-task evaluation round: ``eval_return/<task>``..."""
    out = {k: ev[k] for k in ("env_steps", "updates")}
    for t, v in ev["by_task"].items():
        out[f"eval_return/{t}"] = v
        out[f"eval_success/{t}"] = ev["success_by_task"][t]
    return out


def _final_multi(
    cfg, r: RunConfig, runlog: RunLog, sup: Supervisor, p: RunProgress, w, secs: float
) -> dict:
    """The final evaluation of a multi-task run: every task's evaluation actor at once."""
    import ray

    reports: dict[str, EvalReport] = {}
    if r.final_eval_episodes:
        refs = [e.evaluate.remote(r.final_eval_episodes) for e in w.evaluators]
        for k, (name, ref) in enumerate(zip(w.tasks, refs)):
            try:
                reports[name] = ray.get(ref)
            except ray.exceptions.RayActorError:  # restarting: ask again, as call_blocking does
                call = lambda e=w.evaluators[k]: e.evaluate.remote(r.final_eval_episodes)  # noqa: E731
                reports[name] = sup.call_blocking("eval", k, call=call)
    by_task = {t: rep.mean_return() for t, rep in reports.items()}
    final = _task_mean(by_task.values()) if reports else None
    if final is not None and not np.isnan(final):
        p.start_round()
        row = {
            "by_task": {t: _nan(v) for t, v in by_task.items()},
            "success_by_task": {t: rep.success_rate() for t, rep in reports.items()},
            "env_steps": p.env_steps,
            "updates": p.updates,
        }
        runlog.row(**_eval_fields(row), eval_return=final, final=True)
        per = ", ".join(f"{t} {_nan(v):.3f}" for t, v in by_task.items())
        runlog.say(
            f"final {'sampled' if r.eval_sample else 'greedy'} evaluation per task: {per} "
            f"(mean {final:.3f})"
        )
    else:
        final = None
        if reports:
            log.warning("final evaluation finished no rollout within its step cap")
    merged = None
    if final is not None:
        reps = list(reports.values())
        merged = EvalReport(
            incarnation="",
            policy_version=max(x.policy_version for x in reps),
            returns=[v for x in reps for v in x.returns],
            successes=[v for x in reps for v in x.successes],
            lengths=[v for x in reps for v in x.lengths],
            episode_returns=[v for x in reps for v in x.episode_returns],
        )
    out = _summary(cfg, p, sup, merged, secs)
    if final is not None:
        out["final_eval_return"] = final  # the mean over tasks, each counted once
        succ = [rep.success_rate() for rep in reports.values()]
        out["final_eval_success"] = None if None in succ else float(np.mean(succ))
    out["tasks"] = list(w.tasks)
    out["actor_tasks"] = list(w.actor_tasks)
    out["final_eval_by_task"] = {
        t: {
            "return": rep.mean_return(),
            "success": rep.success_rate(),
            "by_episode": rep.by_episode(),
            "rollouts": len(rep.returns),
        }
        for t, rep in reports.items()
    }
    return out


def _summary(cfg, p: RunProgress, sup: Supervisor, final: EvalReport | None, secs: float) -> dict:
    """summary.json's training part."""
    return {
        "env_id": cfg.env.id,
        "env_steps": p.env_steps,
        # updates behind the final weights; those a crashed learner made after its last
        # checkpoint are listed apart (the budget counted them: they were computed)
        "updates": p.updates - p.discarded_updates,
        "updates_discarded": p.discarded_updates,
        "learner_resumes": p.learner_resumes,
        "train_seconds": secs,
        "final_eval_return": final.mean_return() if final else None,
        "final_eval_success": final.success_rate() if final else None,
        "final_eval_by_episode": final.by_episode() if final else None,  # k-th episode's mean
        "final_eval_version": final.policy_version if final else None,  # = final_version
        "evals": p.evals,
        "solved": p.solved,
        "actor_restarts": sup.restarts["actor"] + sup.restarts["eval"],
        "learner_restarts": sup.restarts["learner"],
        "learner_resumed_from": p.last_learner.resumed_from if p.last_learner else None,
        "env_steps_per_s": p.env_steps / max(secs, 1e-9),
        "updates_per_s": p.updates / max(secs, 1e-9),
        # of the learner's time in train calls, the part spent waiting for a batch (rate
        # limiter, empty replay, sampling slower than updates): 0 = never starved
        "workers_ready_s": p.workers_ready_s,
        "first_update_s": p.first_update_s,  # the first train call that updated, returned
        "learner_wait_fraction": (
            p.learner_wait_s / p.learner_seconds if p.learner_seconds else None
        ),
        **p.lag_summary(),
        "replay_final": _replay_brief(p.last_learner.replay if p.last_learner else None),
    }


def _replay_brief(stats) -> dict | None:
    """The replay as the learner last saw it: stored, ever inserted, rejected by reason."""
    if stats is None:
        return None
    return {
        "timesteps": stats.timesteps,
        "bytes": stats.bytes,
        "inserted_trajectories": stats.inserted_trajectories,
        "evicted_trajectories": stats.evicted_trajectories,
        "rejected": dict(stats.rejected),
    }


def no_update_reason(summary: dict, cfg: TrainConfig) -> str | None:
    """Why a run that ended without one learner update did not train (None if it did)."""
    if summary.get("updates"):
        return None
    why = f"the run ended without a learner update ({summary.get('env_steps', 0)} env steps"
    replay = summary.get("replay_final")
    if replay is not None:
        why += f"; replay holds {replay['timesteps']} timesteps"
        rejected = sum(replay["rejected"].values())
        if rejected:
            why += f", rejected {rejected} rollouts {replay['rejected']}"
    need = cfg.replay.rate_limit.min_size_steps
    return why + f"; sampling starts at replay.rate_limit.min_size_steps={need})"


#: Seconds the driver waits for a crashed learner to come back before failing the run.
LEARNER_OUTAGE_S = 300.0


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from deploy.config import register_schemas

    register_schemas()
    config_dir = str(Path(__file__).resolve().parent.parent / "configs")

    @hydra.main(config_path=config_dir, config_name="config", version_base="1.3")
    def _main(dcfg) -> float | None:
        """One run; returns its final greedy evaluation return (the objective a Hydra
        sweeper such as Optuna's maximises; None without a final evaluation)."""
        from common.config_utils import ConfigError
        from deploy.run_dir import discard_if_untouched, scrub_secrets

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().output_subdir:  # .hydra/: before anything can fail
            scrub_secrets(run_dir / HydraConfig.get().output_subdir)
        try:
            summary = run_training(OmegaConf.to_object(dcfg), run_dir)
        except ConfigError as e:  # raised before anything started: one line, no traceback
            discard_if_untouched(run_dir)  # no run directory for a run that never started
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"run directory: {summary['run_dir']}")
        if summary.get("plot"):
            print(f"learning curve: {summary['plot']}")
        print(f"checkpoint: {summary['final_checkpoint']}")
        reason = str(summary.get("stop_reason"))
        if reason.startswith("signal:"):  # 130 / 143, as if the signal had ended it
            name = reason.split(":", 1)[1]
            print(f"stopped by {name}", file=sys.stderr)
            sys.exit(128 + signal.Signals[name].value)
        if reason in ("replay_server_lost", "stalled"):  # said on the console already
            sys.exit(1)
        why = no_update_reason(summary, OmegaConf.to_object(dcfg))
        if why:  # a run that did not train is not a success
            print(f"error: {why}", file=sys.stderr)
            sys.exit(1)
        return summary["final_eval_return"]

    _main()


if __name__ == "__main__":
    main()
