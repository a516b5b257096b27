"""PointGoal: continuous meta-RL navigation to a hidden goal on a half circle.

The "point robot" task of PEARL / VariBAD, small. A point starts at the origin of the plane and
moves by ``step_size * action`` each step, the action scaled down to norm 1 if longer
(so ``step_size`` is the top speed in every direction; positions clipped to ``[-bound,
bound]``). The *task* is a goal ``(cos a, sin a)`` on the upper half of the unit circle,
``a ~ U[0, pi]``, which the agent never sees: it is told only its own position and, as the
reward, minus its distance to the goal. Run it as a meta-RL trial (``EnvConfig(trial_episodes=k)``,
the goal kept for k episodes): an agent that infers the goal from the rewards (a few steps
in the first episode) can walk straight to it, and in later episodes from the first step.

Figures (defaults: step 0.1, 20 steps, unit half circle):

* informed optimum (goal known from the first step): walk straight at full speed, return
  ``-sum_{k=1..20} max(1 - 0.1 k, 0)`` = **-4.5** per episode (:attr:`optimal_return`);
* best memoryless policy (it cannot tell goals apart: the same walk for every goal): head for
  the point that minimises the expected distance to a goal on the half circle and stay there,
  about **-14.9** per episode (:attr:`memoryless_return`, computed, not guessed: an exact
  expectation over goals, minimised over target points on the axis of symmetry);
* a uniformly random policy: about -20.6.

Observation: float32 ``(2,)``, the position. Actions: ``Box(-1, 1, (2,))``. Time limit:
``max_steps`` (default 20).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np


class PointGoal(gym.Env):
    """A point walking to a goal it cannot see; implements ``TaskSampler`` (module doc).

    A task is a float64 array ``[goal_x, goal_y]``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        max_steps: int = 20,
        step_size: float = 0.1,
        bound: float = 1.5,
        render_mode: str | None = None,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not 0.0 < step_size <= bound:
            raise ValueError(f"need 0 < step_size <= bound, got {step_size}, {bound}")
        if bound < 1.0:
            raise ValueError(f"bound must be >= 1 (the goals lie on the unit circle), got {bound}")
        self.render_mode = render_mode
        self.max_steps, self.step_size, self.bound = int(max_steps), float(step_size), float(bound)
        self.observation_space = gym.spaces.Box(-self.bound, self.bound, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pinned: np.ndarray | None = None
        self.goal = np.array([0.0, 1.0])
        self.pos = np.zeros(2)
        self._t = 0
        self._path: list[np.ndarray] = []  # rendering only

    @property
    def max_episode_steps(self) -> int:
        return self.max_steps

    # -- tasks -----------------------------------------------------------------------------
    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        a = rng.uniform(0.0, np.pi)
        return np.array([np.cos(a), np.sin(a)])

    def set_task(self, task: Any | None) -> None:
        self._pinned = None if task is None else np.asarray(task, dtype=np.float64).copy()

    # -- figures ---------------------------------------------------------------------------
    def _walk_return(self, target: np.ndarray, goals: np.ndarray) -> float:
        """Mean return over ``goals`` (N, 2) of walking from the origin to ``target`` at full
        speed and staying there (what a policy blind to the goal can do at best)."""
        dist = float(np.linalg.norm(target))
        steps = np.arange(1, self.max_steps + 1)
        frac = np.minimum(steps * self.step_size / max(dist, 1e-12), 1.0)[:, None]  # (T, 1)
        path = frac * target[None]  # (T, 2)
        d = np.linalg.norm(path[:, None] - goals[None], axis=-1)  # (T, N)
        return float(-d.sum(0).mean())

    @cached_property
    def memoryless_return(self) -> float:
        """Best expected episode return of a policy that ignores rewards (module doc)."""
        a = (np.arange(2000) + 0.5) / 2000 * np.pi
        goals = np.stack([np.cos(a), np.sin(a)], 1)
        ys = np.linspace(0.0, 1.0, 201)
        return max(self._walk_return(np.array([0.0, y]), goals) for y in ys)

    @property
    def optimal_return(self) -> float:
        """Episode return of walking straight to a known goal."""
        k = np.arange(1, self.max_steps + 1)
        return float(-np.maximum(1.0 - self.step_size * k, 0.0).sum())

    # -- gym API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.goal = self.sample_task(self.np_random) if self._pinned is None else self._pinned
        self.pos = np.zeros(2)
        self._t = 0
        self._path = [self.pos.copy()]
        return self.pos.astype(np.float32), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(2)
        a = a / max(1.0, float(np.linalg.norm(a)))
        self.pos = np.clip(self.pos + self.step_size * a, -self.bound, self.bound)
        self._t += 1
        self._path.append(self.pos.copy())
        dist = float(np.linalg.norm(self.pos - self.goal))
        truncated = self._t >= self.max_steps
        return self.pos.astype(np.float32), -dist, False, truncated, {"distance": dist}

    def render(self) -> np.ndarray | None:
        """An ``rgb_array`` frame (uint8, 96 x 96): the half circle of goals grey, the goal
        green, the path so far blue; None unless made with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        n = 96
        img = np.full((n, n, 3), 235, dtype=np.uint8)

        def px(p: np.ndarray) -> tuple[int, int]:
            x = int((p[0] + self.bound) / (2 * self.bound) * (n - 1))
            y = int((self.bound - p[1]) / (2 * self.bound) * (n - 1))
            return min(max(y, 0), n - 1), min(max(x, 0), n - 1)

        for a in np.linspace(0, np.pi, 60):
            img[px(np.array([np.cos(a), np.sin(a)]))] = (160, 160, 160)
        for p in self._path:
            img[px(p)] = (30, 90, 220)
        r, c = px(self.goal)
        img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = (60, 180, 75)
        return img
