"""Env steps/s of one rollout loop stepping a slow env in-process (``actors.vector_env:
sync``) and in gymnasium AsyncVectorEnv subprocesses (``async``).

The env is T-Maze behind a wrapper that costs ``--ms`` milliseconds per step, either asleep
(``--work sleep``: an env waiting on a simulator, a renderer or I/O) or burning CPU
(``--work cpu``: a physics step in Python). The policy is uniform random (no torch), so the
table measures env stepping and the loop, not inference.

    python -m benchmarks.vector_env                      # 2 ms sleep and 2 ms CPU, 4 and 8 envs
    python -m benchmarks.vector_env --work cpu --envs 8 --steps 300
"""

from __future__ import annotations

import argparse
import functools
import time

import gymnasium as gym
import numpy as np


class SlowStep(gym.Wrapper):
    """``ms`` milliseconds more per ``step``: asleep or busy."""

    def __init__(self, env: gym.Env, ms: float, work: str):
        super().__init__(env)
        self.s, self.work = ms / 1e3, work

    def step(self, action):
        if self.work == "sleep":
            time.sleep(self.s)
        else:
            end = time.perf_counter() + self.s
            x = 0
            while time.perf_counter() < end:
                x += 1
        return self.env.step(action)


def make_slow_env(seed: int, ms: float, work: str) -> gym.Env:
    from common.envs.config import EnvConfig
    from common.envs.factory import make_env

    return SlowStep(make_env(EnvConfig(id="amago/TMaze-v0"), seed=seed), ms, work)


class RandomPolicy:
    version = 0

    def __init__(self, spec):
        self.spec, self.rng = spec, np.random.default_rng(0)

    def act(self, step, slots, greedy=False):
        return self.rng.integers(0, self.spec.action_dim, size=len(slots))

    def reset(self, slots):
        pass

    def load_weights(self, version, weights):
        pass


def measure(mode: str, n_envs: int, steps: int, ms: float, work: str, context: str) -> dict:
    from actors.envbatch import make_env_batch
    from actors.rollout import RolloutLoop
    from common.envs.config import EnvConfig
    from common.envs.factory import env_spec

    spec = env_spec(EnvConfig(id="amago/TMaze-v0"))
    makers = [functools.partial(make_slow_env, i, ms, work) for i in range(n_envs)]
    t0 = time.perf_counter()
    batch = make_env_batch(makers, mode, context)
    loop = RolloutLoop(batch, spec, RandomPolicy(spec), None, None)
    startup = time.perf_counter() - t0
    try:
        loop.run(5)  # warm-up
        t0 = time.perf_counter()
        st = loop.run(steps)
        dt = time.perf_counter() - t0
    finally:
        loop.close()
    return {"steps_per_s": st.env_steps / dt, "startup_s": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", choices=["sleep", "cpu", "both"], default="both")
    ap.add_argument("--ms", type=float, default=2.0, help="extra cost of one env step")
    ap.add_argument("--envs", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, default=200, help="batched steps per measurement")
    ap.add_argument("--context", default="forkserver")
    a = ap.parse_args()
    works = ["sleep", "cpu"] if a.work == "both" else [a.work]
    print(f"env: amago/TMaze-v0 + {a.ms:g} ms per step; {a.steps} batched steps per row")
    print("| work | envs | sync steps/s | async steps/s | async / sync | async start-up s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for work in works:
        for n in a.envs:
            s = measure("sync", n, a.steps, a.ms, work, a.context)
            y = measure("async", n, a.steps, a.ms, work, a.context)
            print(
                f"| {work} | {n} | {s['steps_per_s']:,.0f} | {y['steps_per_s']:,.0f} | "
                f"{y['steps_per_s'] / s['steps_per_s']:.2f}x | {y['startup_s']:.1f} |",
                flush=True,
            )
    print("(ideal sync: 1000 / ms steps/s; ideal async: envs x that, capped by free cores for cpu)")


if __name__ == "__main__":
    main()
