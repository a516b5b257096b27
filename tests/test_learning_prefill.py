"""Offline data through the distributed path: a run whose every batch comes from a replay
prefilled with scripted, mixed-quality T-Maze rollouts (``replay.prefill.mix=1``) learns the
memory task, while its Ray rollout actors only explore (nothing they insert is sampled).

Real Ray actors, the embedded Valkey server, the learner actor sampling the prefill partition
through ``MixedSampler``; the run stops at the first greedy evaluation reaching the threshold.
The data are those of the offline learner test (``tests/test_learner_offline.py``): about a
fifth of the rollouts succeed, so the greedy threshold needs both filtered BC/critic and the
hint remembered from t = 0.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import seed_overrides
from test_learner_offline import H, scripted_episode, tmaze_spec

from common.envs.tmaze import TMaze
from deploy.config import compose
from deploy.train import run_training
from replay_service.dump import read_manifest, write_dump

pytestmark = pytest.mark.slow

THRESHOLD = 0.95  # greedy return; memoryless policies get 0.5, the behaviour data ~0.2


def scripted_dump(path, episodes: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    env = TMaze(H)
    data = [scripted_episode(env, rng, seed=10_000 * seed + i) for i in range(episodes)]
    write_dump(data, path, spec=tmaze_spec(), source={"generator": "scripted T-Maze"})
    return data


def test_prefilled_scripted_tmaze_alone_learns_through_the_distributed_path(
    tmp_path, learning_seed, figure
):
    """Budget: 4,000 updates (the run stops at the first greedy evaluation at the threshold);
    ``run.max_seconds`` only guards against a hang. Seeds: the dump, learner and actors."""
    data = scripted_dump(tmp_path / "dump", seed=learning_seed)
    behaviour = float(np.mean([t.total_return for t in data]))
    assert read_manifest(tmp_path / "dump").records == len(data)
    cfg = compose(
        [
            "experiment=tmaze",
            f"replay.prefill.paths=[{tmp_path / 'dump'}]",
            "replay.prefill.mix=1.0",
            "learner.lr=1e-3",
            "actors.num_actors=1",
            "actors.envs_per_actor=2",
            "run.max_env_steps=0",
            "run.max_updates=4000",
            "run.max_seconds=600",
            f"run.stop_at_return={THRESHOLD}",
            "run.eval_every_s=4",
            "run.eval_episodes=20",
            "run.final_eval_episodes=20",
            "run.updates_per_call=50",
            "run.dump_replay_on_exit=true",
            "run.plot=false",
            "run.tracking=[]",
            "deploy.serve_metrics=false",
            "deploy.dump_final_metrics=false",
            "deploy.num_cpus=2",
            *seed_overrides(learning_seed),
        ]
    )
    t0 = time.monotonic()
    summary = run_training(cfg, tmp_path / "run")
    wall = time.monotonic() - t0
    pre = summary["prefill"]
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "train_s": round(summary["train_seconds"], 1),
                "updates": summary["updates"],
                "env_steps": summary["env_steps"],
                "solved": summary["solved"],
                "final": summary["final_eval_return"],
                "behaviour_return": round(behaviour, 3),
                "prefill": {k: pre[k] for k in ("trajectories", "timesteps", "seconds")},
            }
        )
    )
    assert pre["trajectories"] == len(data) and pre["rejected"] == {}
    assert summary["derived"]["replay.rate_limit.samples_per_insert"] == 0.0  # mix=1
    assert summary["solved"] is not None, summary["evals"]
    assert summary["solved"]["return"] >= THRESHOLD
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.9)
    # the actors' own rollouts went to the fresh partition, exported at exit
    assert summary["replay_dump"]["records"] > 0
    assert read_manifest(tmp_path / "run").spec == tmaze_spec()
