"""The run's driver loop: keeps every worker busy until a budget is reached or a stop is
asked, hands each finished call to the handler of its kind, runs the periodic jobs (greedy
evaluation rounds, the progress line), then ends training (final checkpoint, final
evaluation) and returns the summary's training part.

    driver = Driver(cfg, workers, Watches(stop, servers, stall), runlog, metrics, sup, fleet)
    summary = driver.run()

Handlers (one per report kind the :class:`~deploy.run.supervisor.Supervisor` returns):
``actor`` (counts steps and returns, asks for the next rollouts), ``learner`` (counts
updates, asks for the next call), ``eval`` (one task's evaluation; a round's row once every
task reported). Every run is a task list (``deploy/run/progress.py``): one evaluation actor per
task, evaluated in rounds, the final evaluation included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.reports import EvalReport
from deploy.config import TrainConfig
from deploy.run.fleet import Fleet
from deploy.run.progress import (
    RunProgress,
    eval_fields,
    eval_round,
    progress_line,
    run_summary,
    task_thresholds,
)
from deploy.run.replay_health import ServerWatch, StallWatch
from deploy.run.signals import StopRequest
from deploy.run.supervisor import EVAL_RULE, Done, Supervisor, learner_rule
from deploy.run.tracking import RunLog

log = logging.getLogger("amago")

#: Seconds the driver waits for a crashed learner to come back before failing the run.
LEARNER_OUTAGE_S = 300.0


@dataclass
class Watches:
    """What ends a run besides its budget: a signal, a replay server that cannot come back,
    no progress for ``run.stall_timeout_s``."""

    stop: StopRequest
    servers: ServerWatch
    stall: StallWatch
    stalled: bool = False

    @classmethod
    def for_run(cls, cfg: TrainConfig, servers: list, metrics, say) -> Watches:
        """The run's watches: embedded ``servers`` restarted when they die (each restart
        counted in ``amago_driver_replay_restarts`` and said), a stall after
        ``run.stall_timeout_s``, SIGINT / SIGTERM."""
        metrics.inc("amago_driver_replay_restarts", 0)  # exported from the start
        on_restart = lambda k: metrics.inc("amago_driver_replay_restarts", 1)  # noqa: E731
        watch = ServerWatch(servers, say=say, on_restart=on_restart)
        return cls(StopRequest(), watch, StallWatch(cfg.run.stall_timeout_s))

    def tripped(self, p: RunProgress) -> bool:
        self.servers.check()
        self.stalled = self.stall.stalled(p.env_steps, p.updates)
        return self.stop.requested or self.servers.fatal or self.stalled

    def reason(self) -> str | None:
        """The stop reason, if a watch ended the run."""
        if self.stop.requested:
            return self.stop.reason
        if self.servers.fatal:
            return "replay_server_lost"
        return "stalled" if self.stalled else None


@dataclass
class Periodic:
    """A job run every ``every_s`` seconds of the run clock; ``job`` returns False when it
    could not run yet (it is tried again at the next pass)."""

    every_s: float
    job: Callable[[], bool]
    next_s: float = 0.0

    def __post_init__(self) -> None:
        self.next_s = self.every_s if self.every_s > 0 else float("inf")

    def tick(self, now: float) -> None:
        if now >= self.next_s and self.job():
            self.next_s = now + self.every_s


class Driver:
    """One run's loop over its workers (see the module doc)."""

    def __init__(
        self,
        cfg: TrainConfig,
        w,
        watches: Watches,
        runlog: RunLog,
        metrics,
        sup: Supervisor,
        fleet: Fleet,
    ):
        self.cfg, self.w, self.watches, self.runlog = cfg, w, watches, runlog
        self.metrics, self.sup, self.fleet = metrics, sup, fleet
        self.p = RunProgress(tasks=list(w.tasks), thresholds=task_thresholds(cfg))
        self.handlers: dict[str, Callable[[Done], None]] = {
            "actor": self.on_actor,
            "learner": self.on_learner,
            "eval": self.on_eval,
        }
        r = cfg.run
        self.periodic = [Periodic(r.eval_every_s, self.evaluate), Periodic(r.log_every_s, self.log)]
        self._last = (runlog.t0, 0, 0)  # (monotonic time, env steps, updates) of the last row

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until a budget, a solve or a watch ends the run; then :meth:`finish`."""
        self.start()
        r, p = self.cfg.run, self.p
        while not p.out_of_budget(r, self.runlog.elapsed()) and not self.watches.tripped(p):
            for done in self.sup.poll(timeout_s=0.5):
                self.handlers[done.kind](done)
            self.fleet.step()
            now = self.runlog.elapsed()
            for job in self.periodic:
                job.tick(now)
        return self.finish()

    def start(self) -> None:
        """Register the learner and evaluation actors (the rollout actors are the fleet's)
        and start every worker's first call."""
        w, r = self.w, self.cfg.run
        rule = learner_rule(self.cfg.learner.worker.max_restarts, LEARNER_OUTAGE_S)
        self.sup.add("learner", 0, lambda: w.learner.train.remote(r.updates_per_call, 10.0), rule)
        for k, ev in enumerate(w.evaluators):
            self.sup.add("eval", k, lambda a=ev: a.evaluate.remote(r.eval_episodes), EVAL_RULE)
        self.p.workers_ready_s = self.runlog.elapsed()
        self.sup.call_all("actor")
        self.sup.call("learner")

    # -- handlers ------------------------------------------------------------------------------
    def on_actor(self, done: Done) -> None:
        self.p.on_actor(done.report)
        self.fleet.on_report(done.index, done.report)
        self.sup.call("actor", done.index)  # (not for an actor leaving the fleet)

    def on_learner(self, done: Done) -> None:
        self.p.on_learner(done.report, self.runlog.elapsed())
        self.sup.call("learner")

    def on_eval(self, done: Done) -> None:
        rep: EvalReport = done.report
        self.metrics.set("amago_eval_return", _nan(rep.mean_return()), task=rep.task)
        row = self.p.on_eval(rep, self.runlog.elapsed())
        if row is not None:
            self.runlog.row(**eval_fields(row))

    # -- periodic jobs -------------------------------------------------------------------------
    def evaluate(self) -> bool:
        """Start an evaluation round, unless the last one is still running."""
        if any(self.sup.busy("eval", k) for k in range(len(self.w.evaluators))):
            return False
        self.p.start_round()
        self.sup.call_all("eval")
        return True

    def log(self) -> bool:
        """The progress row and console line, and the driver's rate gauges."""
        now, p = time.monotonic(), self.p
        t_prev, s_prev, u_prev = self._last
        dt = max(now - t_prev, 1e-9)
        sps, ups = (p.env_steps - s_prev) / dt, (p.updates - u_prev) / dt
        self._last = (now, p.env_steps, p.updates)
        self.metrics.set("amago_driver_env_steps_per_second", sps)
        self.metrics.set("amago_driver_updates_per_second", ups)
        p.actors_alive, p.actors_desired = self.fleet.alive(), self.fleet.desired
        line = progress_line(p, self.runlog.elapsed(), sps, ups, self.cfg.run)
        self.runlog.row(**line.fields)
        self.runlog.say(line.text)
        return True

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> dict:
        """The final checkpoint, then (unless a watch ended the run) the final evaluation of
        exactly its weights; the summary's training part."""
        r, p = self.cfg.run, self.p
        train_time = self.runlog.elapsed()
        out = finish_learner(self.w)
        out["stop_reason"] = self.watches.reason() or p.stop_reason(r, train_time)
        if self.watches.stalled:
            self.runlog.say(
                f"error: no env step and no update for run.stall_timeout_s="
                f"{r.stall_timeout_s:g} s: stopping the run"
            )
        episodes = 0 if self.watches.reason() else r.final_eval_episodes
        final = self.final_evaluation(episodes)
        summary = run_summary(self.cfg, p, self.sup.restarts, final, train_time)
        if p.named_tasks:
            summary.update(tasks=list(p.tasks), actor_tasks=list(self.w.actor_tasks))
        return {**summary, **out}

    def final_evaluation(self, episodes: int) -> dict[str, EvalReport]:
        """Every task's evaluation actor at once (one asked again while Ray restarts it);
        the row and console line. {} without episodes."""
        if not episodes:
            return {}
        calls = [_first_then_again(e, episodes) for e in self.w.evaluators]
        final = {
            t: self.sup.call_blocking("eval", k, call=call)
            for k, (t, call) in enumerate(zip(self.p.tasks, calls))
        }
        fig = eval_round(final, self.p.named_tasks)
        if fig["return"] != fig["return"]:  # NaN: every rollout hit the step cap
            log.warning("final evaluation finished no rollout within its step cap")
            return final
        row = {"env_steps": self.p.env_steps, "updates": self.p.updates, **fig}
        self.runlog.row(**eval_fields(row), final=True)
        per = ", ".join(f"{t} {v:.3f}" for t, v in fig.get("by_task", {}).items())
        self.runlog.say(
            f"final {'sampled' if self.cfg.run.eval_sample else 'greedy'} evaluation over "
            f"{sum(len(x.returns) for x in final.values())} rollouts: return "
            f"{fig['return']:.3f}" + (f" (per task: {per})" if per else "")
        )
        return final


def _first_then_again(evaluator, episodes: int) -> Callable[[], object]:
    """A call started now, then started again each time it is asked anew (the evaluations
    of every task run at once; a restarted actor is asked again)."""
    first = [evaluator.evaluate.remote(episodes)]
    return lambda: first.pop() if first else evaluator.evaluate.remote(episodes)


def finish_learner(w) -> dict:
    """Ends training: the learner (its queued ``train`` calls done first) publishes its last
    version and writes the final checkpoint, so the final evaluation, which refreshes the
    weights, scores the checkpoint that export and evaluate later read."""
    import ray

    path = ray.get(w.learner.close.remote())
    return {"final_checkpoint": path, "final_version": ray.get(w.learner.version.remote())}


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


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


def end_of_run(cfg: TrainConfig, w, fleet: Fleet, addresses: list[str], runlog: RunLog) -> dict:
    """After the loop: the rollout actors told to stop (unblocks collects held by
    backpressure), a last scrape of every metrics endpoint (``deploy.dump_final_metrics``),
    every process's memory and the learning curve (``run.plot``)."""
    import ray

    from deploy.run.endpoint import server_memory_mb

    run_dir = runlog.run_dir
    actors = fleet.handles()
    _answers([a.stop.remote() for a in actors])
    out: dict = {}
    if cfg.deploy.dump_final_metrics and addresses:
        from deploy.run.scrape import FINAL_DUMP, scrape_all, write_dump

        out["metrics_dump"] = str(write_dump(run_dir / FINAL_DUMP, scrape_all(addresses)))
    out["memory_mb"] = {
        "learner": ray.get(w.learner.memory_mb.remote()),
        "actors": _answers([a.memory_mb.remote() for a in actors]),
        "replay_server": server_memory_mb(cfg),
    }
    if cfg.run.plot:
        from deploy.run.plots import plot_learning_curve

        title = f"{cfg.run.name}: {cfg.env.id}"
        out["plot"] = str(plot_learning_curve(runlog.path, run_dir / "learning_curve.png", title))
    return out
