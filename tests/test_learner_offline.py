"""Offline learning on T-Maze (H=10): the learner alone, from a fixed dataset of scripted
mixed-quality rollouts, must learn the memory task; a memoryless encoder must not.

The behaviour policy walks right with probability 0.9 (else a random other action, which
wastes the step and, with the H + 1 time limit, the episode) and at the junction picks the
hinted arm only half of the time: filtered BC + the critic must pick out the good actions,
and remembering the hint from t = 0 is the only way past a return of 0.5.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from common.envs.tmaze import TMaze
from common.records import StepInput, Trajectory, TrajectoryMeta
from common.spec import EnvSpec
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import collate, tiny_model

H = 10
N_ACTIONS = 4


def tmaze_spec() -> EnvSpec:
    env = TMaze(H)
    return EnvSpec.from_spaces(env.observation_space, env.action_space, env.max_steps)


def scripted_episode(env: TMaze, rng: np.random.Generator, seed: int) -> Trajectory:
    """One rollout of the mixed-quality behaviour policy, stored as records.Trajectory."""
    obs, _ = env.reset(seed=seed)
    hint = obs[0]
    eye = np.eye(N_ACTIONS, dtype=np.float32)
    o, pa, pr, term, trunc = [obs], [np.zeros(N_ACTIONS, np.float32)], [0.0], [False], [False]
    while True:
        at_junction = obs[2] > 0.5
        if at_junction:
            good = 2 if hint > 0 else 3
            a = good if rng.random() < 0.5 else 5 - good
        else:
            a = 0 if rng.random() < 0.9 else int(rng.integers(1, N_ACTIONS))
        obs, r, terminated, truncated, _ = env.step(a)
        o.append(obs)
        pa.append(eye[a])
        pr.append(r)
        term.append(terminated)
        trunc.append(truncated)
        if terminated or truncated:
            break
    n = len(o)
    return Trajectory(
        obs={"observation": np.stack(o).astype(np.float32)},
        prev_action=np.stack(pa),
        prev_reward=np.array(pr, dtype=np.float32),
        time_idx=np.arange(n, dtype=np.int32),
        terminated=np.array(term),
        truncated=np.array(trunc),
        meta=TrajectoryMeta(env_id="amago/TMaze-v0"),
    )


def greedy_return(learner: AmagoLearner, episodes: int, seed: int) -> float:
    """Mean return of the learner's greedy InferencePolicy on fresh episodes (batched)."""
    policy = learner.make_policy(num_slots=episodes, context_len=H + 2)
    envs = [TMaze(H) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    prev_a = np.zeros((episodes, N_ACTIONS), np.float32)
    prev_r = np.zeros(episodes, np.float32)
    returns = np.zeros(episodes)
    live = np.ones(episodes, dtype=bool)
    for t in range(H + 1):
        slots = np.flatnonzero(live)
        step = StepInput(
            obs={"observation": obs[slots]},
            prev_action=prev_a[slots],
            prev_reward=prev_r[slots],
            time_idx=np.full(len(slots), t, np.int64),
        )
        actions = policy.act(step, slots, greedy=True)
        for s, a in zip(slots, actions):
            o, r, terminated, truncated, _ = envs[s].step(int(a))
            obs[s], prev_r[s] = o, r
            prev_a[s] = np.eye(N_ACTIONS, dtype=np.float32)[a]
            returns[s] += r
            if terminated or truncated:
                live[s] = False
        if not live.any():
            break
    return float(returns.mean())


#: A learning test stops once a greedy check on these episodes (not the asserted ones) reaches
#: its bar, looked at every CHECK_EVERY updates; the asserted figure is then measured afresh.
CHECK_SEED, CHECK_EVERY = 7, 100


def train_offline(
    encoder: str, updates: int, seed: int = 0, stop_at: float | None = None, **overrides
) -> tuple[AmagoLearner, float]:
    """A learner trained on 600 scripted episodes for ``updates`` updates, or fewer once a
    greedy check (50 episodes from CHECK_SEED) reaches ``stop_at``; and the seconds it took."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = TMaze(H)
    data = [scripted_episode(env, rng, seed=10_000 * seed + i) for i in range(600)]
    model = tiny_model(64, encoder=encoder, dropout=0.0)
    cfg = LearnerConfig(
        model=model,
        max_seq_len=H + 2,
        lr=1e-3,
        warmup_steps=50,
        tau=0.01,
        device="cpu",
        num_threads=1,
        seed=seed,
        **overrides,
    )
    learner = AmagoLearner(tmaze_spec(), cfg)
    t0 = time.perf_counter()
    for u in range(1, updates + 1):
        rows = rng.integers(len(data), size=24)
        learner.train_step(collate([data[i] for i in rows], H + 2))
        if stop_at is not None and u % CHECK_EVERY == 0:
            if greedy_return(learner, episodes=50, seed=CHECK_SEED) >= stop_at:
                break
    return learner, time.perf_counter() - t0


def test_behaviour_data_is_mixed_quality():
    rng = np.random.default_rng(0)
    env = TMaze(H)
    rets = np.array([scripted_episode(env, rng, seed=i).total_return for i in range(400)])
    success = (rets > 0.5).mean()
    assert 0.1 < success < 0.3  # ~0.35 reach the junction, half of them pick the hinted arm
    assert rets.mean() < 0.3  # far below the optimal return of 1.0


# Seeds: CI runs AMAGO_TEST_SEED=0; benchmarks/test_repeats.py runs seeds 0-9 (each seeds the
# data, the model and the evaluation episodes' offsets). The bars and what 10 repeats measured
# are in each test's docstring.


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_offline_tmaze_sequence_model_learns_memory(encoder, learning_seed, figure):
    """Up to 1,500 updates from the scripted data reach the greedy optimum (bar 0.95; a
    memoryless policy gets at most 0.5, the data's mean return is ~0.2); stops once a check on
    other episodes reaches the bar (transformer, seed 0: 1.0 from update 100 on). 10 repeats
    with the stop (2026-12-08): 10/10, 1.0 each, both encoders."""
    learner, _ = train_offline(encoder, updates=1500, seed=learning_seed, stop_at=0.95)
    figure("greedy_return", greedy_return(learner, episodes=50, seed=123), ">=", 0.95)


@pytest.mark.slow
def test_offline_tmaze_amago2_learns_memory(learning_seed, figure):
    """AMAGO-2 (bin critics, filtered-BC actor) on the same data, seed 1 (+ AMAGO_TEST_SEED):
    with plain cross-entropy its critic stayed hint-blind (0.5) on seed 1; weighted by the
    value error (the default ``critic_loss_weighting``) it learns the hint (checks at 0.4-0.6
    up to update 700, 1.0 from 800 on); stops once a check on other episodes reaches the bar.
    10 repeats with the stop (2026-12-08): 10/10, 1.0 each, 25-108 s (shared machine; 106 s
    at the full 1,500 updates before)."""
    learner, _ = train_offline(
        "transformer", updates=1500, seed=1 + learning_seed, variant="amago2", stop_at=0.95
    )
    assert learner.cfg.critic_loss_weighting == "error"
    figure("greedy_return", greedy_return(learner, episodes=50, seed=123), ">=", 0.95)


@pytest.mark.slow
def test_offline_tmaze_memoryless_fails(learning_seed, figure):
    """The control: a memoryless (MLP) encoder with the same data and updates cannot tell the
    arms apart at the junction, so it stays near 0.5 (bar < 0.6)."""
    learner, _ = train_offline("mlp", updates=1500, seed=learning_seed)
    figure("greedy_return", greedy_return(learner, episodes=50, seed=123), "<", 0.6)
