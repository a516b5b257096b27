"""GoalGrid: a procedurally generated gridworld with k-goal instructions.

Every episode draws a new layout of a ``size x size`` room: ``num_obstacles`` wall cells (the
free cells always stay connected), one object of each of ``num_object_types`` types and the
agent, all on distinct random cells. The instruction names ``num_goals`` distinct object types
in a random order ("reach the type-2 object, then the type-0 object"); a goal is the one-hot
vector of an object type (``goal_dim = num_object_types``). The agent achieves a goal whenever
a step leaves it on an object's cell. Rewards come from :mod:`common.goals` (reward function
``"exact"``): 1 for each instruction goal reached in order (reaching an object out of order
pays nothing); the episode terminates when all k are reached, or is truncated at
``max_steps`` (default ``4 * size * num_goals``).

Observation ``"observation"`` (float32, ``size * size * (2 + num_object_types)``): the full
grid, cell-major (index ``(x * size + y) * C + c``) with channels ``[wall, agent, object type
0, ..., object type T-1]``; or, with ``observation="relative"``, an egocentric summary (float32,
``4 + 2 * num_object_types``): whether each of the 4 moves is blocked, then every object
type's displacement from the agent divided by ``size - 1`` (much faster to learn on a CPU);
:class:`common.envs.goal_wrapper.GoalConditioned` adds ``"goals"`` and ``"goal_progress"``.
Actions (Discrete 4): 0 up (y+1), 1 down (y-1), 2 left (x-1), 3 right (x+1); moving into a
wall or the border leaves the agent in place.

``amago/GoalGrid-v0`` is this env already wrapped in ``GoalConditioned`` (:func:`make_goal_grid`).

Rendering (``render_mode="rgb_array"``): a header row with the instruction's object types in
order, then the room with y up: walls dark, each object type its own colour, the agent white.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from common.envs.goal_wrapper import GoalConditioned
from common.goals import GoalSpec

#: (dx, dy) of each action.
MOVES = np.array([[0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.int64)
_MAX_LAYOUT_TRIES = 1000


def _connected(free: np.ndarray) -> bool:
    """Whether the True cells of a (size, size) grid form one 4-connected component."""
    cells = np.argwhere(free)
    if len(cells) == 0:
        return True
    seen = np.zeros_like(free)
    stack = [tuple(cells[0])]
    seen[stack[0]] = True
    count = 0
    n = free.shape[0]
    while stack:
        x, y = stack.pop()
        count += 1
        for dx, dy in MOVES:
            nx, ny = x + dx, y + dy
            if 0 <= nx < n and 0 <= ny < n and free[nx, ny] and not seen[nx, ny]:
                seen[nx, ny] = True
                stack.append((nx, ny))
    return count == len(cells)


class GoalGrid(gym.Env):
    """The unwrapped gridworld; implements :class:`common.goals.GoalTask` (module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        size: int = 6,
        num_goals: int = 2,
        num_object_types: int = 4,
        num_obstacles: int = 4,
        max_steps: int | None = None,
        observation: str = "grid",
        render_mode: str | None = None,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if not 1 <= num_goals <= num_object_types:
            raise ValueError("need 1 <= num_goals <= num_object_types")
        if num_obstacles < 0 or num_obstacles + num_object_types + 1 > size * size:
            raise ValueError("the obstacles, objects and agent do not fit in the grid")
        self.size, self.num_goals = int(size), int(num_goals)
        self.num_types, self.num_obstacles = int(num_object_types), int(num_obstacles)
        self.max_steps = int(max_steps) if max_steps is not None else 4 * self.size * self.num_goals
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if observation not in ("grid", "relative"):
            raise ValueError(f"observation must be 'grid' or 'relative', got {observation!r}")
        self.observation = observation
        self.channels = 2 + self.num_types
        n_obs = self.size * self.size * self.channels
        if observation == "relative":
            self.observation_space = gym.spaces.Box(
                -1.0, 1.0, shape=(4 + 2 * self.num_types,), dtype=np.float32
            )
        else:
            self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(n_obs,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.goal_spec = GoalSpec(
            num_goals=self.num_goals,
            goal_dim=self.num_types,
            max_achieved=1,
            reward_fn="exact",
            low=0.0,
            high=1.0,
        )
        self._eye = np.eye(self.num_types, dtype=np.float32)
        self.walls = np.zeros((self.size, self.size), dtype=bool)
        self.objects = np.full((self.size, self.size), -1, dtype=np.int64)  # type per cell
        self.object_cells = np.zeros((self.num_types, 2), dtype=np.int64)
        self.instruction_types = np.arange(self.num_goals)
        self.pos = np.zeros(2, dtype=np.int64)
        self._static = np.zeros(n_obs, dtype=np.float32)
        self._t = 0

    @property
    def max_episode_steps(self) -> int:
        return self.max_steps

    def _generate(self, rng: np.random.Generator) -> None:
        n = self.size
        for _ in range(_MAX_LAYOUT_TRIES):
            order = rng.permutation(n * n)
            walls = np.zeros(n * n, dtype=bool)
            walls[order[: self.num_obstacles]] = True
            if _connected(~walls.reshape(n, n)):
                break
        else:  # pragma: no cover - only for absurdly dense obstacle settings
            raise RuntimeError("could not generate a connected layout; use fewer obstacles")
        self.walls = walls.reshape(n, n)
        cells = order[self.num_obstacles : self.num_obstacles + self.num_types + 1]
        xy = np.stack([cells // n, cells % n], axis=1)
        self.object_cells = xy[: self.num_types]
        self.pos = xy[self.num_types].copy()
        self.objects = np.full((n, n), -1, dtype=np.int64)
        self.objects[self.object_cells[:, 0], self.object_cells[:, 1]] = np.arange(self.num_types)
        grid = np.zeros((n, n, self.channels), dtype=np.float32)
        grid[..., 0] = self.walls
        grid[self.object_cells[:, 0], self.object_cells[:, 1], 2 + np.arange(self.num_types)] = 1
        self._static = grid.reshape(-1)
        self.instruction_types = rng.choice(self.num_types, size=self.num_goals, replace=False)

    def _obs(self) -> np.ndarray:
        if self.observation == "relative":
            return self._relative_obs()
        obs = self._static.copy()
        obs[(self.pos[0] * self.size + self.pos[1]) * self.channels + 1] = 1.0
        return obs

    def _relative_obs(self) -> np.ndarray:
        n = self.size
        nxt = self.pos + MOVES  # (4, 2)
        inside = ((nxt >= 0) & (nxt < n)).all(axis=1)
        blocked = ~inside
        blocked[inside] = self.walls[nxt[inside, 0], nxt[inside, 1]]
        rel = (self.object_cells - self.pos) / (n - 1)  # (T, 2)
        return np.concatenate([blocked.astype(np.float32), rel.reshape(-1).astype(np.float32)])

    # --- GoalTask --------------------------------------------------------------------------
    def instruction(self) -> np.ndarray:
        return self._eye[self.instruction_types]  # (k, T)

    def achieved_goals(self) -> np.ndarray:
        kind = self.objects[self.pos[0], self.pos[1]]
        return self._eye[kind : kind + 1] if kind >= 0 else self._eye[:0]  # (0 or 1, T)

    # --- gym.Env ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._generate(self.np_random)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        nxt = self.pos + MOVES[int(action)]
        n = self.size
        if 0 <= nxt[0] < n and 0 <= nxt[1] < n and not self.walls[nxt[0], nxt[1]]:
            self.pos = nxt
        self._t += 1
        truncated = self._t >= self.max_steps
        return self._obs(), 0.0, False, truncated, {}

    def render(self) -> np.ndarray | None:
        """An ``rgb_array`` frame (uint8, 32 px per cell, one header row), or None when the env
        was not made with ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        n, c = self.size, 32
        img = np.full(((n + 1) * c, n * c, 3), 220, dtype=np.uint8)
        img[:c] = 255

        def fill(row: int, col: int, color, margin: int) -> None:
            y0, x0 = row * c + margin, col * c + margin
            img[y0 : y0 + c - 2 * margin, x0 : x0 + c - 2 * margin] = color

        for i, kind in enumerate(self.instruction_types[:n]):  # the instruction, in order
            fill(0, i, _PALETTE[int(kind) % len(_PALETTE)], 6)
        for x in range(n):
            for y in range(n):
                row = n - y  # y grows upwards, below the header
                fill(row, x, (50, 50, 50) if self.walls[x, y] else (200, 200, 200), 1)
                kind = self.objects[x, y]
                if kind >= 0:
                    fill(row, x, _PALETTE[int(kind) % len(_PALETTE)], 4)
        fill(n - int(self.pos[1]), int(self.pos[0]), (255, 255, 255), 10)
        return img


#: Colours of object types in :meth:`GoalGrid.render` (cycled past 8 types).
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def make_goal_grid(**kwargs) -> gym.Env:
    """``GoalConditioned(GoalGrid(**kwargs))`` — the registered ``amago/GoalGrid-v0``."""
    return GoalConditioned(GoalGrid(**kwargs))
