"""POPGym memory tasks with the generic defaults: return reached within a stated budget.

    python -m benchmarks.popgym_suite [--tasks RepeatPreviousEasy ...] [--max-seconds 240]
        [--max-env-steps 100000] [--memoryless] [hydra overrides ...]

Each task trains through the full distributed path (``deploy.train.run_training``: Ray rollout
actors, embedded Valkey, learner actor) with nothing but ``env=popgym env.id=popgym-<task>-v0``
and the budget: no task preset, the window derived from the episode length. Printed per task:
the final greedy evaluation (50 rollouts), the best periodic greedy evaluation and when it was
reached, wall-clock (from the run's start, start-up included), env steps and updates; next to a
uniformly random policy's return (measured here on 200 episodes) and, with ``--memoryless``, the
same run with the memoryless MLP encoder (``learner.model.encoder=mlp``): the bar a policy
without memory reaches through the same path and budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

TASKS = ("RepeatPreviousEasy", "RepeatFirstEasy", "CountRecallEasy", "PositionOnlyCartPoleEasy")


def random_return(env_id: str, episodes: int = 200) -> float:
    """Mean return of uniformly random actions on the standardised env."""
    from common.envs.config import EnvConfig
    from common.envs.factory import make_env

    env = make_env(EnvConfig(id=env_id), seed=0)
    env.action_space.seed(0)
    total = []
    for _ in range(episodes):
        env.reset()
        ret, done = 0.0, False
        while not done:
            a = env.action_space.sample()
            _, r, term, trunc, _ = env.step(a)
            ret, done = ret + float(r), term or trunc
        total.append(ret)
    env.close()
    return float(np.mean(total))


def train(env_id: str, args, extra: list[str]) -> dict:
    from deploy.config import compose
    from deploy.train import run_training

    cfg = compose(
        [
            "env=popgym",
            f"env.id={env_id}",
            f"run.max_env_steps={args.max_env_steps}",
            f"run.max_seconds={args.max_seconds}",
            "run.plot=false",
            "deploy.serve_metrics=false",
            *extra,
            *args.overrides,
        ]
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        s = run_training(cfg, tmp)
    evals = s["evals"] or [{"return": float("nan"), "time_s": float("nan"), "env_steps": 0}]
    best = max(evals, key=lambda e: e["return"])
    return {
        "final": s["final_eval_return"],
        "best": best["return"],
        "best_at_s": best["time_s"],
        "best_at_steps": best["env_steps"],
        "wall_s": time.perf_counter() - t0,
        "env_steps": s["env_steps"],
        "updates": s["updates"],
        "window": cfg.learner.max_seq_len,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="POPGym task names")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="budget per run")
    ap.add_argument("--max-env-steps", type=int, default=100_000, help="budget per run")
    ap.add_argument("--memoryless", action="store_true", help="also train the MLP encoder")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray

    from common.ray_utils import init_ray

    init_ray(num_cpus=os.cpu_count())
    rows = []
    for task in args.tasks:
        env_id = f"popgym-{task}-v0"
        row = {"task": task, "random": random_return(env_id), **train(env_id, args, [])}
        if args.memoryless:
            row["memoryless"] = train(env_id, args, ["learner.model.encoder=mlp"])["final"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    ray.shutdown()

    print(
        f"\nPOPGym, generic defaults, budget {args.max_env_steps:,} env steps or "
        f"{args.max_seconds:.0f} s per run; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores"
    )
    print(
        "| task | window | final greedy | best greedy (at s / env steps) | random | memoryless "
        "(MLP, same budget) | wall s | env steps | updates |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mem = f"{r['memoryless']:.3f}" if "memoryless" in r else "-"
        print(
            f"| {r['task']} | {r['window']} | {r['final']:.3f} | {r['best']:.3f} "
            f"({r['best_at_s']:.0f} s / {r['best_at_steps']:,}) | {r['random']:.3f} | {mem} | "
            f"{r['wall_s']:.0f} | {r['env_steps']:,} | {r['updates']:,} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
