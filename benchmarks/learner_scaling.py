"""Data-parallel learner scaling: sequence-timesteps per second of the whole learner for
``learner.num_learners`` = 1, 2, ... through the real Ray path (``LearnerActor`` for one,
``learner.group.LearnerGroup`` of gloo/NCCL ranks for more), each rank sampling its own
synthetic batches (``learner.synthetic.SyntheticSampler``: no replay service, so the figure is
the learner's, not the sampler's).

Timed: ``--calls`` calls of ``train(--updates)`` after one warm-up call. seq-timesteps/s
counts every rank's windows (``LearnerReport.seq_timesteps``: batch x length x ranks per
update); updates/s are group updates (each one sees ``num_learners x batch`` windows).

    python -m benchmarks.learner_scaling                         # CPU, N = 1, 2
    python -m benchmarks.learner_scaling --device cuda --num-learners 1 2 4 --length 256

On a CPU machine every rank gets ``--threads`` torch threads: with fewer cores than ranks x
threads the ranks share cores and N > 1 cannot be faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
import time

from common.spec import ArraySpec, EnvSpec
from deploy.run.builder import make_learner
from learner.config import LearnerConfig
from learner.synthetic import synthetic_sampler, tiny_model
from learner.worker import LearnerActor, LearnerSetup
from learner.worker_config import LearnerWorkerConfig

SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 4, True, 1024)


def make_cfg(args: argparse.Namespace, n: int) -> LearnerConfig:
    return LearnerConfig(
        model=tiny_model(args.width, dropout=0.0),
        batch_size=args.batch,
        max_seq_len=args.length,
        device=args.device,
        num_threads=args.threads,
        num_learners=n,
        worker=LearnerWorkerConfig(num_cpus=0, publish_every=10_000, max_restarts=0),
    )


def start(cfg: LearnerConfig, args: argparse.Namespace, run_dir: str, broker):
    """``(learner handle, things to release)`` for ``cfg.num_learners`` ranks."""
    import ray

    from learner.group import start_group

    gpus = 1 if args.device == "cuda" else 0
    setups = [
        LearnerSetup(
            spec=SPEC,
            learner=cfg,
            make_sampler=functools.partial(synthetic_sampler, SPEC, args.length, r),
            make_learner=make_learner,
            run_dir=run_dir,
            serve_metrics=False,
        )
        for r in range(cfg.num_learners)
    ]
    if cfg.num_learners == 1:  # today's path: one actor, no process group
        h = ray.remote(LearnerActor).options(num_cpus=0, num_gpus=gpus).remote(setups[0], broker)
        return h, [h]
    group, pg = start_group(setups, broker, 0, gpus)
    return group, [pg, group]


def measure(n: int, args: argparse.Namespace, broker) -> dict:
    import ray

    from learner.group import release

    with tempfile.TemporaryDirectory() as run_dir:
        learner, handles = start(make_cfg(args, n), args, run_dir, broker)
        try:
            ray.get(learner.train.remote(args.updates, 600.0))  # warm-up
            t0 = time.perf_counter()
            reports = [
                ray.get(learner.train.remote(args.updates, 600.0)) for _ in range(args.calls)
            ]
            secs = time.perf_counter() - t0
        finally:
            for h in handles:
                release(h)
    updates = sum(r.updates for r in reports)
    steps = sum(r.seq_timesteps for r in reports)
    return {"n": n, "updates_s": updates / secs, "steps_s": steps / secs, "secs": secs}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--num-learners", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=24, help="windows per rank per update")
    ap.add_argument("--length", type=int, default=32, help="timesteps per window")
    ap.add_argument("--width", type=int, default=64, help="d_model of the tiny model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--updates", type=int, default=20, help="updates per train call")
    ap.add_argument("--calls", type=int, default=3, help="timed train calls")
    args = ap.parse_args()

    import ray

    from common.ray_utils import init_ray
    from common.weights import WeightBroker

    init_ray(num_cpus=os.cpu_count(), num_gpus=None)
    broker = ray.remote(WeightBroker).options(num_cpus=0).remote()
    cfg = dataclasses.asdict(make_cfg(args, 1).model)
    print(
        f"device={args.device} cores={os.cpu_count()} batch/rank={args.batch} "
        f"length={args.length} d_model={cfg['d_model']} threads/rank={args.threads}"
    )
    print(f"{'N':>3} {'updates/s':>10} {'seq-timesteps/s':>16} {'vs N=1':>7}")
    base = None
    for n in args.num_learners:
        row = measure(n, args, broker)
        base = base or row["steps_s"]
        print(
            f"{n:>3} {row['updates_s']:>10.2f} {row['steps_s']:>16,.0f} "
            f"{row['steps_s'] / base:>6.2f}x",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
