"""Sharded replay throughput: aggregate insert and sample rates over 1, 2 and 3 embedded Valkey
shards (``replay.redis.shards``; ``replay_service.shards``), with the workload of
``benchmarks.replay_throughput`` (its trajectory shapes and steady state: the store filled to
capacity first, so every insert evicts one).

For each shard count K (K = 1 is the plain ReplayStore / Sampler a run uses with one server):

- ``insert 1w``: one writer process inserting one trajectory per call (what a rollout actor
  does), trajectories/s;
- ``insert Nw``: ``--writers`` writer processes at once, their total trajectories/s (the
  aggregate a fleet of actors gets);
- ``sample``: one sampler, decode cache off (every blob fetched and decoded), sampled
  sequence-timesteps/s;
- ``sample+cache``: the same with the decode cache on and warmed (the steady state of a
  learner whose replay fits its cache).

Every server, writer and sampler shares this machine's cores: where they are few (the 2-vCPU
VM of the benchmarks/README.md figures) sharding cannot add server capacity, and the figures show the
router's overhead rather than the scaling K servers on K machines give.

    python -m benchmarks.replay_shards [--seconds 3] [--writers 2] [--case small]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import secrets
import time
import uuid

import numpy as np

from benchmarks.replay_throughput import CASES, Case, make_trajectory
from replay_service import EmbeddedServer, ReplayConfig, SampleShape
from replay_service.shards import make_sampler, make_writer

_CASES = {"small": CASES[0], "medium": CASES[1], "image": CASES[2]}


def shard_config(servers: list[EmbeddedServer], case: Case, args) -> ReplayConfig:
    rc = servers[0].redis_config(namespace="shbench" + uuid.uuid4().hex[:8])
    rc = dataclasses.replace(rc, shards=[s.url for s in servers[1:]])
    return ReplayConfig(
        redis=rc,
        max_steps=args.capacity_steps,
        max_bytes=args.capacity_mb * 2**20,
        max_traj_steps=case.steps,
        max_record_bytes=64 * 2**20,
        sample_cache_mb=0,
    )


def _writer(cfg: ReplayConfig, case: Case, seconds: float, seed: int, start: float) -> int:
    """Insert one trajectory per call from ``start`` (a shared wall-clock time) for
    ``seconds``; returns how many."""
    rng = np.random.default_rng(seed)
    pool = [make_trajectory(case, rng, i) for i in range(8)]
    store = make_writer(cfg)
    store.insert(pool[0])  # connections and scripts
    time.sleep(max(0.0, start - time.time()))
    n, t_end = 0, time.time() + seconds
    while time.time() < t_end:
        store.insert(pool[n % len(pool)])
        n += 1
    return n


def insert_rate(cfg: ReplayConfig, case: Case, writers: int, seconds: float) -> float:
    """Aggregate trajectories/s of ``writers`` processes inserting at once."""
    ctx = mp.get_context("spawn")
    start = time.time() + 2.0 + 0.5 * writers  # every process imported and connected
    with ctx.Pool(writers) as pool:
        counts = pool.starmap(
            _writer, [(cfg, case, seconds, 100 + w, start) for w in range(writers)]
        )
    return sum(counts) / seconds


def fill(cfg: ReplayConfig, case: Case, trajectories: int | None = None) -> None:
    """Fill the store to capacity (every later insert evicts) or with ``trajectories``."""
    rng = np.random.default_rng(0)
    pool = [make_trajectory(case, rng, i) for i in range(8)]
    store = make_writer(cfg)
    if trajectories is None:
        while store.stats().evicted_trajectories < cfg.num_shards:
            store.insert_many(pool)
    else:
        for _ in range(0, trajectories, len(pool)):
            store.insert_many(pool)


def sample_rate(
    cfg: ReplayConfig, shape: SampleShape, seconds: float, warm_batches: int = 0
) -> float:
    sampler = make_sampler(cfg, shape, seed=0)
    for _ in range(max(1, warm_batches)):
        sampler.sample(shape.batch_size)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        steps += int(sampler.sample(shape.batch_size).mask.sum())
    return steps / (time.perf_counter() - t0)


def bench(k: int, case: Case, args) -> dict[str, float]:
    password = secrets.token_urlsafe(16)  # one for every shard (RedisConfig has one)
    servers = [EmbeddedServer(password=password).start() for _ in range(k)]
    try:
        cfg = shard_config(servers, case, args)
        shape = SampleShape(batch_size=args.batch, max_seq_len=args.seq_len)
        fill(cfg, case)
        out = {
            "insert 1w traj/s": insert_rate(cfg, case, 1, args.seconds),
            f"insert {args.writers}w traj/s": insert_rate(cfg, case, args.writers, args.seconds),
            "sample steps/s": sample_rate(cfg, shape, args.seconds),
        }
        warm = dataclasses.replace(
            cfg,
            redis=dataclasses.replace(cfg.redis, namespace=cfg.redis.namespace + "w"),
            sample_cache_mb=args.cache_mb,
        )
        fill(warm, case, args.cache_traj)
        out["sample+cache steps/s"] = sample_rate(
            warm, shape, args.seconds, 8 * args.cache_traj // args.batch + 1
        )
        return out
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each figure")
    p.add_argument("--writers", type=int, default=2, help="writer processes of 'insert Nw'")
    p.add_argument("--case", default="small", choices=sorted(_CASES))
    p.add_argument("--shards", default="1,2,3", help="shard counts to measure")
    p.add_argument("--batch", type=int, default=24, help="windows per sample()")
    p.add_argument("--seq-len", type=int, default=64, help="max_seq_len of sampled windows")
    p.add_argument("--capacity-mb", type=int, default=256, help="replay capacity, MiB")
    p.add_argument("--capacity-steps", type=int, default=600_000, help="replay capacity")
    p.add_argument("--cache-mb", type=int, default=512, help="sampler decode cache, MiB")
    p.add_argument("--cache-traj", type=int, default=1200, help="store size for sample+cache")
    args = p.parse_args()
    case = _CASES[args.case]
    ks = [int(x) for x in args.shards.split(",")]
    print(
        f"sharded replay: {case.name}, embedded Valkeys on 127.0.0.1 (all on this machine), "
        f"{args.seconds:g}s per figure, batch {args.batch} x seq_len {args.seq_len}"
    )
    results = {k: bench(k, case, args) for k in ks}
    names = list(results[ks[0]])
    header = f"{'figure':<24}" + "".join(f"{f'{k} shard(s)':>14}" for k in ks)
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:<24}" + "".join(f"{results[k][name]:>14,.0f}" for k in ks))


if __name__ == "__main__":
    main()
