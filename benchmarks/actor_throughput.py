"""Rollout actor throughput and KV-cached inference cost.

    python -m benchmarks.actor_throughput [--tasks tmaze popgym] [--actors 1 2 4]
        [--envs-per-actor 8 16 32] [--seconds 20] [--contexts 64 256 1024 2048]
        [--skip-actors] [--skip-context]

1. **Env steps/s vs number of actors and envs per actor** — real Ray rollout actors writing
   whole episodes to an embedded Valkey replay service, weights from the broker; no learner
   competes for the cores. Tasks: ``tmaze`` (``experiment=tmaze``: T-Maze H=10 and its
   Transformer, what ``make run`` trains) and ``popgym`` (``env=popgym
   env.id=popgym-RepeatPreviousEasy-v0``: the generic defaults' model, window 52). Every
   combination of ``--actors`` x ``--envs-per-actor`` is measured; one actor is one process
   on one core (1 torch thread), so its row is env steps/s per core. Also reports each
   actor's resident memory after a warm-up and at the end (it must not grow with run length)
   and the replay server's memory.
2. **Per-step inference cost vs context length** — the AMAGO default Transformer (d_model 256,
   3 layers, 8 heads), 8 env slots, every slot past L timesteps: one ``act`` step with the
   sliding-window KV cache (``window="sliding"``, AMAGO's O(1) banded cache), one with the
   default ``window="exact"`` (a fresh forward over the last L timesteps, as in training:
   re-encodes the slot's stored encoder inputs), and a bare re-encode of the last L
   timesteps through ``PolicyNet.encode`` (what acting costs without a cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np

TASKS = {
    "tmaze": ("experiment=tmaze",),
    "popgym": ("env=popgym", "env.id=popgym-RepeatPreviousEasy-v0"),
}


def actor_scaling(
    actor_counts: list[int], seconds: float, task: str = "tmaze", envs: tuple[int, ...] = (8,)
) -> list[dict]:
    import ray

    from common.envs.factory import env_spec
    from common.ray_utils import init_ray
    from common.weights import WeightBroker, to_numpy_state
    from deploy.config import compose
    from deploy.run.builder import start_rollout_actor
    from learner.amago import AmagoLearner
    from replay_service import EmbeddedServer, ReplayStore, connect

    cfg = compose(
        [*TASKS[task], "replay.rate_limit.samples_per_insert=0", "deploy.serve_metrics=false"]
    )
    spec = env_spec(cfg.env)
    init_ray(num_cpus=max(actor_counts))
    rows = []
    with EmbeddedServer() as server:
        replay = cfg.replay
        replay.redis = server.redis_config(namespace="bench")
        store = ReplayStore(connect(replay.redis), replay)
        broker = ray.remote(WeightBroker).options(num_cpus=0).remote()
        weights = AmagoLearner(spec, cfg.learner).policy_weights()
        ray.get(broker.publish.remote(1, [ray.put(to_numpy_state(weights))]))
        for n, e in [(n, e) for e in envs for n in actor_counts]:
            store.clear()
            acfg = dataclasses.replace(cfg.actors, num_actors=n, num_cpus=1, envs_per_actor=e)
            run = dataclasses.replace(cfg, replay=replay, actors=acfg)
            actors = [start_rollout_actor(run, broker, i, spec=spec) for i in range(n)]
            ray.get([a.collect.remote(64) for a in actors])  # warm-up
            mem_start = ray.get([a.memory_mb.remote() for a in actors])
            t0, steps, pending = time.perf_counter(), 0, {a.collect.remote(): a for a in actors}
            while time.perf_counter() - t0 < seconds:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    a = pending.pop(ref)
                    steps += ray.get(ref).env_steps
                    pending[a.collect.remote()] = a
            for ref in pending:
                steps += ray.get(ref).env_steps
            elapsed = time.perf_counter() - t0
            mem_end = ray.get([a.memory_mb.remote() for a in actors])
            stats = store.stats()
            rows.append(
                {
                    "task": task,
                    "envs_per_actor": e,
                    "actors": n,
                    "env_steps_per_s": steps / elapsed,
                    "per_actor": steps / elapsed / n,
                    "actor_rss_start_mb": float(np.mean([m["rss_mb"] for m in mem_start])),
                    "actor_rss_end_mb": float(np.mean([m["rss_mb"] for m in mem_end])),
                    "trajectories": stats.inserted_trajectories,
                    "server_rss_mb": connect(replay.redis).info("memory")["used_memory_rss"]
                    / 2**20,
                }
            )
            for a in actors:
                ray.kill(a)
        ray.kill(broker)
    ray.shutdown()
    return rows


def context_cost(contexts: list[int], slots: int = 8, steps: int = 30, model=None) -> list[dict]:
    """``model``: a ``ModelConfig`` (default: the AMAGO default Transformer)."""
    import torch

    from common.records import StepInput
    from common.spec import ArraySpec, EnvSpec
    from learner.agent import PolicyNet
    from learner.config import LearnerConfig, ModelConfig
    from learner.inference import InferencePolicy

    torch.set_num_threads(1)
    spec = EnvSpec({"observation": ArraySpec((16,), "float32")}, 4, True, max(contexts) * 2)
    cfg = LearnerConfig(device="cpu", max_seq_len=max(contexts), model=model or ModelConfig())
    net = PolicyNet(spec, cfg).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    rows = []
    idx = np.arange(slots)

    def step_input(t: int) -> StepInput:
        return StepInput(
            obs={"observation": rng.normal(size=(slots, 16)).astype(np.float32)},
            prev_action=np.eye(4, dtype=np.float32)[rng.integers(0, 4, slots)],
            prev_reward=rng.normal(size=slots).astype(np.float32),
            time_idx=np.full(slots, t, np.int64),
        )

    def per_step(window: str, context: int, n: int) -> float:
        pol = InferencePolicy(spec, cfg, slots, context, device="cpu", window=window)
        pol.load_weights(1, weights)
        for t in range(context + 1):  # fill the cache; every slot then past the window
            pol.act(step_input(t), idx)
        t0 = time.perf_counter()
        for t in range(n):
            pol.act(step_input(context + 1 + t), idx)
        return (time.perf_counter() - t0) / n

    for L in contexts:
        reps = max(2, steps // 10)
        cached = per_step("sliding", L, steps)
        exact = per_step("exact", L, reps)
        # without a cache: re-encode the last L timesteps of every slot for each action
        obs = {"observation": torch.randn(slots, L, 16)}
        pa = torch.zeros(slots, L, 4)
        pr = torch.zeros(slots, L)
        ti = torch.arange(L).expand(slots, L)
        with torch.inference_mode():
            net.encode(obs, pa, pr, ti)
            t0 = time.perf_counter()
            for _ in range(reps):
                net.actor(net.encode(obs, pa, pr, ti)[:, -1])
            full = (time.perf_counter() - t0) / reps
        rows.append(
            {
                "context": L,
                "cached_ms": 1e3 * cached,
                "exact_ms": 1e3 * exact,
                "recompute_ms": 1e3 * full,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["tmaze"])
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--envs-per-actor", type=int, nargs="+", default=[8])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--contexts", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    ap.add_argument("--skip-actors", action="store_true")
    ap.add_argument("--skip-context", action="store_true")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores")
    if not args.skip_actors:
        for task in args.tasks:
            rows = actor_scaling(args.actors, args.seconds, task, tuple(args.envs_per_actor))
            base = rows[0]["env_steps_per_s"]
            print(f"\nEnv steps/s vs rollout actors and envs per actor ({task}: {TASKS[task]})")
            print(
                f"{'envs':>4} {'actors':>6} {'steps/s':>9} {'per actor':>9} {'vs first':>8} "
                f"{'actor RSS MiB start->end':>25} {'server RSS MiB':>14}"
            )
            for r in rows:
                print(
                    f"{r['envs_per_actor']:>4} {r['actors']:>6} {r['env_steps_per_s']:>9.0f} "
                    f"{r['per_actor']:>9.0f} {r['env_steps_per_s'] / base:>7.2f}x "
                    f"{r['actor_rss_start_mb']:>12.0f} -> {r['actor_rss_end_mb']:<10.0f} "
                    f"{r['server_rss_mb']:>14.0f}"
                )
    if not args.skip_context:
        rows = context_cost(args.contexts)
        print("\nPer-step inference vs context length (AMAGO default model, 8 slots, 1 thread)")
        print(
            f"{'context':>7} {'sliding act ms':>14} {'exact act ms':>12} {'re-encode ms':>12} "
            f"{'exact/sliding':>13}"
        )
        for r in rows:
            print(
                f"{r['context']:>7} {r['cached_ms']:>14.2f} {r['exact_ms']:>12.2f} "
                f"{r['recompute_ms']:>12.1f} {r['exact_ms'] / r['cached_ms']:>12.1f}x"
            )


if __name__ == "__main__":
    main()
