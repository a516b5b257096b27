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

Rendering (``render_mode="rgb_array"``): one column per arm, its top strip green for the good
arm, grey for the others; below, every pull of the current task as a block stacked from the
bottom (green paid, red did not); the last pulled arm is marked blue at the bottom. The tally
survives the per-pull resets of a trial (it restarts when the task changes).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class MetaBandit(gym.Env):
    """One pull of a k-armed Bernoulli bandit; implements ``TaskSampler`` (module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        arms: int = 5,
        p_hi: float = 0.9,
        p_lo: float = 0.1,
        render_mode: str | None = None,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if arms < 2:
            raise ValueError(f"arms must be >= 2, got {arms}")
        if not 0.0 <= p_lo < p_hi <= 1.0:
            raise ValueError(f"need 0 <= p_lo < p_hi <= 1, got p_lo={p_lo}, p_hi={p_hi}")
        self.arms, self.p_hi, self.p_lo = int(arms), float(p_hi), float(p_lo)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.arms)
        self._pinned: np.ndarray | None = None
        self.probs = np.full(self.arms, self.p_lo)
        self._pulls: list[list[float]] = [[] for _ in range(self.arms)]  # rendering only
        self._last_arm: int | None = None

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
        self._clear_tally()

    def _clear_tally(self) -> None:
        self._pulls = [[] for _ in range(self.arms)]
        self._last_arm = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._pinned is None:
            self.probs = self.sample_task(self.np_random)
            self._clear_tally()
        else:
            self.probs = self._pinned
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        arm = int(action)
        reward = float(self.np_random.random() < self.probs[arm])
        self._pulls[arm].append(reward)
        self._last_arm = arm
        info = {"good_arm": int(np.argmax(self.probs)), "regret": self.p_hi - self.probs[arm]}
        return np.zeros(1, dtype=np.float32), reward, True, False, info

    def render(self) -> np.ndarray | None:
        """An ``rgb_array`` frame (uint8, 24 px per arm, 96 px high), or None when the env was
        not made with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        w, h, block, top = 24, 96, 4, 8
        img = np.full((h, w * self.arms, 3), 235, dtype=np.uint8)
        good = int(np.argmax(self.probs))
        for arm in range(self.arms):
            x0, x1 = arm * w + 2, (arm + 1) * w - 2
            img[:top, x0:x1] = (60, 180, 75) if arm == good else (150, 150, 150)
            for i, paid in enumerate(self._pulls[arm][: (h - top - block) // block]):
                y1 = h - block - i * block
                img[y1 - block + 1 : y1, x0:x1] = (60, 180, 75) if paid else (200, 60, 60)
            if arm == self._last_arm:
                img[h - block + 1 :, x0:x1] = (30, 90, 220)
        return img
