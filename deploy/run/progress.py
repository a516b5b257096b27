"""What the driver knows of a run, and what it makes of it: the console's progress line,
the evaluation rows of ``metrics.jsonl`` and ``summary.json``.

Every run is a list of tasks: a single-task run's one task is unnamed (``""``), a multi-task
run's (``env.tasks``) are named. Evaluations come in rounds (one evaluation actor per task);
a round's figure is the mean over tasks, each counted once, and per-task breakdowns (console,
rows, summary) list the named tasks only.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from common.reports import ActorReport, EvalReport, LearnerReport

#: The one task of a single-task run.
SINGLE_TASK = [""]


@dataclass
class RunProgress:
    """The run so far, updated from the workers' reports.

    The run is solved at the first evaluation round where every task with a threshold
    (``thresholds``: its ``stop_at_return``, else ``run.stop_at_return``) reached it.
    """

    env_steps: int = 0
    updates: int = 0
    recent: list[float] = field(default_factory=list)  # returns of recent exploring rollouts
    evals: list[dict] = field(default_factory=list)  # periodic greedy evaluation rounds
    solved: dict | None = None  # the first round that reached every threshold
    last_learner: LearnerReport | None = None
    # updates a crashed learner made after its last checkpoint (redone by its successor), and
    # each restart: where it resumed and what it discarded
    discarded_updates: int = 0
    learner_resumes: list[dict] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: list(SINGLE_TASK))
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
    actors_alive: int = 0  # the elastic fleet (deploy/run/fleet.py), as of the last console row
    actors_desired: int = 0

    @property
    def named_tasks(self) -> list[str]:
        """The tasks that get a breakdown of their own ([] for a single-task run)."""
        return [t for t in self.tasks if t]

    def on_actor(self, r: ActorReport) -> None:
        self.env_steps += r.env_steps
        self._recent_lags += r.policy_lags
        for lag in r.policy_lags:
            self.lag_counts[lag] = self.lag_counts.get(lag, 0) + 1
        self.recent = (self.recent + r.returns)[-200:]
        if r.task:
            mine = self.recent_by_task.get(r.task, [])
            self.recent_by_task[r.task] = (mine + r.returns)[-200:]

    def on_learner(self, r: LearnerReport, time_s: float) -> None:
        prev = self.last_learner
        if prev is not None and r.incarnation != prev.incarnation:  # a restarted learner
            resumed_at = r.version - r.updates  # the version of the checkpoint it resumed
            lost = max(0, prev.version - resumed_at)
            self.discarded_updates += lost
            self.learner_resumes.append(
                {"resumed_from": r.resumed_from, "version": resumed_at, "discarded_updates": lost}
            )
        if self.first_update_s is None and r.updates:
            self.first_update_s = time_s
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

    def start_round(self) -> None:
        """A new evaluation round: what the previous one missed is void."""
        self._round = {}

    def on_eval(self, r: EvalReport, time_s: float) -> dict | None:
        """One task's evaluation; the round's row (:func:`eval_round`) once every task
        reported, also appended to ``evals`` (and ``solved`` if it reached the thresholds)."""
        self._round[r.task] = r
        if set(self._round) != set(self.tasks):
            return None
        row = {
            "time_s": time_s,
            "env_steps": self.env_steps,
            "updates": self.updates,
            **eval_round(self._round, self.named_tasks),
        }
        self._round = {}
        self.evals.append(row)
        by_task = {t: self._round_return(row, t) for t in self.thresholds}
        reached = [
            by_task[t] is not None and by_task[t] >= thr for t, thr in self.thresholds.items()
        ]
        if reached and all(reached) and self.solved is None:
            self.solved = row
        return row

    @staticmethod
    def _round_return(row: dict, task: str) -> float | None:
        v = row["by_task"][task] if task else row["return"]
        return None if np.isnan(v) else v

    def stop_reason(self, r, elapsed_s: float) -> str | None:
        """Which budget of ``r`` (``RunConfig``) ended the run (``max_env_steps``,
        ``max_updates``, ``max_seconds``), ``solved``, ``no_update`` (nothing trained within
        ``max_startup_s``), or None while none has."""
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

    def out_of_budget(self, r, elapsed_s: float) -> bool:
        return self.stop_reason(r, elapsed_s) is not None


def task_mean(values: Iterable[float | None]) -> float:
    """Mean over tasks (each task counts once, whatever its number of rollouts)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def eval_round(reports: Mapping[str, EvalReport], named: list[str]) -> dict:
    """An evaluation round's figures: ``return`` (the mean over tasks, NaN if none finished a
    rollout), ``success`` (the mean of the tasks' success rates; None if one has none) and,
    for ``named`` tasks, ``by_task`` / ``success_by_task``."""
    succ = [rep.success_rate() for rep in reports.values()]
    out = {
        "return": task_mean(rep.mean_return() for rep in reports.values()),
        "success": None if None in succ or not succ else float(np.mean(succ)),
    }
    if named:
        out["by_task"] = {t: _nan(reports[t].mean_return()) for t in named}
        out["success_by_task"] = {t: reports[t].success_rate() for t in named}
    return out


def eval_fields(row: dict) -> dict:
    """The ``metrics.jsonl`` fields of an evaluation round: ``eval_return``,
    ``eval_success`` and for named tasks ``eval_return/<task>``, ``eval_success/<task>``."""
    out = {k: row[k] for k in ("env_steps", "updates")}
    out.update(eval_return=row["return"], eval_success=row["success"])
    for t, v in row.get("by_task", {}).items():
        out[f"eval_return/{t}"] = v
        out[f"eval_success/{t}"] = row["success_by_task"][t]
    return out


def task_thresholds(cfg) -> dict[str, float]:
    """Each task's stop return (its own, else ``run.stop_at_return``); tasks without one are
    left out."""
    out = {}
    for t in cfg.env.task_list():
        thr = t.stop_at_return if t.stop_at_return is not None else cfg.run.stop_at_return
        if thr is not None:
            out[t.name] = float(thr)
    return out


@dataclass
class ProgressLine:
    """One progress report: the ``metrics.jsonl`` row's fields and the console line."""

    fields: dict
    text: str


def progress_line(
    p: RunProgress, elapsed_s: float, sps: float, ups: float, budget=None
) -> ProgressLine:
    """The periodic progress report: the learner's latest loss means, then the driver's
    figures (steps, updates, their rates, recent return, replay size, data age, actor lag,
    the fleet; per named task the recent return). ``budget``: ``RunConfig`` for the
    console's share-of-budget and ETA figure."""
    ret = float(np.mean(p.recent)) if p.recent else None
    by_task = {t: p.recent_by_task.get(t) for t in p.named_tasks}
    by_task = {t: float(np.mean(v)) if v else None for t, v in by_task.items()}
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
        actors_alive=p.actors_alive,
        actors_desired=p.actors_desired,
    )
    named.update({f"return_mean/{t}": v for t, v in by_task.items()})
    fmt = lambda v: "   -" if v is None else f"{v:6.3f}"  # noqa: E731
    tasks = ""
    if by_task:  # recent return per task, then the last evaluation's
        last = p.evals[-1].get("by_task", {}) if p.evals else {}
        tasks = " | " + " ".join(
            f"{t} {fmt(v).strip()}/{fmt(last.get(t)).strip()}" for t, v in by_task.items()
        )
    text = (
        f"[{elapsed_s:7.1f}s] steps {p.env_steps:>9,d} ({sps:6.0f}/s) | "
        f"updates {p.updates:>7,d} ({ups:5.1f}/s) | return {fmt(ret)} | "
        f"eval {fmt(p.evals[-1]['return'] if p.evals else None)} | "
        f"replay {stored or 0:>9,} steps | data age {age or 0.0:6.1f} | "
        f"actor lag {actor_lag or 0.0:5.1f} | actors {p.actors_alive}/{p.actors_desired}"
        f"{tasks}{budget_left(p, elapsed_s, budget)}"
    )
    return ProgressLine({**(lr.losses if lr else {}), **named}, text)


def budget_left(p: RunProgress, elapsed_s: float, r) -> str:
    """`` | budget 43% ETA 1m12s``: the share used of the budget nearest its end and the
    time left at the recent pace (a run may stop sooner: stop_at_return)."""
    if r is None:
        return ""
    used = [u / getattr(r, k) for k, u in p.budget_used(elapsed_s) if getattr(r, k)]
    if not used:
        return ""
    f = min(max(used), 1.0)
    if f <= 0 or p.first_update_s is None:
        return " | budget   0% (starting)"
    trained = elapsed_s - p.first_update_s
    eta = trained * (1 - f) / f
    return f" | budget {100 * f:3.0f}% ETA {int(eta) // 60}m{int(eta) % 60:02d}s"


def merge_reports(reports: Iterable[EvalReport]) -> EvalReport:
    """One report of every task's rollouts (its version: the newest)."""
    reps = list(reports)
    return EvalReport(
        incarnation="",
        policy_version=max(x.policy_version for x in reps),
        returns=[v for x in reps for v in x.returns],
        successes=[v for x in reps for v in x.successes],
        lengths=[v for x in reps for v in x.lengths],
        episode_returns=[v for x in reps for v in x.episode_returns],
    )


def final_fields(reports: Mapping[str, EvalReport], named: list[str]) -> dict:
    """summary.json's final evaluation: the return (mean over tasks), success, the k-th inner
    episode's mean and the version evaluated (None each when no rollout finished), and for
    named tasks each task's own."""
    figures = eval_round(reports, named) if reports else {"return": float("nan")}
    done = not np.isnan(figures["return"])
    merged = merge_reports(reports.values()) if done else None
    out = {
        "final_eval_return": figures["return"] if done else None,
        "final_eval_success": figures["success"] if done else None,
        "final_eval_by_episode": merged.by_episode() if merged else None,  # k-th episode's mean
        "final_eval_version": merged.policy_version if merged else None,  # = final_version
    }
    if named:
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


def run_summary(
    cfg, p: RunProgress, restarts: Mapping[str, int], final: Mapping[str, EvalReport], secs: float
) -> dict:
    """summary.json's training part; ``final``: the final evaluation's report per task ({}
    without one), ``restarts``: the supervisor's count per worker kind."""
    return {
        "env_id": cfg.env.id,
        "env_steps": p.env_steps,
        # updates behind the final weights; those a crashed learner made after its last
        # checkpoint are listed apart (the budget counted them: they were computed)
        "updates": p.updates - p.discarded_updates,
        "updates_discarded": p.discarded_updates,
        "learner_resumes": p.learner_resumes,
        "train_seconds": secs,
        **final_fields(final, p.named_tasks),
        "evals": p.evals,
        "solved": p.solved,
        "actor_restarts": restarts["actor"] + restarts["eval"],
        "learner_restarts": restarts["learner"],
        "learner_resumed_from": p.last_learner.resumed_from if p.last_learner else None,
        "env_steps_per_s": p.env_steps / max(secs, 1e-9),
        "updates_per_s": p.updates / max(secs, 1e-9),
        "workers_ready_s": p.workers_ready_s,
        "first_update_s": p.first_update_s,  # the first train call that updated, returned
        # of the learner's time in train calls, the part spent waiting for a batch (rate
        # limiter, empty replay, sampling slower than updates): 0 = never starved
        "learner_wait_fraction": (
            p.learner_wait_s / p.learner_seconds if p.learner_seconds else None
        ),
        **p.lag_summary(),
        "replay_final": replay_brief(p.last_learner.replay if p.last_learner else None),
    }


def replay_brief(stats) -> dict | None:
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


def no_update_reason(summary: dict, cfg) -> str | None:
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


def exit_code(summary: dict, cfg) -> tuple[int, str | None]:
    """The entrypoint's exit status for a finished run, and what to print on stderr: 0 for a
    run that trained to its end; 128 + the signal that stopped it (130 / 143); 1 for a lost
    replay server or a stall (said on the console already) or a run without an update."""
    reason = str(summary.get("stop_reason"))
    if reason.startswith("signal:"):
        name = reason.split(":", 1)[1]
        return 128 + signal.Signals[name].value, f"stopped by {name}"
    if reason in ("replay_server_lost", "stalled"):
        return 1, None
    why = no_update_reason(summary, cfg)  # a run that did not train is not a success
    return (1, f"error: {why}") if why else (0, None)
