"""What persistence (AOF, ``appendfsync everysec``) costs the embedded replay server's inserts.

Two embedded Valkey servers side by side, one with a data directory (AOF + RDB, as
``deploy.embedded_data_dir`` / ``deploy.embedded_persistence`` run it) and one without; for
each trajectory shape, ``ReplayStore.insert_many`` of 8 trajectories at steady state (the store
full: every insert evicts), alternating between the two servers ``--rounds`` times so machine
noise hits both alike. Prints trajectories/s and MB/s of each and the persistent server's
share of the in-memory one's throughput.

    python -m benchmarks.replay_persistence [--seconds 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np

from benchmarks.replay_throughput import CASES, Case, make_trajectory
from common.codec import encode
from replay_service import EmbeddedServer, ReplayConfig, ReplayStore, connect


def _store(server: EmbeddedServer, case: Case, capacity_mb: int) -> ReplayStore:
    cfg = ReplayConfig(
        redis=server.redis_config(namespace="persist"),
        max_bytes=capacity_mb * 2**20,
        max_steps=10**8,
        max_traj_steps=case.steps + 1,
        max_record_bytes=capacity_mb * 2**20,
    )
    return ReplayStore(connect(cfg.redis), cfg)


def _inserts(store: ReplayStore, trajs: list, seconds: float) -> int:
    """Trajectories inserted in ``seconds`` (batches of 8, one pipelined round trip each)."""
    n, t_end = 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        store.insert_many(trajs[(n % len(trajs)) : (n % len(trajs)) + 8])
        n += 8
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="per case and server, in all")
    ap.add_argument("--rounds", type=int, default=4, help="alternations per case")
    ap.add_argument("--capacity-mb", type=int, default=64, help="replay capacity (bytes cap)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"# {platform.node()} {platform.machine()}; Valkey embedded, appendfsync everysec")
    head = f"{'trajectory':<28} {'in memory traj/s':>17} {'AOF traj/s':>11} {'MB/s (AOF)':>11} {'AOF/mem':>8}"
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            trajs = [make_trajectory(case, rng, k) for k in range(64)]
            trajs += trajs[:8]  # wrap-around slices of 8
            mb = len(encode(trajs[0])) / 2**20
            totals = {"mem": 0, "aof": 0}
            with (
                EmbeddedServer(maxmemory_bytes=1 << 30) as mem,
                EmbeddedServer(maxmemory_bytes=1 << 30, data_dir=f"{tmp}/{case.steps}") as aof,
            ):
                stores = {"mem": _store(mem, case, args.capacity_mb)}
                stores["aof"] = _store(aof, case, args.capacity_mb)
                for store in stores.values():  # fill to capacity: steady state evicts
                    while store.stats().bytes < 0.9 * args.capacity_mb * 2**20:
                        _inserts(store, trajs, 0.2)
                slice_s = args.seconds / args.rounds
                for _ in range(args.rounds):
                    for name, store in stores.items():
                        totals[name] += _inserts(store, trajs, slice_s)
            mem_rate, aof_rate = totals["mem"] / args.seconds, totals["aof"] / args.seconds
            print(
                f"{case.name:<28} {mem_rate:>17,.0f} {aof_rate:>11,.0f} "
                f"{aof_rate * mb:>11,.1f} {aof_rate / mem_rate:>8.2f}"
            )


if __name__ == "__main__":
    main()
