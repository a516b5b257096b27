"""Training entrypoint: builds the replay service, the learner and the rollout actors, runs
them to a budget, evaluates greedily along the way and writes a run directory.

    python -m deploy.train                                   # local: Ray + embedded Valkey
    python -m deploy.train experiment=bandit run.max_env_steps=20000
    python -m deploy.train env.id=CartPole-v1                # any env: the generic defaults
    make cluster-up && source .state/cluster/env.sh     # then, see docs/deploy.md:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m deploy.train deploy=cluster run.max_env_steps=20000

The run directory holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/``,
``learning_curve.png``, ``summary.json`` and ``metrics_final.prom`` (a last scrape of every
process's metrics endpoint, ``deploy.dump_final_metrics``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deploy.config import TrainConfig, prepare, resolve_environment

log = logging.getLogger("amago")


@contextlib.contextmanager
def replay_endpoint(cfg: TrainConfig) -> Iterator[TrainConfig]:
    """Yield ``cfg`` with a reachable ``replay.redis.url``, starting an embedded server
    (stopped on exit) when the config names none."""
    if cfg.replay.redis.url:
        yield cfg
        return
    from replay_service.server import EmbeddedServer

    d = cfg.deploy
    with EmbeddedServer(
        password=cfg.replay.redis.password,
        maxmemory_bytes=d.embedded_maxmemory_mb * 2**20,
        data_dir=d.embedded_data_dir or None,
    ) as server:
        redis_cfg = dataclasses.replace(cfg.replay.redis, url=server.url)
        yield dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis_cfg))


class RunLog:
    """metrics.jsonl rows, the console line and the driver's own Prometheus metrics."""

    def __init__(self, run_dir: Path, metrics):
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a", buffering=1)
        self.metrics = metrics
        self.t0 = time.monotonic()
        self._last = (self.t0, 0, 0)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def row(self, **fields) -> dict:
        fields = {"time_s": round(self.elapsed(), 3), **fields}
        self.file.write(json.dumps(fields) + "\n")
        return fields

    def progress(
        self,
        env_steps: int,
        updates: int,
        recent_returns: list[float],
        eval_return: float | None,
        learner_out: dict,
    ) -> None:
        now = time.monotonic()
        t_prev, s_prev, u_prev = self._last
        dt = max(now - t_prev, 1e-9)
        sps, ups = (env_steps - s_prev) / dt, (updates - u_prev) / dt
        self._last = (now, env_steps, updates)
        self.metrics.set("amago_driver_env_steps_per_second", sps)
        self.metrics.set("amago_driver_updates_per_second", ups)
        ret = float(np.mean(recent_returns)) if recent_returns else None
        replay = learner_out.get("replay") or {}
        self.row(
            env_steps=env_steps,
            updates=updates,
            return_mean=ret,
            env_steps_per_s=round(sps, 2),
            updates_per_s=round(ups, 3),
            replay_timesteps=replay.get("timesteps"),
            policy_lag=learner_out.get("policy_lag"),
            **{
                k: v
                for k, v in learner_out.items()
                if isinstance(v, float) and k not in ("policy_lag", "seconds")
            },
        )
        fmt = lambda v: "   -" if v is None else f"{v:6.3f}"  # noqa: E731
        print(
            f"[{self.elapsed():7.1f}s] steps {env_steps:>9,d} ({sps:6.0f}/s) | "
            f"updates {updates:>7,d} ({ups:5.1f}/s) | return {fmt(ret)} | "
            f"eval {fmt(eval_return)} | replay {replay.get('timesteps', 0):>9,} steps | "
            f"lag {learner_out.get('policy_lag', 0.0):5.1f}",
            flush=True,
        )

    def close(self) -> None:
        self.file.close()


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


def start_rollout_actor(
    cfg: TrainConfig, broker, index: int, evaluation: bool = False, strategy: str = "DEFAULT"
):
    """Rollout actor ``index`` (an evaluation actor, writing nothing to replay, if
    ``evaluation``) as a restartable Ray actor with a second thread for control calls."""
    import ray

    from actors.worker import ActorSetup, RolloutActor

    setup = ActorSetup(
        actor_id=index,
        num_actors=cfg.actors.num_actors,
        env=cfg.env,
        actors=cfg.actors,
        learner=cfg.learner,
        replay=None if evaluation else cfg.replay,
        metrics_host=cfg.deploy.metrics_host,
        serve_metrics=cfg.deploy.serve_metrics,
    )
    return (
        ray.remote(RolloutActor)
        .options(
            num_cpus=0 if evaluation else cfg.actors.num_cpus,
            max_restarts=cfg.actors.max_restarts,
            max_task_retries=0,
            max_concurrency=2,
            scheduling_strategy=strategy,
        )
        .remote(setup, broker)
    )


def run_training(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train to the budget; returns (and writes) the run summary.

    Checks everything first (:func:`deploy.config.prepare`: raises ``ConfigError`` before any
    process or server starts), fills in the derived fields, prints them and writes the
    config the run uses to ``run_dir/config.yaml``."""
    cfg, _spec, derived = prepare(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, run_dir / "config.yaml")  # before the environment's password goes in
    for d in derived:
        print(f"derived: {d}", flush=True)
    cfg = resolve_environment(cfg)
    with replay_endpoint(cfg) as cfg:
        summary = _train(cfg, run_dir)
    summary["derived"] = {d.field: d.value for d in derived}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save_config(cfg: TrainConfig, path: Path) -> None:
    """The resolved config a run uses (derived fields filled in) as YAML."""
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.structured(cfg), path)


def _train(cfg: TrainConfig, run_dir: Path) -> dict:
    import ray

    from common.envs.factory import env_spec
    from common.metrics import Metrics, resolve_metrics_host
    from common.ray_utils import init_ray
    from common.weights import WeightBroker
    from learner.worker import LearnerActor, LearnerSetup

    started_ray = not ray.is_initialized()
    d = cfg.deploy
    init_ray(d.ray_address, num_cpus=(d.num_cpus or os.cpu_count()) if not d.ray_address else None)
    spec = env_spec(cfg.env)
    use_gpu = cfg.learner.device == "cuda" or (
        cfg.learner.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    metrics = Metrics()
    metrics.inc("amago_driver_actor_restarts", 0)  # exported from the start, not at a failure
    metrics.inc("amago_driver_learner_restarts", 0)
    driver_addr = ""
    if d.serve_metrics:
        driver_addr = f"{resolve_metrics_host(d.metrics_host)}:{metrics.serve(d.metrics_host)}"
    runlog = RunLog(run_dir, metrics)
    sd_path, sd_temporary = _sd_path(cfg, run_dir)

    handles: list = []
    try:
        broker = ray.remote(WeightBroker).options(num_cpus=0).remote()
        handles.append(broker)
        lsetup = LearnerSetup(
            spec=spec,
            learner=cfg.learner,
            replay=cfg.replay,
            run_dir=str(run_dir),
            resume_from=cfg.run.resume_from,
            metrics_host=d.metrics_host,
            serve_metrics=d.serve_metrics,
        )
        learner = (
            ray.remote(LearnerActor)
            .options(
                num_cpus=cfg.learner.worker.num_cpus,
                num_gpus=1 if use_gpu else 0,
                max_restarts=cfg.learner.worker.max_restarts,
                max_task_retries=0,
            )
            .remote(lsetup, broker)
        )
        handles.append(learner)
        ray.get(learner.version.remote())  # surface a failed learner start-up here, not later
        strategy = "SPREAD" if (d.ray_address and d.spread_actors) else "DEFAULT"
        actors = [
            start_rollout_actor(cfg, broker, i, strategy=strategy)
            for i in range(cfg.actors.num_actors)
        ]
        evaluator = start_rollout_actor(
            cfg, broker, cfg.actors.num_actors, evaluation=True, strategy=strategy
        )
        handles += actors + [evaluator]
        ray.get([a.ping.remote() for a in actors] + [evaluator.ping.remote()])
        addrs = (
            _metrics_addresses(driver_addr, [learner, *actors, evaluator])
            if d.serve_metrics
            else []
        )
        if sd_path and addrs:
            _write_sd_file(sd_path, addrs, cfg.run.name)
        summary = _loop(cfg, runlog, metrics, learner, actors, evaluator)
        _answers([a.stop.remote() for a in actors])  # unblock collects held by backpressure
        if d.dump_final_metrics and addrs:
            from deploy.scrape import FINAL_DUMP, scrape_all, write_dump

            summary["metrics_dump"] = str(write_dump(run_dir / FINAL_DUMP, scrape_all(addrs)))
        summary["memory_mb"] = {
            "learner": ray.get(learner.memory_mb.remote()),
            "actors": _answers([a.memory_mb.remote() for a in actors]),
            "replay_server": _server_memory_mb(cfg),
        }
        summary["final_checkpoint"] = ray.get(learner.close.remote())
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


#: Seconds the driver waits for a crashed learner to come back before failing the run.
LEARNER_OUTAGE_S = 300.0


class RestartCounter:
    """Counts restarts from the ``incarnation`` each actor reports: a restarted actor (a new
    process built from the same constructor arguments) reports a new one. ``count``: rollout
    and evaluation actors (``amago_driver_actor_restarts``); ``learner``: the learner."""

    def __init__(self, metrics) -> None:
        self.metrics, self.count, self.learner = metrics, 0, 0
        self._last: dict[tuple[str, int], str] = {}

    def seen(self, kind: str, index: int, incarnation: str) -> None:
        last = self._last.get((kind, index))
        if last is not None and last != incarnation:
            if kind == "learner":
                self.learner += 1
                self.metrics.inc("amago_driver_learner_restarts")
            else:
                self.count += 1
                self.metrics.inc("amago_driver_actor_restarts")
        self._last[(kind, index)] = incarnation


def _loop(cfg: TrainConfig, runlog: RunLog, metrics, learner, actors, evaluator) -> dict:
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    r = cfg.run
    env_steps = updates = 0
    recent: list[float] = []
    last_learner: dict = {}
    evals: list[dict] = []
    solved: dict | None = None
    pending: dict = {}
    retry_at: dict[tuple[str, int], float] = {}  # (kind, index) -> when to call it again
    # Deaths (not restarts in progress): a rollout actor's consecutive ones; all of the
    # learner's (Ray's max_restarts is a total).
    deaths: Counter[tuple[str, int]] = Counter()
    death_limit = {"actor": 3, "learner": cfg.learner.worker.max_restarts + 1}
    retry_delay_s = {"actor": 0.5, "learner": 1.0}
    learner_down_since: float | None = None  # first failure of the current learner outage
    restarts = RestartCounter(metrics)

    def collect(i: int) -> None:
        pending[actors[i].collect.remote()] = ("actor", i)

    def train() -> None:
        pending[learner.train.remote(r.updates_per_call, 10.0)] = ("learner", 0)

    def evaluate(n: int) -> None:
        pending[evaluator.evaluate.remote(n)] = ("eval", 0)

    calls = {"actor": collect, "learner": lambda _i: train()}

    for i in range(len(actors)):
        collect(i)
    train()
    next_log = r.log_every_s
    next_eval = r.eval_every_s if r.eval_every_s > 0 else float("inf")

    def out_of_budget() -> bool:
        return bool(
            (r.max_env_steps and env_steps >= r.max_env_steps)
            or (r.max_updates and updates >= r.max_updates)
            or (r.max_seconds and runlog.elapsed() >= r.max_seconds)
            or solved is not None
        )

    while not out_of_budget():
        now = time.monotonic()
        for key in [k for k, t in retry_at.items() if t <= now]:
            del retry_at[key]
            calls[key[0]](key[1])
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in ready:
            kind, i = pending.pop(ref)
            try:
                res = ray.get(ref)
            except RayActorError as e:
                # The actor died (or is still restarting): Ray restarts it from its
                # constructor arguments (a learner resumes from this run's newest
                # checkpoint); only its in-flight work is lost. Call it again shortly; a
                # failed evaluation waits for the next eval time. Give up on a rollout actor
                # that keeps dying (e.g. its constructor fails), and on a learner with no
                # restart left or unreachable for LEARNER_OUTAGE_S.
                who = {"actor": f"rollout actor {i}", "learner": "learner"}.get(
                    kind, "evaluation actor"
                )
                log.warning("%s unavailable (%s); Ray restarts it", who, type(e).__name__)
                if kind == "eval":
                    continue
                now = time.monotonic()
                if not isinstance(e, ActorUnavailableError):
                    deaths[kind, i] += 1
                    if deaths[kind, i] > death_limit[kind]:
                        raise
                if kind == "learner":
                    learner_down_since = learner_down_since or now
                    if now - learner_down_since > LEARNER_OUTAGE_S:
                        raise
                retry_at[kind, i] = now + retry_delay_s[kind]
                continue
            restarts.seen(kind, i, res["incarnation"])
            if kind == "actor":
                deaths.pop(("actor", i), None)
                env_steps += res["env_steps"]
                recent += res["returns"]
                collect(i)
            elif kind == "learner":
                learner_down_since = None
                updates += res["updates"]
                last_learner = res
                train()
            else:
                ev = float(np.mean(res["returns"])) if res["returns"] else float("nan")
                evals.append(
                    {
                        "time_s": runlog.elapsed(),
                        "env_steps": env_steps,
                        "updates": updates,
                        "return": ev,
                    }
                )
                metrics.set("amago_eval_return", ev)
                runlog.row(
                    env_steps=env_steps,
                    updates=updates,
                    eval_return=ev,
                    eval_success=float(np.mean(res["successes"])) if res["successes"] else None,
                )
                if r.stop_at_return is not None and ev >= r.stop_at_return:
                    solved = evals[-1]
        if runlog.elapsed() >= next_eval and not any(k == "eval" for k, _ in pending.values()):
            evaluate(r.eval_episodes)
            next_eval = runlog.elapsed() + r.eval_every_s
        if runlog.elapsed() >= next_log:
            metrics.set("amago_driver_actors_alive", len(actors))
            runlog.progress(
                env_steps,
                updates,
                recent[-200:],
                evals[-1]["return"] if evals else None,
                last_learner,
            )
            recent = recent[-50:]
            next_log = runlog.elapsed() + r.log_every_s
    train_time = runlog.elapsed()
    final, by_episode = None, None
    if r.final_eval_episodes:
        for attempt in range(5):  # an evaluator that died is being restarted: ask again
            try:
                res = ray.get(evaluator.evaluate.remote(r.final_eval_episodes))
                break
            except RayActorError:
                if attempt == 4:
                    raise
                time.sleep(2.0)
        restarts.seen("eval", 0, res["incarnation"])
        if res["returns"]:
            final = float(np.mean(res["returns"]))
            k = min(len(e) for e in res["episode_returns"])
            by_episode = np.mean([e[:k] for e in res["episode_returns"]], axis=0).tolist()
            runlog.row(env_steps=env_steps, updates=updates, eval_return=final, final=True)
            print(
                f"final greedy evaluation over {len(res['returns'])} rollouts: return {final:.3f}",
                flush=True,
            )
        else:  # every rollout hit the step cap (an env without a working time limit)
            log.warning("final evaluation finished no rollout within its step cap")
    return {
        "env_id": cfg.env.id,
        "env_steps": env_steps,
        "updates": updates,
        "train_seconds": train_time,
        "final_eval_return": final,
        "final_eval_success": float(np.mean(res["successes"])) if final is not None else None,
        "final_eval_by_episode": by_episode,  # mean return of the k-th episode of a rollout
        "evals": evals,
        "solved": solved,
        "actor_restarts": restarts.count,
        "learner_restarts": restarts.learner,
        "learner_resumed_from": last_learner.get("resumed_from"),
        "env_steps_per_s": env_steps / max(train_time, 1e-9),
        "updates_per_s": updates / max(train_time, 1e-9),
    }


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from deploy.config import register_schemas

    register_schemas()
    config_dir = str(Path(__file__).resolve().parent.parent / "configs")

    @hydra.main(config_path=config_dir, config_name="config", version_base="1.3")
    def _main(dcfg) -> None:
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

    _main()


if __name__ == "__main__":
    main()
