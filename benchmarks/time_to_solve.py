"""Time to solve, through the full distributed path: T-Maze H=10 and POPGym RepeatPreviousEasy.

    python -m benchmarks.time_to_solve [--tasks tmaze popgym] [--repeats 4] [--first-seed 0]
        [--json FILE] [hydra overrides ...]

Each repeat is one `deploy.train.run_training` (Ray rollout actors, embedded Valkey, learner
actor) with a greedy evaluation every few seconds, stopped at the first evaluation at the
task's target. Tasks:

- ``tmaze``: the T-Maze experiment preset (``experiment=tmaze``: what ``make run`` trains),
  target return 1.0;
- ``popgym``: ``env=popgym env.id=popgym-RepeatPreviousEasy-v0`` and nothing else (the
  generic defaults, the window derived from the episode), target 0.99.

Wall-clock is counted from process start: Ray's start (paid once per process, added to every
seed) plus the run's own clock (from the call of ``run_training``: config checks and the
embedded Valkey's start are on it). Start-up is shown apart: Ray start, then the run's time until
every worker was built (``workers_ready_s``) and until the first learner update came back
(``first_update_s``). Also printed: env steps and updates to solve, env steps/s, updates/s,
the part of the learner's time it waited for a batch, and each process's memory; the median
and range over seeds next to the original AMAGO code's figures on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    overrides: tuple[str, ...]
    target: float
    reference: str  # the original AMAGO code on this machine


TASKS = {
    "tmaze": Task(
        "T-Maze H=10",
        ("experiment=tmaze",),
        1.0,
        "original AMAGO ~237 s (24,000 env steps, 2,000 updates; 12 actors, batch 24, 1 thread)",
    ),
    "popgym": Task(
        "POPGym RepeatPreviousEasy",
        ("env=popgym", "env.id=popgym-RepeatPreviousEasy-v0"),
        0.99,
        "original AMAGO 336-461 s to greedy 0.99 (~1,000-1,300 updates)",
    ),
}


def run_seed(task: Task, seed: int, overrides: list[str], ray_start: float) -> dict:
    from deploy.config import compose
    from deploy.train import run_training

    cfg = compose(
        [
            *task.overrides,
            f"run.stop_at_return={task.target}",
            "run.eval_every_s=5",
            "run.eval_episodes=24",
            "run.max_env_steps=200000",
            "run.max_seconds=900",
            "run.final_eval_episodes=48",
            "run.plot=false",
            f"learner.seed={seed}",
            f"actors.seed={seed}",
            *overrides,
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        s = run_training(cfg, tmp)
    solved = s["solved"]
    return {
        "seed": seed,
        "solved": solved is not None,
        # from process start: Ray start added to the run's clock (worker start-up included)
        "seconds_to_solve": solved["time_s"] + ray_start if solved else None,
        "env_steps_to_solve": solved["env_steps"] if solved else None,
        "updates_to_solve": solved["updates"] if solved else None,
        "workers_ready_s": s["workers_ready_s"],
        "first_update_s": s["first_update_s"],
        "learner_wait_fraction": s["learner_wait_fraction"],
        "env_steps_per_s": s["env_steps_per_s"],
        "updates_per_s": s["updates_per_s"],
        "final_eval_return": s["final_eval_return"],
        "memory_mb": s["memory_mb"],
    }


def _f(v, width: int, places: int = 0) -> str:
    return f"{v:>{width}.{places}f}" if v is not None else f"{'-':>{width}}"


def order_stat(values: list[float], q: float) -> float:
    """The ``q`` quantile as an order statistic (the value at rank ceil(q n)): a seed that
    never solved counts as infinite time, so p90 is infinite when more than 10 % fail."""
    ranked = sorted(values)
    return ranked[max(math.ceil(q * len(ranked)) - 1, 0)]


def report(task: Task, rows: list[dict], ray_start: float) -> None:
    print(
        f"\n{task.name}: time to solve (greedy >= {task.target}), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; wall s from "
        f"process start = Ray start ({ray_start:.1f} s) + the run's clock"
    )
    print(
        f"{'seed':>4} {'solved':>6} {'wall s':>7} {'ready s':>7} {'1st upd':>7} "
        f"{'env steps':>9} {'updates':>7} {'steps/s':>8} {'upd/s':>6} {'wait':>5} {'final':>6}"
    )
    for r in rows:
        print(
            f"{r['seed']:>4} {str(r['solved']):>6} {_f(r['seconds_to_solve'], 7, 1)} "
            f"{_f(r['workers_ready_s'], 7, 1)} {_f(r['first_update_s'], 7, 1)} "
            f"{_f(r['env_steps_to_solve'], 9)} {_f(r['updates_to_solve'], 7)} "
            f"{r['env_steps_per_s']:>8.0f} {r['updates_per_s']:>6.1f} "
            f"{_f(r['learner_wait_fraction'], 5, 2)} {_f(r['final_eval_return'], 6, 3)}"
        )
    solved = [r for r in rows if r["solved"]]
    print(f"solved {len(solved)} / {len(rows)}")
    if solved:
        secs = [r["seconds_to_solve"] for r in solved]
        steps = [r["env_steps_to_solve"] for r in solved]
        upd = [r["updates_to_solve"] for r in solved]
        print(
            f"median {np.median(secs):.1f} s (range {min(secs):.1f}-{max(secs):.1f}), "
            f"{np.median(steps):,.0f} env steps, {np.median(upd):,.0f} updates; {task.reference}"
        )
        every = [r["seconds_to_solve"] if r["solved"] else math.inf for r in rows]
        p50, p90 = order_stat(every, 0.5), order_stat(every, 0.9)
        ratio = "-" if math.isinf(p90) else f"{p90 / p50:.2f}"
        print(
            f"over all {len(rows)} seeds (unsolved = never): p50 {p50:.1f} s, p90 {p90:.1f} s, p90/p50 {ratio}"
        )
    mem = rows[-1]["memory_mb"]
    print(
        "memory (MiB): learner rss {:.0f} (peak {:.0f}), its sampler process {:.0f}; actors rss {}; "
        "replay server rss {:.0f}".format(
            mem["learner"]["rss_mb"],
            mem["learner"]["peak_rss_mb"],
            mem["learner"].get("sampler_rss_mb", 0.0),
            [round(a["rss_mb"]) for a in mem["actors"]],
            mem["replay_server"].get("rss_mb", float("nan")),
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["tmaze"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, +1, ...")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray

    from common.ray_utils import init_ray

    t0 = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())
    ray_start = time.perf_counter() - t0
    results = {}
    seeds = range(args.first_seed, args.first_seed + args.repeats)
    for name in args.tasks:
        results[name] = [run_seed(TASKS[name], s, args.overrides, ray_start) for s in seeds]
    ray.shutdown()
    for name in args.tasks:
        report(TASKS[name], results[name], ray_start)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ray_start_s": ray_start, **results}, fh, indent=1)


if __name__ == "__main__":
    main()
