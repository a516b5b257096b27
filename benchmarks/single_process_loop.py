"""Learner diagnostics without Ray or Redis: one process steps ``RolloutLoop`` envs with an
``InferencePolicy`` and trains an ``AmagoLearner`` on uniformly drawn windows of an in-memory
list of rollouts. For finding out *whether* an update setting learns a task at a given
update-to-data ratio (e.g. Pendulum's), not a learning claim: those go through the
distributed path (``benchmarks/learning_suite.py``).

    python -m benchmarks.single_process_loop '{"reward_scale": 1.0}' --env Pendulum-v1 \
        --window 32 --updates-per-512 128 --steps 30000 --explore '{"start": 0.3}'

The JSON argument holds LearnerConfig overrides. Prints, every 5,000 env steps: updates,
seconds, the greedy evaluation return (4 episodes), the mean of the last 16 training
(exploring) returns and learner statistics.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from actors.config import ExplorationConfig
from actors.exploration import Exploration
from actors.rollout import RolloutLoop
from common.envs.config import EnvConfig
from common.envs.factory import env_spec, make_env
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import collate, tiny_model

STATS = ("critic_loss", "q_mean", "td_target_mean", "log_std", "entropy", "filter_frac_main")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON LearnerConfig overrides")
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--updates-per-512", type=int, default=128, help="updates per 512 env steps")
    ap.add_argument("--explore", default="{}", help="JSON ExplorationConfig overrides")
    ap.add_argument("--envs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    ecfg = EnvConfig(id=args.env)
    spec, window = env_spec(ecfg), args.window
    base = dict(lr=3e-4, warmup_steps=100, tau=0.005, device="cpu", num_threads=1)
    cfg = LearnerConfig(
        model=tiny_model(args.width),
        max_seq_len=window,
        seed=args.seed,
        **{**base, **json.loads(args.overrides)},
    )
    learner = AmagoLearner(spec, cfg)
    rng = np.random.default_rng(args.seed)
    explore = Exploration(
        ExplorationConfig(**json.loads(args.explore)),
        0,
        1,
        spec.discrete,
        spec.action_dim,
        rng,
        horizon=spec.max_episode_steps,
    )
    buffer: list = []
    policy = learner.make_policy(args.envs, window)
    envs = [make_env(ecfg, seed=args.seed * 1000 + i) for i in range(args.envs)]
    loop = RolloutLoop(envs, spec, policy, buffer.append, explore, seed=args.seed + 1)
    eval_policy = learner.make_policy(4, window)
    eval_envs = [make_env(ecfg, seed=10_000 + i) for i in range(4)]
    evaluate = RolloutLoop(eval_envs, spec, eval_policy, None, None, seed=7, greedy=True)

    t0, steps, last, train_returns, stats = time.time(), 0, 0, [], {}
    while steps < args.steps:
        st = loop.run(512 // args.envs)
        steps += st.env_steps
        train_returns += st.returns
        if sum(len(t) for t in buffer) > 2000:
            for _ in range(args.updates_per_512):
                rows = [buffer[i] for i in rng.integers(len(buffer), size=cfg.batch_size)]
                starts = [int(rng.integers(0, max(1, len(t) - window + 1))) for t in rows]
                stats = learner.train_step(collate(rows, window, starts))
            policy.load_weights(learner.version, learner.policy_weights())
        if steps - last >= 5000:
            last = steps
            eval_policy.load_weights(learner.version, learner.policy_weights())
            ret = float(np.mean(evaluate.run_rollouts(1, 10_000).returns))
            train = float(np.mean(train_returns[-16:])) if train_returns else float("nan")
            extra = " ".join(f"{k}={stats[k]:.3g}" for k in STATS if k in stats)
            print(
                f"{steps:7d} steps {learner.version:6d} updates {time.time() - t0:6.0f} s "
                f"greedy {ret:9.1f} train {train:9.1f} {extra}",
                flush=True,
            )


if __name__ == "__main__":
    main()
