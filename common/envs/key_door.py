"""Dark Key-To-Door: the meta-RL gridworld of Algorithm Distillation / AMAGO.

A ``size x size`` room in the dark: the agent sees only its own position, whether it holds the
key and the episode's elapsed time. The *task* fixes three distinct cells — the start, an
invisible key and an invisible door. Reaching the key pays 1 (once); reaching the door while
holding the key pays 1 and ends the episode. So the return of an episode is 0, 1 or 2 (max 2).
Run it as a meta-RL trial (``EnvConfig(trial_episodes=k)``): the task is kept for the k episodes,
so an agent that remembers where it found the key and the door can walk straight to them in
later episodes (trial max return ``2 k``) while the first episode needs exploration.

Observation (float32, 4): ``[x / (size-1), y / (size-1), has_key, t / max_steps]``.
Actions (Discrete 5): 0 up (y+1), 1 down (y-1), 2 left (x-1), 3 right (x+1), 4 stay; moves
into the wall leave the agent in place.
Time limit: ``max_steps`` (default ``4 * size`` = 20 for the default 5x5 room; the informed
path start -> key -> door is at most ``4 * (size - 1) - 1`` = 15 steps, so an agent that
knows the task always gets the full return).

Rendering (``render_mode="rgb_array"``, for a viewer: the agent sees none of it): the room
with y up, the start cell light grey, the key yellow until it is picked up, the door brown,
and the agent blue (with a yellow core once it holds the key).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

#: (dx, dy) of each action.
MOVES = np.array([[0, 1], [0, -1], [-1, 0], [1, 0], [0, 0]], dtype=np.int64)


class DarkKeyToDoor(gym.Env):
    """Dark room with an invisible key and door; implements ``TaskSampler`` (module doc).

    A task is an int64 array ``[[start_x, start_y], [key_x, key_y], [door_x, door_y]]``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, size: int = 5, max_steps: int | None = None, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.size = int(size)
        self.max_steps = int(max_steps) if max_steps is not None else 4 * self.size
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self._pinned: np.ndarray | None = None
        self.task = np.array([[0, 0], [0, 1], [1, 0]], dtype=np.int64)
        self.pos = self.task[0].copy()
        self.has_key = False
        self._t = 0

    @property
    def max_episode_steps(self) -> int:
        return self.max_steps

    @property
    def key(self) -> np.ndarray:
        return self.task[1]

    @property
    def door(self) -> np.ndarray:
        return self.task[2]

    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        cells = rng.choice(self.size * self.size, size=3, replace=False)
        return np.stack([cells // self.size, cells % self.size], axis=1).astype(np.int64)

    def set_task(self, task: Any | None) -> None:
        self._pinned = None if task is None else np.asarray(task, dtype=np.int64).copy()

    def _obs(self) -> np.ndarray:
        scale = self.size - 1
        return np.array(
            [
                self.pos[0] / scale,
                self.pos[1] / scale,
                float(self.has_key),
                self._t / self.max_steps,
            ],
            dtype=np.float32,
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task = self.sample_task(self.np_random) if self._pinned is None else self._pinned
        self.pos = self.task[0].copy()
        self.has_key = False
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + MOVES[int(action)], 0, self.size - 1)
        self._t += 1
        reward, terminated = 0.0, False
        if not self.has_key and (self.pos == self.key).all():
            self.has_key, reward = True, 1.0
        elif self.has_key and (self.pos == self.door).all():
            reward, terminated = 1.0, True
        truncated = not terminated and self._t >= self.max_steps
        info = {"has_key": self.has_key, "success": terminated}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """An ``rgb_array`` frame (uint8, 32 px per cell), or None when the env was not made
        with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        n, c = self.size, 32
        img = np.full((n * c, n * c, 3), 60, dtype=np.uint8)
        img[::c, :] = img[:, ::c] = 90  # grid lines

        def fill(xy, color, margin: int) -> None:
            row = n - 1 - int(xy[1])  # y grows upwards
            y0, x0 = row * c + margin, int(xy[0]) * c + margin
            img[y0 : y0 + c - 2 * margin, x0 : x0 + c - 2 * margin] = color

        fill(self.task[0], (150, 150, 150), 2)
        fill(self.door, (140, 90, 40), 2)
        if not self.has_key:
            fill(self.key, (240, 200, 40), 8)
        fill(self.pos, (30, 90, 220), 6)
        if self.has_key:
            fill(self.pos, (240, 200, 40), 12)
        return img
