"""Optional MiniGrid/BabyAI tasks (PyPI ``minigrid``, not a dependency of this project; the
``minigrid`` extra installs it).

Importing ``minigrid`` registers its tasks with gymnasium (``MiniGrid-MemoryS7-v0``,
``BabyAI-GoToObj-v0``, ...): an id with one of :data:`MINIGRID_PREFIXES` imports it first, as
``minigrid:MiniGrid-MemoryS7-v0`` does. The factory wraps every MiniGrid env whose ``image`` is
the symbolic cell grid in :class:`OneHotCells` (7x7x3 -> 7x7x20 planes of 0 / 255, the CNN's
input); :class:`Standardize` then one-hots ``direction`` and turns the ``mission`` text into
word ids (:mod:`common.envs.text`); the factory reads the episode limit from the env's own
``max_steps`` attribute (BabyAI levels set it on each reset: give them ``kwargs.max_steps``).
"""

from __future__ import annotations

import importlib
import importlib.util

import gymnasium as gym
import numpy as np

from common.config_utils import ConfigError

#: env ids starting with one of these are MiniGrid/BabyAI tasks.
MINIGRID_PREFIXES = ("MiniGrid-", "BabyAI-")


def is_minigrid_id(env_id: str) -> bool:
    return env_id.startswith(MINIGRID_PREFIXES)


def minigrid_installed() -> bool:
    return importlib.util.find_spec("minigrid") is not None


def import_minigrid(env_id: str) -> None:
    """Register MiniGrid's ids, or raise ``ConfigError("id", ...)`` if it is not installed."""
    if not minigrid_installed():
        raise ConfigError(
            "id",
            f"{env_id!r} is a MiniGrid task but the optional package 'minigrid' is not "
            "installed (pip install minigrid)",
        )
    importlib.import_module("minigrid")


def cell_channels() -> tuple[int, int, int]:
    """Sizes of MiniGrid's three cell codes: object types, colours, door states (11, 6, 3)."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    return len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)


def has_symbolic_image(env: gym.Env) -> bool:
    """Whether ``env`` is a MiniGrid env whose ``image`` observation is its symbolic cell grid
    (the agent's view, or the whole grid under ``FullyObsWrapper``), not RGB pixels."""
    base = env.unwrapped
    if type(base).__module__.split(".")[0] != "minigrid":
        return False
    space = env.observation_space
    box = space.spaces.get("image") if isinstance(space, gym.spaces.Dict) else None
    if not isinstance(box, gym.spaces.Box) or len(box.shape) != 3 or box.shape[2] != 3:
        return False
    view = getattr(base, "agent_view_size", None)
    return tuple(box.shape[:2]) in {(view, view), (base.width, base.height)}


class OneHotCells(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid's ``image`` is not pixels: each cell holds three small codes (object type
    0-10, colour 0-5, door state 0-2). Read as a uint8 image, which the CNN divides by 255, a
    key (5) and a ball (6) differ by 0.004 of the input range; here each code becomes its own
    plane: ``(H, W, 11 + 6 + 3)`` uint8, 255 where the cell has it, else 0."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        sizes = cell_channels()
        self._high = np.array(sizes) - 1  # (3,)
        self._offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (3,)
        h, w, _ = env.observation_space["image"].shape
        self._planes = int(sum(sizes))
        spaces = dict(env.observation_space.spaces)
        spaces["image"] = gym.spaces.Box(0, 255, (h, w, self._planes), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, obs: dict) -> dict:
        codes = np.clip(np.asarray(obs["image"], dtype=np.intp), 0, self._high)  # (H, W, 3)
        planes = np.zeros((*codes.shape[:2], self._planes), np.uint8)  # (H, W, 20)
        np.put_along_axis(planes, codes + self._offset, 255, axis=-1)
        return {**obs, "image": planes}
