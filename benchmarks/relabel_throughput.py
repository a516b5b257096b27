"""Cost of hindsight relabeling per sampled sequence, and sampler throughput with and without it.

Part 1 (no server): real GoalGrid trajectories (k=2, random policy) of T timesteps — rollouts
that ran into the time limit (``max_steps = T - 1``), on grids of size 6 / 10 / 16 for
T = 50 / 200 / 1000 so that a random walk does not complete its instruction first — held as the
sampler holds them (decoded, read-only). The sampler relabels the WHOLE trajectory once per
sampled window, so the cost of one ``relabel(traj, rng)`` call is the cost per sampled sequence.
Printed: microseconds per call for ``"none"`` and the ``"hindsight"`` variants (p_relabel=1, so
every call does the work; the default p_relabel=0.8 costs ~0.8x), the share of calls whose
result differs from the input and the mean length of the result (cut where the relabeled
instruction is completed).

Part 2 (embedded Valkey server on 127.0.0.1): ``Sampler.sample(batch)`` at ``max_seq_len`` on a
store of GoalGrid trajectories (default grid, T <= 49; and the T = 200 ones), decode cache on
(the steady state of a learner whose replay fits its cache), relabel ``"none"`` vs hindsight,
measured in alternating rounds. Printed: sequences/s, sequence-timesteps/s (real, unpadded
window timesteps) and the fraction of sampled timesteps that carry a reward (what relabeling is
for: the random policy's sparse data becomes rewarding).

    python -m benchmarks.relabel_throughput [--seconds 2] [--batch 24] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np

from common.codec import decode, encode
from common.envs import EnvConfig, env_spec, make_env, rollout
from common.records import Trajectory
from replay_service import (
    EmbeddedServer,
    ReplayConfig,
    ReplayStore,
    Sampler,
    SampleShape,
    connect,
)
from replay_service.relabel import Relabeler, get_relabeler

#: (label, relabel name, kwargs)
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("none", "none", {}),
    ("final/some", "hindsight", {"p_relabel": 1.0, "strategy": "final", "amount": "some"}),
    ("final/all", "hindsight", {"p_relabel": 1.0, "strategy": "final", "amount": "all"}),
    ("future/all", "hindsight", {"p_relabel": 1.0, "strategy": "future", "amount": "all"}),
)
#: trajectory length -> grid size
LENGTHS = {50: 6, 200: 10, 1000: 16}


def goal_grid_trajectories(
    count: int, steps: int | None, size: int, seed: int = 0, max_tries: int = 100_000
) -> list[Trajectory]:
    """``count`` random-policy GoalGrid rollouts, decoded as the replay service holds them.
    ``steps``: keep only rollouts of exactly that many timesteps (time limit ``steps - 1``);
    None: every rollout of the default time limit."""
    kwargs = {"size": size, "num_obstacles": size}
    if steps is not None:
        kwargs["max_steps"] = steps - 1
    cfg = EnvConfig(id="amago/GoalGrid-v0", kwargs=kwargs)
    env, spec = make_env(cfg, seed=seed), env_spec(cfg)
    rng = np.random.default_rng(seed)
    out: list[Trajectory] = []
    for _ in range(max_tries):
        traj = rollout(env, spec, lambda o, i: int(rng.integers(4)))
        if steps is None or len(traj) == steps:
            out.append(decode(encode(traj)))
        if len(out) == count:
            return out
    raise RuntimeError(f"only {len(out)} rollouts of {steps} steps in {max_tries} tries")


def seconds_per_call(relabel: Relabeler, trajs: list[Trajectory], seconds: float) -> float:
    """Mean seconds of ``relabel(traj, rng)`` over ``trajs``, looped for about ``seconds``."""
    rng = np.random.default_rng(1)
    calls, t0 = 0, time.perf_counter()
    while True:
        for traj in trajs:
            relabel(traj, rng)
        calls += len(trajs)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / calls


def bench_relabel_cost(args) -> None:
    print("relabel cost per sampled sequence (one call on the whole trajectory), p_relabel=1")
    header = f"{'T':>6}{'grid':>6}{'variant':>13}{'us/call':>10}{'changed':>9}{'mean len':>10}"
    print(header)
    print("-" * len(header))
    for steps, size in LENGTHS.items():
        trajs = goal_grid_trajectories(args.trajectories, steps, size)
        for label, name, kwargs in VARIANTS:
            relabel = get_relabeler(name, **kwargs)
            rng = np.random.default_rng(0)
            outs = [relabel(t, rng) for t in trajs]
            changed = np.mean([o is not t for o, t in zip(outs, trajs)])
            mean_len = np.mean([len(o) for o in outs])
            us = seconds_per_call(relabel, trajs, args.seconds / 2) * 1e6
            print(f"{steps:>6}{size:>6}{label:>13}{us:>10.1f}{changed:>9.0%}{mean_len:>10.1f}")
        print(flush=True)


def bench_sampler(server: EmbeddedServer, args) -> None:
    print(
        f"Sampler.sample: embedded Valkey, batch {args.batch} x max_seq_len {args.seq_len}, "
        f"decode cache on, {args.rounds} alternating rounds, {args.seconds:g}s per variant"
    )
    header = (
        f"{'store':<22}{'variant':>12}{'seq/s':>10}{'seq-steps/s':>13}{'rewarded':>10}"
        f"{'vs none':>9}"
    )
    print(header)
    print("-" * len(header))
    stores = (
        ("GoalGrid T<=49", goal_grid_trajectories(args.store_size, None, 6)),
        ("GoalGrid T=200", goal_grid_trajectories(args.store_size // 4, 200, 10)),
    )
    for store_name, trajs in stores:
        ns = "relabelbench" + uuid.uuid4().hex[:8]
        samplers = {}
        base = dict(
            redis=server.redis_config(namespace=ns),
            sample_cache_mb=512,
        )
        shape = SampleShape(batch_size=args.batch, max_seq_len=args.seq_len)
        client = connect(base["redis"])
        store = ReplayStore(client, ReplayConfig(**base))
        store.insert_many(trajs)
        for label, name, kwargs in VARIANTS:
            cfg = ReplayConfig(**base, relabel=name, relabel_kwargs=kwargs)
            samplers[label] = Sampler(client, cfg, shape, seed=0)
            for _ in range(4 * len(trajs) // args.batch + 1):  # warm the decode cache
                samplers[label].sample()
        totals = {label: [0, 0, 0.0, 0.0] for label in samplers}  # seqs, steps, rewarded, s
        for _ in range(args.rounds):
            for label, sampler in samplers.items():
                t0 = time.perf_counter()
                while True:
                    b = sampler.sample()
                    tot = totals[label]
                    tot[0] += b.shape[0]
                    tot[1] += int(b.mask.sum())
                    tot[2] += float((b.prev_reward[b.mask] > 0).sum())
                    elapsed = time.perf_counter() - t0
                    if elapsed >= args.seconds / args.rounds:
                        tot[3] += elapsed
                        break
        ref = totals["none"][1] / totals["none"][3]
        for i, (label, (seqs, steps, rewarded, secs)) in enumerate(totals.items()):
            name = store_name if i == 0 else ""
            print(
                f"{name:<22}{label:>12}{seqs / secs:>10,.0f}{steps / secs:>13,.0f}"
                f"{rewarded / steps:>10.2%}{steps / secs / ref:>9.0%}"
            )
        print(flush=True)
        store.clear()
        client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    p.add_argument("--rounds", type=int, default=4, help="alternations in the sampler part")
    p.add_argument("--batch", type=int, default=24, help="windows per sample() (learner batch)")
    p.add_argument("--seq-len", type=int, default=64, help="max_seq_len of sampled windows")
    p.add_argument("--trajectories", type=int, default=40, help="trajectories per length")
    p.add_argument("--store-size", type=int, default=400, help="trajectories in the store")
    args = p.parse_args()
    bench_relabel_cost(args)
    with EmbeddedServer() as server:
        bench_sampler(server, args)


if __name__ == "__main__":
    main()
