"""End-to-end learning through the real distributed path: Ray rollout actors -> embedded Valkey
replay service -> Ray learner actor -> published weights -> actors. These are the proof that the
system learns; thresholds are ones a memoryless policy cannot reach.

One local Ray session for the module (`ray.init` costs seconds); each test builds its own run
(embedded server, learner, actors) via ``deploy.train.run_training`` with the task's
``experiment=`` preset (``configs/experiment/``), or with the generic defaults and an ``env=``
preset only where the test says so.

Budgets and bars (so that a test's outcome does not depend on this machine's speed): every run
is budgeted in learner updates (``run.max_updates``; the rate limiter ties env steps to them);
``run.max_seconds`` is only a guard against a hang, far above what any repeat took. Tests that
can stop as soon as they have shown their claim do (``run.stop_at_return``). Each bar was set
from 10 repeats (``python -m benchmarks.test_repeats``, seeds 0-9, ``AMAGO_TEST_SEED``; CI runs
seed 0) so that the worst repeat clears it with margin; each docstring says what they measured.

No Dark Key-To-Door test (removed 2026-12-07): its figure, last minus first episode of a
trial (4x4 room, 2,200 updates, 240 trials), ranged +0.054 .. +0.56 over 10 seeds, and the
memoryless MLP encoder with the same budget reached +0.054 and -0.063 on two seeds (it sees
the time within the trial, so it too can change behaviour between episodes). No bar is both above the memoryless agent
and below every seed's figure at a CI budget; the task stays in the learning suite
(``benchmarks/learning_suite.py``: dark_key_door_small and its _memoryless ablation). In-context
meta-RL is asserted by the meta-bandit test.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import seed_overrides

from deploy.config import TrainConfig, compose
from deploy.train import run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # loaded machines: see GUARD


def load_config(*overrides: str) -> TrainConfig:
    return compose(overrides)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import ray

    from common.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


COMMON = ("deploy.serve_metrics=false", "run.plot=false", "run.eval_every_s=15")
GUARD = "run.max_seconds=1500"  # a hang guard only: no repeat came near it, loaded or not


# Budgets (learner updates) and bars of the fixed-budget tests; "10 repeats" = seeds 0-9 of
# benchmarks/test_repeats.py on the 2-core VM (2026-12-07), the figures in the docstrings.
BANDIT_UPDATES, BANDIT_BAR = 1800, 0.56
HER_UPDATES, HER_EPISODES, HER_BAR, HER_GAP = 6000, 100, 0.5, 0.3
POPGYM_UPDATES = 6000


def budget(updates: int) -> tuple[str, ...]:
    """A run budgeted in learner updates alone (env steps follow through the rate limiter)."""
    return (f"run.max_updates={updates}", "run.max_env_steps=0", GUARD)


def show(summary: dict, *extra: str) -> dict:
    keys = ("env_steps", "updates", "train_seconds", "final_eval_return", "solved", *extra)
    shown = {k: summary.get(k) for k in keys}
    print(shown)
    return shown


def test_tmaze_reaches_the_optimal_return(tmp_path, learning_seed, figure):
    """T-Maze H=10: greedy return >= 0.95 of the optimum 1.0 (memoryless policies get 0.5).
    Stops at the first greedy evaluation at 1.0 (the preset's stop return). 10 repeats: 10/10
    at 1.0; budget 12,000 updates (the slowest seed known needed 5,800)."""
    cfg = load_config("experiment=tmaze", *budget(12000), *COMMON, *seed_overrides(learning_seed))
    summary = run_training(cfg, tmp_path)
    show(summary)
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.95)
    assert summary["actor_restarts"] == 0


def test_tmaze_with_two_data_parallel_learners(tmp_path, learning_seed, figure):
    """The same T-Maze threshold with ``learner.num_learners=2``: two learner ranks (gloo)
    averaging gradients, each sampling its own batches from the shared replay. Stops at the
    first greedy evaluation at the optimum. 10 repeats: 10/10, final return 1.0 each."""
    cfg = load_config(
        "experiment=tmaze",
        "learner.num_learners=2",
        "learner.worker.num_cpus=0.5",  # two ranks and two rollout actors on 2 logical CPUs
        *budget(12000),
        *COMMON,
        "run.eval_every_s=8",
        *seed_overrides(learning_seed),
    )
    summary = run_training(cfg, tmp_path)
    show(summary)
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.95)
    assert summary["learner_restarts"] == 0 and summary["actor_restarts"] == 0
    assert summary["final_checkpoint"].endswith(".pt")  # rank 0's, at the group's version


def test_meta_bandit_explores_in_context(tmp_path, learning_seed, figure):
    """5-armed meta-bandit, 20-pull trials: late-trial reward per pull clearly above the best
    any memoryless policy can get (0.26 = mean arm payoff: it cannot tell tasks apart).
    1,800 updates; 10 repeats: 10/10, 0.850-0.914 (median 0.891) against the bar 0.56."""
    cfg = load_config(
        "experiment=bandit", *budget(BANDIT_UPDATES), *COMMON, *seed_overrides(learning_seed)
    )
    summary = run_training(cfg, tmp_path)
    late = float(np.mean(summary["final_eval_by_episode"][10:]))
    show(summary)
    figure("late_reward_per_pull", late, ">=", BANDIT_BAR)
    assert BANDIT_BAR > 0.26


@pytest.mark.timeout(3600)  # two runs; ~4 min on a quiet machine
def test_hindsight_relabeling_solves_the_sparse_goal_task(tmp_path, learning_seed, figure):
    """GoalGrid, k=2 goals per instruction: with the same budget (updates) and seeds, hindsight
    relabeling reaches a success rate (whole instruction completed) that training on the raw
    sparse rewards does not. 10 repeats (seeds 0-9, 6,000 updates per arm, 100 final episodes):
    relabeled success 0.75-0.84 (median 0.81), minus no relabeling 0.48-0.67 (median 0.59; no
    relabeling 0.16-0.30); bars 0.5 and 0.3."""
    results = {}
    for arm, p in (("relabel", 0.8), ("none", 0.0)):
        cfg = load_config(
            "experiment=goal_grid",
            *budget(HER_UPDATES),
            f"replay.relabel_kwargs.p_relabel={p}",
            f"run.final_eval_episodes={HER_EPISODES}",
            *COMMON,
            *seed_overrides(learning_seed),
        )
        summary = run_training(cfg, tmp_path / arm)
        results[arm] = summary["final_eval_success"]
        print(arm, show(summary, "final_eval_success"))
    figure("relabel_success", results["relabel"], ">=", HER_BAR)
    figure("relabel_minus_none", results["relabel"] - results["none"], ">=", HER_GAP)


def test_popgym_repeat_previous_learns_through_a_sliding_window(tmp_path, learning_seed, figure):
    """POPGym RepeatPreviousEasy (repeat the card seen 4 steps ago; 52-timestep episodes) with
    the generic defaults, the env preset only, and a training window of 16 timesteps: rollouts
    outlast the window 3x, so actors act through the same sliding window training sees. A
    memoryless policy guesses (return about -0.5); the threshold is far above it. Stops as soon
    as a greedy evaluation reaches 0.8: stopping at the bar itself left the final evaluation
    (50 fresh rollouts) a coin flip away from it (a repeat stopped at an evaluation just over
    0.5 and scored 0.569 in the final one). 10 repeats with the stop at 0.8: 10/10, final
    return 0.861-0.982 (median 0.951); again after the generic defaults began deriving the
    discounts from the env's (dense) rewards and streaming rollouts in chunks (2026-12-07):
    10/10, 0.959-1.000 (median 0.984); with the dense rewards scaled to 10 (c4a6b6e): 6/6,
    0.879-0.989 (median 0.962), 42 s a run."""
    threshold = 0.5
    cfg = load_config(
        "env=popgym",
        "learner.max_seq_len=16",
        "run.stop_at_return=0.8",
        *budget(POPGYM_UPDATES),
        *COMMON,
        *seed_overrides(learning_seed),
    )
    summary = run_training(cfg, tmp_path)
    show(summary)
    assert cfg.learner.max_seq_len * 3 <= 52
    figure("final_eval_return", summary["final_eval_return"], ">=", threshold)  # memoryless -0.5


MINIGRID_UPDATES = 3000


def test_minigrid_learns_from_pixels_with_the_plain_env_id(tmp_path, learning_seed, figure):
    """MiniGrid-Empty-Random-5x5-v0 through the plain ``env.id`` and the generic defaults:
    the 7x7 view (one-hot cells, the derived small CNN), direction and mission words, a random start
    position and heading, so only the image says where the goal is. A random policy returns
    0.325 (300 episodes, all 7 actions); the optimum is about 0.95 (reward 1 - 0.9 x steps /
    100). Stops once a greedy evaluation reaches 0.93; the final one (56 fresh rollouts) must
    clear 0.7. Stopping at 0.9 was too early: a seed stopped at an evaluation of 0.90 scored
    0.68 in the final one. 5 repeats (seeds 0-4, 2026-12-08), the view as codes / 255: 5/5,
    final 0.945-0.955; with the one-hot cells (OneHotCells, what runs now): 5/5, final 0.832,
    0.863, 0.964, 0.964, 0.969, 107-268 s a run (three shared the cores with another test),
    so the bar is 0.7, not 0.8."""
    pytest.importorskip("minigrid")
    cfg = load_config(
        "env.id=MiniGrid-Empty-Random-5x5-v0",
        "run.stop_at_return=0.93",
        *budget(MINIGRID_UPDATES),
        *COMMON,
        *seed_overrides(learning_seed),
    )
    summary = run_training(cfg, tmp_path)
    show(summary)
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.7)  # random 0.325


def test_two_tmazes_in_one_run(tmp_path, learning_seed, figure):
    """Multi-task (``experiment=multitask``): T-Mazes of 4 and 8 steps in one run, one actor
    each, replay sampled uniformly over the tasks, evaluated per task. Stops at the first
    evaluation round where each task reached its own threshold (0.95 and 0.9; a memoryless
    policy gets at most 0.5 on either); the final per-task greedy returns must clear them."""
    cfg = load_config(
        "experiment=multitask",
        *budget(12000),
        *COMMON,
        "run.eval_every_s=8",
        "deploy.serve_metrics=true",  # to check the per-task series in the final scrape
        *seed_overrides(learning_seed),
    )
    thresholds = {t.name: t.stop_at_return for t in cfg.env.task_list()}
    assert thresholds == {"tmaze4": 0.95, "tmaze8": 0.9}
    summary = run_training(cfg, tmp_path)
    by_task = {t: r["return"] for t, r in summary["final_eval_by_task"].items()}
    show(summary)
    print(by_task)
    assert summary["actor_tasks"] == ["tmaze4", "tmaze8"]
    assert summary["solved"] is not None, summary["evals"]
    assert all(summary["solved"]["by_task"][t] >= thr for t, thr in thresholds.items())
    # final: 56 fresh rollouts per task
    figure("worst_task_margin", min(by_task[t] - thr for t, thr in thresholds.items()), ">=", -0.05)
    assert summary["actor_restarts"] == 0
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    from deploy.run.scrape import read_dump

    tasks_of = {"amago_actor_episode_return": set(), "amago_eval_return": set()}
    for text in read_dump(Path(summary["metrics_dump"])).values():
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name in tasks_of:
                    tasks_of[smp.name].add(smp.labels.get("task"))
    assert tasks_of["amago_eval_return"] == {"tmaze4", "tmaze8"}
    assert {"tmaze4", "tmaze8"} <= tasks_of["amago_actor_episode_return"]
