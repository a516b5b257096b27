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
Rendering: ``render_mode="rgb_array"`` draws the corridor and the junction's two arms (the
rewarded arm green, the hint as a light green mark beside the start cell on the same side) and
the agent (blue).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class TMaze(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, corridor_length: int = 10, render_mode: str | None = None):
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.H = int(corridor_length)
        self.max_steps = self.H + 1
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._x = 0
        self._t = 0
        self._goal = 1
        self._arm: int | None = None  # the arm chosen at the end (rendering only)

    @property
    def max_episode_steps(self) -> int:
        """Own time limit (read by the env factory)."""
        return self.max_steps

    def _obs(self) -> np.ndarray:
        hint = float(self._goal) if self._t == 0 else 0.0
        return np.array([hint, self._x / self.H, float(self._x == self.H)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._t, self._arm = 0, 0, None
        self._goal = 1 if self.np_random.random() < 0.5 else -1
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        self._t += 1
        reward, terminated = 0.0, False
        if self._x == self.H and a in (2, 3):
            reward = 1.0 if (a == 2) == (self._goal == 1) else 0.0
            terminated = True
            self._arm = a
        elif a == 0 and self._x < self.H:
            self._x += 1
        else:
            if a == 1 and self._x > 0:
                self._x -= 1
            reward = -1.0 / self.H
        truncated = not terminated and self._t >= self.max_steps
        return self._obs(), reward, terminated, truncated, {"success": reward > 0.5}

    def render(self) -> np.ndarray | None:
        """An ``rgb_array`` frame (uint8, 3 cells high, H + 1 wide; even pixel sizes), or None
        when the env was not made with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        cols = self.H + 1
        grid = np.full((3, cols, 3), (40, 40, 40), dtype=np.uint8)  # walls
        grid[1, :] = (210, 210, 210)  # the corridor
        goal_row = 0 if self._goal == 1 else 2  # up = top row
        grid[2 - goal_row, self.H] = (210, 210, 210)
        grid[goal_row, self.H] = (60, 180, 75)
        grid[goal_row, 0] = (150, 220, 160)  # the hint: a mark beside the start, on its side
        row = {None: 1, 2: 0, 3: 2}[self._arm]
        grid[row, self._x] = (30, 90, 220)
        cell = 16 if cols <= 40 else max(2, (640 // cols) & ~1)
        return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
