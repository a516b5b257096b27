"""MetaBandit: a k-armed Bernoulli bandit for in-context exploration.

Each *episode is one pull*: ``reset`` shows a constant observation, ``step(arm)`` pays 1 with
the arm's probability and terminates. The *task* is the vector of arm probabilities: one good
arm (``p_hi``, index uniform at random) and ``arms - 1`` bad ones (``p_lo``). Run it as a meta-RL
trial of many pulls (``EnvConfig(trial_episodes=20)``): the task is fixed for the whole trial, so
an agent that remembers which arms paid can find the good arm and exploit it.

Figures (defaults: 5 arms, p_hi 0.9, p_lo 0.1):

* best memoryless policy (it cannot tell tasks apart, so any fixed arm or arm distribution):
  ``(p_hi + (arms - 1) * p_lo) / arms`` = **0.26** per pull, early or late in the trial;
* optimal late-trial reward per pull (good arm identified): ``p_hi`` = **0.9**; a simple
  explore-then-exploit script (pull each arm once, then the arm with the best mean so far, ties
  broken by fewest pulls) gets ~0.86 over pulls 11-20 of a 20-pull trial.

Observation: float32 ``(1,)``, always 0 (the information is in the rewards). Actions:
``Discrete(arms)``. Time limit: 1 step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class MetaBandit(gym.Env):
    """One pull of a k-armed Bernoulli bandit; implements ``TaskSampler`` (module doc)."""

    metadata = {"render_modes": []}

    def __init__(self, arms: int = 5, p_hi: float = 0.9, p_lo: float = 0.1):
        if arms < 2:
            raise ValueError(f"arms must be >= 2, got {arms}")
        if not 0.0 <= p_lo < p_hi <= 1.0:
            raise ValueError(f"need 0 <= p_lo < p_hi <= 1, got p_lo={p_lo}, p_hi={p_hi}")
        self.arms, self.p_hi, self.p_lo = int(arms), float(p_hi), float(p_lo)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.arms)
        self._pinned: np.ndarray | None = None
        self.probs = np.full(self.arms, self.p_lo)

    @property
    def max_episode_steps(self) -> int:
        return 1

    @property
    def memoryless_reward(self) -> float:
        """Expected reward per pull of the best policy that ignores the history."""
        return (self.p_hi + (self.arms - 1) * self.p_lo) / self.arms

    @property
    def optimal_reward(self) -> float:
        """Expected reward per pull once the good arm is known."""
        return self.p_hi

    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        probs = np.full(self.arms, self.p_lo)
        probs[int(rng.integers(self.arms))] = self.p_hi
        return probs

    def set_task(self, task: Any | None) -> None:
        self._pinned = None if task is None else np.asarray(task, dtype=np.float64).copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.probs = self.sample_task(self.np_random) if self._pinned is None else self._pinned
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        arm = int(action)
        reward = float(self.np_random.random() < self.probs[arm])
        info = {"good_arm": int(np.argmax(self.probs)), "regret": self.p_hi - self.probs[arm]}
        return np.zeros(1, dtype=np.float32), reward, True, False, info
