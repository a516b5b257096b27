"""Optional MiniGrid/BabyAI tasks (PyPI ``minigrid``, not a dependency of this project; the
``minigrid`` extra installs it).

Importing ``minigrid`` registers its tasks with gymnasium (``MiniGrid-MemoryS7-v0``,
``BabyAI-GoToObj-v0``, ...): an id with one of :data:`MINIGRID_PREFIXES` imports it first, as
``minigrid:MiniGrid-MemoryS7-v0`` does. Nothing else is needed: :class:`Standardize` keeps the
7x7x3 uint8 ``image`` (the CNN's input), one-hots ``direction`` and turns the ``mission`` text
into word ids (:mod:`common.envs.text`); the factory reads the episode limit from the env's own
``max_steps`` attribute (BabyAI levels set it on each reset: give them ``kwargs.max_steps``).
"""

from __future__ import annotations

import importlib
import importlib.util

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
