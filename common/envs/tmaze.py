"""T-Maze: the classic memory task (Ni et al. 2023, used by AMAGO's examples).

The agent starts at the left end of a corridor of length H and sees, at t = 0 only, a hint
(+1 or -1) telling which arm of the T at the far end holds the reward. It walks right H
steps to the junction and there picks up or down: +1 for the hinted arm, 0 for the other,
ending the episode. Any step that does not move it forward costs 1/H, so moving right is
learnable from dense reward while the final choice needs H steps of memory.

Optimal return: 1.0. A memoryless policy can only guess at the junction: 0.5.

Observation (float32, 3): [hint (t = 0 only, else 0), x / H, at_junction].
Actions (Discrete 4): 0 right, 1 left, 2 up, 3 down. Up/down away from the junction and
right at the junction leave the agent in place (and cost 1/H).
Time limit: H + 1 steps (exactly enough for the optimal path).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class TMaze(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 10):
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        self.H = int(corridor_length)
        self.max_steps = self.H + 1
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._x = 0
        self._t = 0
        self._goal = 1

    @property
    def max_episode_steps(self) -> int:
        """Own time limit (read by the env factory)."""
        return self.max_steps

    def _obs(self) -> np.ndarray:
        hint = float(self._goal) if self._t == 0 else 0.0
        return np.array([hint, self._x / self.H, float(self._x == self.H)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._t = 0, 0
        self._goal = 1 if self.np_random.random() < 0.5 else -1
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        self._t += 1
        reward, terminated = 0.0, False
        if self._x == self.H and a in (2, 3):
            reward = 1.0 if (a == 2) == (self._goal == 1) else 0.0
            terminated = True
        elif a == 0 and self._x < self.H:
            self._x += 1
        else:
            if a == 1 and self._x > 0:
                self._x -= 1
            reward = -1.0 / self.H
        truncated = not terminated and self._t >= self.max_steps
        return self._obs(), reward, terminated, truncated, {"success": reward > 0.5}
