"""Replay service throughput against an embedded Valkey server, next to raw redis-py.

For each trajectory shape, every figure is measured for ``--seconds`` in total, in
``--rounds`` slices that alternate between ours and raw (so machine noise hits both alike):

- ``insert x1``: ReplayStore.insert(Trajectory) (validate + encode + SET + Lua commit with
  FIFO eviction, one round trip) vs raw redis-py SET of the same encoded bytes;
- ``insert x8``: ReplayStore.insert_many(8 trajectories) (one pipelined round trip) vs a raw
  pipeline of 8 SETs; both in trajectories/s (MB/s = that x record size);
- ``sample``: Sampler.sample(batch) in sampled sequence-timesteps/s (real, unpadded window
  timesteps; reservation, MGET, validating decode, relabel, windowing, padding) with the
  decode cache OFF (every blob fetched and decoded) vs one raw MGET of ``batch`` random blobs
  counted as the same number of window timesteps;
- ``sample+cache``: the same with the sampler's decode cache on, for a store the cache holds
  (``--cache-traj`` trajectories, warmed up first): the steady state of a learner whose
  replay fits its cache (no blob transfer or decoding; reservation, windowing and padding).

Inserts are measured at steady state: the store is first filled to capacity (every insert
then evicts one) and the raw side overwrites as many keys.

    python -m benchmarks.replay_throughput [--seconds 3] [--compression zstd] [--batch 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.codec import encode
from common.records import Trajectory, TrajectoryMeta
from replay_service import (
    EmbeddedServer,
    ReplayConfig,
    ReplayStore,
    Sampler,
    SampleShape,
    connect,
)


@dataclass(frozen=True)
class Case:
    name: str
    obs_shape: tuple[int, ...]
    dtype: str
    steps: int


CASES = (
    Case("small (16, T=64)", (16,), "float32", 64),
    Case("medium (16, T=1000)", (16,), "float32", 1000),
    Case("image (64x64x3 u8, T=256)", (64, 64, 3), "uint8", 256),
)


def make_trajectory(case: Case, rng: np.random.Generator, tag: int) -> Trajectory:
    n = case.steps
    if case.dtype == "uint8":  # blocky images: compressible like rendered frames
        blocks = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        obs = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)
    else:
        obs = rng.standard_normal((n, *case.obs_shape)).astype(np.float32)
    prev_action = np.zeros((n, 4), np.float32)
    prev_action[np.arange(1, n), rng.integers(0, 4, n - 1)] = 1.0
    prev_reward = rng.standard_normal(n).astype(np.float32)
    prev_reward[0] = 0.0
    terminated = np.zeros(n, bool)
    terminated[-1] = True
    return Trajectory(
        obs={"observation": obs},
        prev_action=prev_action,
        prev_reward=prev_reward,
        time_idx=np.arange(n, dtype=np.int32),
        terminated=terminated,
        truncated=np.zeros(n, bool),
        meta=TrajectoryMeta(env_id="bench", actor_id=tag, policy_version=tag),
    )


def compare(ours: Callable[[], int], raw: Callable[[], int], seconds: float, rounds: int):
    """Units/s of ``ours`` and ``raw`` (each returns units done per call), interleaved."""
    ours(), raw()  # warm-up (script load, first connection, caches)
    totals = {"ours": [0, 0.0], "raw": [0, 0.0]}
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("raw", raw)):
            units, t0 = 0, time.perf_counter()
            while True:
                units += fn()
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds / rounds:
                    break
            totals[name][0] += units
            totals[name][1] += elapsed
    return totals["ours"][0] / totals["ours"][1], totals["raw"][0] / totals["raw"][1]


def bench_case(server: EmbeddedServer, case: Case, args) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    pool = [make_trajectory(case, rng, i) for i in range(8)]
    blobs = [encode(t, args.compression) for t in pool]
    blob_bytes = float(np.mean([len(b) for b in blobs]))
    blob_mb = blob_bytes / 2**20
    window = min(case.steps, args.seq_len)
    capacity = args.capacity_mb * 2**20
    cfg = ReplayConfig(
        redis=server.redis_config(namespace="bench" + uuid.uuid4().hex[:8]),
        max_steps=args.capacity_steps,
        max_bytes=capacity,
        max_traj_steps=case.steps,
        max_record_bytes=64 * 2**20,
        compression=args.compression,
        sample_cache_mb=0,
    )
    shape = SampleShape(batch_size=args.batch, max_seq_len=args.seq_len)
    client = connect(cfg.redis)
    store = ReplayStore(client, cfg)
    held = int(min(capacity / blob_bytes, args.capacity_steps / case.steps))  # at capacity
    raw_prefix = f"rawbench:{uuid.uuid4().hex[:8]}:"
    # Steady state on both sides: the store full (every insert evicts one), raw keys all set.
    for k in range(held):
        client.set(f"{raw_prefix}{k}", blobs[k % len(blobs)])
    while store.stats().evicted_trajectories == 0:
        store.insert_many(pool)
    counter = [0]

    def ours_insert() -> int:
        counter[0] += 1
        store.insert(pool[counter[0] % len(pool)])
        return 1

    def raw_set() -> int:
        counter[0] += 1
        client.set(f"{raw_prefix}{counter[0] % held}", blobs[counter[0] % len(blobs)])
        return 1

    def ours_insert8() -> int:
        store.insert_many(pool)
        return len(pool)

    def raw_set8() -> int:
        pipe = client.pipeline(transaction=False)
        for b in blobs:
            counter[0] += 1
            pipe.set(f"{raw_prefix}{counter[0] % held}", b)
        pipe.execute()
        return len(blobs)

    rows = []
    s, r = compare(ours_insert, raw_set, args.seconds, args.rounds)
    rows += [("insert x1  traj/s", s, r), ("insert x1  MB/s", s * blob_mb, r * blob_mb)]
    s, r = compare(ours_insert8, raw_set8, args.seconds, args.rounds)
    rows += [("insert x8  traj/s", s, r), ("insert x8  MB/s", s * blob_mb, r * blob_mb)]

    # Sampling from the full store (`held` trajectories), cache off, vs MGET of as many blobs.
    cold = Sampler(client, cfg, shape, seed=0)
    krng = np.random.default_rng(1)

    def raw_mget() -> int:
        client.mget([f"{raw_prefix}{k}" for k in krng.integers(0, held, args.batch)])
        return args.batch * window

    s, r = compare(
        lambda: int(cold.sample(args.batch).mask.sum()), raw_mget, args.seconds, args.rounds
    )
    rows.append(("sample       steps/s", s, r))
    # With the decode cache, on a store it can hold: `args.cache_traj` trajectories, warmed.
    store.clear()
    n_cached = min(held, args.cache_traj)
    for _ in range(0, n_cached, len(pool)):
        store.insert_many(pool[: min(len(pool), n_cached)])
    warm_cfg = dataclasses.replace(cfg, sample_cache_mb=args.cache_mb)
    warm = Sampler(client, warm_cfg, shape, seed=0)
    for _ in range(8 * n_cached // args.batch + 1):  # each id drawn ~8 times: ~all cached
        warm.sample(args.batch)
    s, r = compare(
        lambda: int(warm.sample(args.batch).mask.sum()), raw_mget, args.seconds, args.rounds
    )
    rows.append(("sample+cache steps/s", s, r))
    for key in client.scan_iter(match=raw_prefix + "*", count=1000):
        client.delete(key)
    store.clear()
    client.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each figure pair")
    p.add_argument("--rounds", type=int, default=3, help="ours/raw alternations per figure")
    p.add_argument("--compression", default="", choices=["", "zstd"])
    p.add_argument("--batch", type=int, default=24, help="windows per sample() (learner batch)")
    p.add_argument("--seq-len", type=int, default=64, help="max_seq_len of sampled windows")
    p.add_argument("--capacity-mb", type=int, default=256, help="replay capacity, MiB")
    p.add_argument("--capacity-steps", type=int, default=2_000_000, help="replay capacity")
    p.add_argument("--cache-mb", type=int, default=512, help="sampler decode cache, MiB")
    p.add_argument(
        "--cache-traj", type=int, default=2000, help="store size (trajectories) for sample+cache"
    )
    args = p.parse_args()
    print(
        f"replay throughput: embedded Valkey on 127.0.0.1, {args.seconds:g}s per figure pair, "
        f"compression={args.compression or 'none'}, sample batch {args.batch} x seq_len "
        f"{args.seq_len}"
    )
    header = f"{'case':<27}{'figure':<22}{'ours':>12}{'raw':>12}{'ours/raw':>10}"
    print(header)
    print("-" * len(header))
    with EmbeddedServer() as server:
        for case in CASES:
            rng = np.random.default_rng(0)
            mb = len(encode(make_trajectory(case, rng, 0), args.compression)) / 2**20
            for i, (name, ours, raw) in enumerate(bench_case(server, case, args)):
                label = case.name if i == 0 else (f"  record {mb:.3g} MB" if i == 1 else "")
                print(f"{label:<27}{name:<22}{ours:>12,.4g}{raw:>12,.4g}{ours / raw:>10.0%}")
            print(flush=True)


if __name__ == "__main__":
    main()
