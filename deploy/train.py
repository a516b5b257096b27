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
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.reports import ActorReport, EvalReport, LearnerReport
from common.spec import EnvSpec
from deploy.config import RunConfig, TrainConfig, prepare, resolve_environment
from deploy.supervisor import ACTOR_RULE, EVAL_RULE, Supervisor, learner_rule
from deploy.tracking import Tracker, TrackerSet, make_trackers

log = logging.getLogger("amago")


@contextlib.contextmanager
def replay_endpoint(cfg: TrainConfig) -> Iterator[TrainConfig]:
    """Yield ``cfg`` with a reachable ``replay.redis.url``, starting an embedded server
    (stopped on exit) when the config names none.

    The embedded server always requires a password: the config's, or a random one made for
    this run. The yielded config carries it to the run's clients (actors and learner get
    the config); the run's ``config.yaml`` is written before, so it never holds it."""
    if cfg.replay.redis.url:
        _check_external_server(cfg)
        yield cfg
        return
    from replay_service.server import EmbeddedServer

    d = cfg.deploy
    with EmbeddedServer(
        password=cfg.replay.redis.password,  # "" = a random one
        maxmemory_bytes=d.embedded_maxmemory_mb * 2**20,
        data_dir=d.embedded_data_dir or None,
    ) as server:
        redis_cfg = dataclasses.replace(cfg.replay.redis, url=server.url, password=server.password)
        yield dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis_cfg))


def _check_external_server(cfg: TrainConfig) -> None:
    """An external replay server must run ``maxmemory-policy noeviction`` (``ConfigError``
    naming ``replay.redis.url`` otherwise). One that cannot be reached yet is left to the
    workers, which wait out outages."""
    import redis

    from common.replay import ReplayUnavailable
    from replay_service import connect
    from replay_service.client import check_server

    try:
        check_server(connect(cfg.replay.redis))
    except (redis.exceptions.RedisError, ReplayUnavailable) as e:  # not a policy problem
        log.warning("replay server not checked at start-up (%s); workers will wait for it", e)


class RunLog:
    """metrics.jsonl rows (each also sent to the run's trackers, ``deploy/tracking.py``), the
    console line and the driver's own Prometheus metrics."""

    def __init__(self, run_dir: Path, metrics, trackers: Iterable[Tracker] = ()):
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a", buffering=1)
        self.metrics = metrics
        self.trackers = TrackerSet(trackers)
        self.t0 = time.monotonic()
        self._last = (self.t0, 0, 0)

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
        lr = p.last_learner
        stored = lr.replay.timesteps if lr and lr.replay else None
        lag = lr.policy_lag if lr else None
        named = dict(
            env_steps=p.env_steps,
            updates=p.updates,
            return_mean=ret,
            env_steps_per_s=round(sps, 2),
            updates_per_s=round(ups, 3),
            replay_timesteps=stored,
            policy_lag=lag,
        )
        self.row(**{**(lr.losses if lr else {}), **named})  # learner means, then the driver's
        fmt = lambda v: "   -" if v is None else f"{v:6.3f}"  # noqa: E731
        print(
            f"[{self.elapsed():7.1f}s] steps {p.env_steps:>9,d} ({sps:6.0f}/s) | "
            f"updates {p.updates:>7,d} ({ups:5.1f}/s) | return {fmt(ret)} | "
            f"eval {fmt(p.evals[-1]['return'] if p.evals else None)} | "
            f"replay {stored or 0:>9,} steps | lag {lag or 0.0:5.1f}",
            flush=True,
        )

    def close(self) -> None:
        self.file.close()
        self.trackers.close()


def _node_address(_actor) -> str:
    """Run inside an actor (``__ray_call__``): the address its metrics are served on."""
    from common.metrics import NODE_HOST, resolve_metrics_host

    return resolve_metrics_host(NODE_HOST)


def _metrics_addresses(driver_addr: str, handles: list) -> list[str]:
    """``host:port`` of every process's metrics endpoint, ``node`` hosts made concrete."""
    import ray

    from common.metrics import NODE_HOST

    out = [driver_addr]
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
    config the run uses to ``run_dir/config.yaml``."""
    cfg, spec, derived = prepare(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, run_dir / "config.yaml")  # before the environment's password goes in
    for d in derived:
        print(f"derived: {d}", flush=True)
    cfg = resolve_environment(cfg)
    with replay_endpoint(cfg) as cfg:
        summary = _train(cfg, spec, run_dir)
    summary["derived"] = {d.field: d.value for d in derived}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save_config(cfg: TrainConfig, path: Path) -> None:
    """The resolved config a run uses (derived fields filled in) as YAML, without secrets (a
    password given on the command line is left out: pass it through the environment variable
    ``deploy.redis_password_env`` names)."""
    from omegaconf import OmegaConf

    redis = dataclasses.replace(cfg.replay.redis, password="")
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis))
    OmegaConf.save(OmegaConf.structured(cfg), path)


def _train(cfg: TrainConfig, spec: EnvSpec, run_dir: Path) -> dict:
    import ray

    from common.metrics import Metrics, resolve_metrics_host
    from common.ray_utils import init_ray
    from deploy.builder import build_workers

    trackers = make_trackers(cfg, run_dir)  # before Ray: a backend that cannot start fails first
    started_ray = not ray.is_initialized()
    d = cfg.deploy
    init_ray(d.ray_address, num_cpus=(d.num_cpus or os.cpu_count()) if not d.ray_address else None)
    use_gpu = cfg.learner.device == "cuda" or (
        cfg.learner.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    metrics = Metrics()
    driver_addr = ""
    if d.serve_metrics:
        driver_addr = f"{resolve_metrics_host(d.metrics_host)}:{metrics.serve(d.metrics_host)}"
    runlog = RunLog(run_dir, metrics, trackers)
    sd_path, sd_temporary = _sd_path(cfg, run_dir)
    handles: list = []
    try:
        w = build_workers(cfg, spec, run_dir, use_gpu, started=handles)
        addrs = _metrics_addresses(driver_addr, w.all()) if d.serve_metrics else []
        if sd_path and addrs:
            _write_sd_file(sd_path, addrs, cfg.run.name)
        summary = _loop(cfg, runlog, metrics, w)
        _answers([a.stop.remote() for a in w.actors])  # unblock collects held by backpressure
        if d.dump_final_metrics and addrs:
            from deploy.scrape import FINAL_DUMP, scrape_all, write_dump

            summary["metrics_dump"] = str(write_dump(run_dir / FINAL_DUMP, scrape_all(addrs)))
        summary["memory_mb"] = {
            "learner": ray.get(w.learner.memory_mb.remote()),
            "actors": _answers([a.memory_mb.remote() for a in w.actors]),
            "replay_server": _server_memory_mb(cfg),
        }
        summary["final_checkpoint"] = ray.get(w.learner.close.remote())
    finally:
        runlog.close()
        if sd_temporary:
            Path(sd_path).unlink(missing_ok=True)
        for h in handles:
            with contextlib.suppress(Exception):
                ray.kill(h)
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


@dataclass
class RunProgress:
    """What the driver knows of the run so far, updated from the workers' reports."""

    env_steps: int = 0
    updates: int = 0
    recent: list[float] = field(default_factory=list)  # returns of recent exploring rollouts
    evals: list[dict] = field(default_factory=list)  # periodic greedy evaluations
    solved: dict | None = None  # the first evaluation at or above run.stop_at_return
    last_learner: LearnerReport | None = None

    def on_actor(self, r: ActorReport) -> None:
        self.env_steps += r.env_steps
        self.recent = (self.recent + r.returns)[-200:]

    def on_learner(self, r: LearnerReport) -> None:
        self.updates += r.updates
        self.last_learner = r

    def on_eval(self, r: EvalReport, time_s: float, stop_at: float | None) -> dict:
        ev = r.mean_return()
        row = {"time_s": time_s, "env_steps": self.env_steps, "updates": self.updates}
        self.evals.append({**row, "return": float("nan") if ev is None else ev})
        if stop_at is not None and ev is not None and ev >= stop_at and self.solved is None:
            self.solved = self.evals[-1]
        return self.evals[-1]

    def out_of_budget(self, r: RunConfig, elapsed_s: float) -> bool:
        return bool(
            (r.max_env_steps and self.env_steps >= r.max_env_steps)
            or (r.max_updates and self.updates >= r.max_updates)
            or (r.max_seconds and elapsed_s >= r.max_seconds)
            or self.solved is not None
        )


def _loop(cfg: TrainConfig, runlog: RunLog, metrics, w) -> dict:
    r = cfg.run
    sup = Supervisor(metrics)
    for i, a in enumerate(w.actors):
        sup.add("actor", i, a.collect.remote, ACTOR_RULE)
    rule = learner_rule(cfg.learner.worker.max_restarts, LEARNER_OUTAGE_S)
    sup.add("learner", 0, lambda: w.learner.train.remote(r.updates_per_call, 10.0), rule)
    sup.add("eval", 0, lambda: w.evaluator.evaluate.remote(r.eval_episodes), EVAL_RULE)
    p = RunProgress()
    sup.call_all("actor")
    sup.call("learner")
    next_log = r.log_every_s
    next_eval = r.eval_every_s if r.eval_every_s > 0 else float("inf")
    while not p.out_of_budget(r, runlog.elapsed()):
        for done in sup.poll(timeout_s=0.5):
            if done.kind == "actor":
                p.on_actor(done.report)
            elif done.kind == "learner":
                p.on_learner(done.report)
            else:
                ev = p.on_eval(done.report, runlog.elapsed(), r.stop_at_return)
                metrics.set("amago_eval_return", ev["return"])
                runlog.row(
                    **{k: ev[k] for k in ("env_steps", "updates")},
                    eval_return=ev["return"],
                    eval_success=done.report.success_rate(),
                )
                continue
            sup.call(done.kind, done.index)
        if runlog.elapsed() >= next_eval and not sup.busy("eval"):
            sup.call("eval")
            next_eval = runlog.elapsed() + r.eval_every_s
        if runlog.elapsed() >= next_log:
            metrics.set("amago_driver_actors_alive", len(w.actors))
            runlog.progress(p)
            next_log = runlog.elapsed() + r.log_every_s
    train_time = runlog.elapsed()
    final = lambda: w.evaluator.evaluate.remote(r.final_eval_episodes)  # noqa: E731
    res = sup.call_blocking("eval", call=final) if r.final_eval_episodes else None
    final_return = res.mean_return() if res else None
    if final_return is not None:
        runlog.row(env_steps=p.env_steps, updates=p.updates, eval_return=final_return, final=True)
        print(
            f"final {'sampled' if r.eval_sample else 'greedy'} evaluation over "
            f"{len(res.returns)} rollouts: return {final_return:.3f}",
            flush=True,
        )
    elif res is not None:  # every rollout hit the step cap (an env without a working limit)
        log.warning("final evaluation finished no rollout within its step cap")
    return _summary(cfg, p, sup, res if final_return is not None else None, train_time)


def _summary(cfg, p: RunProgress, sup: Supervisor, final: EvalReport | None, secs: float) -> dict:
    """summary.json's training part."""
    return {
        "env_id": cfg.env.id,
        "env_steps": p.env_steps,
        "updates": p.updates,
        "train_seconds": secs,
        "final_eval_return": final.mean_return() if final else None,
        "final_eval_success": final.success_rate() if final else None,
        "final_eval_by_episode": final.by_episode() if final else None,  # k-th episode's mean
        "evals": p.evals,
        "solved": p.solved,
        "actor_restarts": sup.restarts["actor"] + sup.restarts["eval"],
        "learner_restarts": sup.restarts["learner"],
        "learner_resumed_from": p.last_learner.resumed_from if p.last_learner else None,
        "env_steps_per_s": p.env_steps / max(secs, 1e-9),
        "updates_per_s": p.updates / max(secs, 1e-9),
    }


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

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            summary = run_training(OmegaConf.to_object(dcfg), run_dir)
        except ConfigError as e:  # raised before anything started: one line, no traceback
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"run directory: {summary['run_dir']}")
        if summary.get("plot"):
            print(f"learning curve: {summary['plot']}")
        print(f"checkpoint: {summary['final_checkpoint']}")
        return summary["final_eval_return"]

    _main()


if __name__ == "__main__":
    main()
