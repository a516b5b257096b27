"""Time to solve T-Maze (H=10) with the default settings, through the full distributed path.

    python -m benchmarks.time_to_solve [--repeats 3] [hydra overrides ...]

Runs `deploy.train.run_training` on the T-Maze experiment preset (configs/experiment/tmaze.yaml) with a
greedy evaluation every few seconds and stops at the first evaluation with mean return 1.0.
Prints wall-clock and env steps to solve, env steps/s, updates/s and the memory of each process
(rollout actor, learner, replay server), next to the original AMAGO code's figures on this
machine (24k env steps / 2k updates, ~237 s; 12 synchronous actors, batch 24, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

AMAGO_REFERENCE = {"seconds": 237.0, "env_steps": 24_000, "updates": 2_000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, +1, ...")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray

    from common.ray_utils import init_ray
    from deploy.config import compose
    from deploy.train import run_training

    t0 = time.perf_counter()
    init_ray(num_cpus=os.cpu_count())
    ray_start = time.perf_counter() - t0
    rows = []
    for rep in range(args.first_seed, args.first_seed + args.repeats):
        cfg = compose(
            [
                "experiment=tmaze",
                "run.stop_at_return=1.0",
                "run.eval_every_s=5",
                "run.eval_episodes=24",
                "run.max_env_steps=200000",
                "run.max_seconds=900",
                "run.final_eval_episodes=48",
                "run.plot=false",
                f"learner.seed={rep}",
                f"actors.seed={rep}",
                *args.overrides,
            ]
        )
        with tempfile.TemporaryDirectory() as tmp:
            s = run_training(cfg, tmp)
        solved = s["solved"]
        rows.append(
            {
                "seed": rep,
                "solved": solved is not None,
                # from the start of the run: actor/learner start-up included, Ray start added
                "seconds_to_solve": solved["time_s"] + ray_start if solved else None,
                "env_steps_to_solve": solved["env_steps"] if solved else None,
                "updates_to_solve": solved["updates"] if solved else None,
                "env_steps_per_s": s["env_steps_per_s"],
                "updates_per_s": s["updates_per_s"],
                "final_eval_return": s["final_eval_return"],
                "memory_mb": s["memory_mb"],
            }
        )
    ray.shutdown()

    print(
        f"\nT-Maze H=10 time to solve (return 1.0), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; wall s includes Ray start ({ray_start:.1f} s) and run start-up"
    )
    hdr = (
        f"{'seed':>4} {'solved':>6} {'wall s':>7} {'env steps':>9} "
        f"{'updates':>7} {'steps/s':>8} {'upd/s':>6} {'final':>6}"
    )
    print(hdr)
    for r in rows:
        f = lambda v, w, p=0: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        print(
            f"{r['seed']:>4} {str(r['solved']):>6} {f(r['seconds_to_solve'], 7, 1)} "
            f"{f(r['env_steps_to_solve'], 9)} "
            f"{f(r['updates_to_solve'], 7)} {r['env_steps_per_s']:>8.0f} "
            f"{r['updates_per_s']:>6.1f} {r['final_eval_return']:>6.3f}"
        )
    solved = [r for r in rows if r["solved"]]
    if solved:
        med = float(np.median([r["seconds_to_solve"] for r in solved]))
        ref = AMAGO_REFERENCE
        print(
            f"median wall-clock to solve (start-up included): {med:.1f} s vs original AMAGO ~"
            f"{ref['seconds']:.0f} s ({ref['seconds'] / med:.1f}x faster; goal >= 2x); "
            f"AMAGO needed {ref['env_steps']:,} env steps / {ref['updates']:,} updates"
        )
    mem = rows[-1]["memory_mb"]
    print(
        "memory (MiB): learner rss {:.0f} (peak {:.0f}); actors rss {}; replay server rss {:.0f}".format(
            mem["learner"]["rss_mb"],
            mem["learner"]["peak_rss_mb"],
            [round(a["rss_mb"]) for a in mem["actors"]],
            mem["replay_server"].get("rss_mb", float("nan")),
        )
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
