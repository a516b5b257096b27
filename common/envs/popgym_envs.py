"""Optional POPGym tasks (PyPI ``popgym``, not a dependency of this project).

Importing ``popgym`` registers its tasks with gymnasium under ids like
``popgym-RepeatPreviousEasy-v0``. Nothing else is needed: :class:`Standardize` turns their
``Discrete``/``MultiDiscrete``/``Tuple`` observations into one-hot float arrays and their
``MultiDiscrete`` actions into one flat ``Discrete`` index, and their own episode limit is read
from the ``max_episode_length`` attribute POPGym envs declare.
"""

from __future__ import annotations

import importlib
import importlib.util

from common.config_utils import ConfigError

#: env ids starting with this are POPGym tasks.
POPGYM_PREFIX = "popgym"


def is_popgym_id(env_id: str) -> bool:
    return env_id.startswith(POPGYM_PREFIX)


def popgym_installed() -> bool:
    return importlib.util.find_spec("popgym") is not None


def import_popgym(env_id: str) -> None:
    """Register POPGym's ids, or raise ``ConfigError("id", ...)`` if it is not installed."""
    if not popgym_installed():
        raise ConfigError(
            "id",
            f"{env_id!r} is a POPGym task but the optional package 'popgym' is not installed "
            "(pip install popgym)",
        )
    importlib.import_module("popgym")
