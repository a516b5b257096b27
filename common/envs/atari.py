"""Optional Atari tasks (PyPI ``ale-py``, which ships the game ROMs; not a dependency of this
project: the ``atari`` extra installs it, with opencv for the preprocessing).

Ids: importing ``ale_py`` registers the ALE's games with gymnasium. An id starting with
:data:`ATARI_PREFIX` (``ALE/Pong-v5``, ``ALE/Breakout-v5``, ...) imports it first, as
``ale_py:ALE/Pong-v5`` does; the older ids without the namespace (``PongNoFrameskip-v4``) need
the module prefix (``ale_py:PongNoFrameskip-v4``).

Episode limit: no ALE id registers a ``max_episode_steps``; the ALE truncates an episode itself
after ``max_num_frames_per_episode`` emulator frames (108,000 for every registered id: 30
minutes of play). :func:`ale_horizon` turns that into agent steps, ``ceil(frames / frames per
step)``: 27,000 for a v5 id (frameskip 4), with or without the preprocessing (which then does
the skipping), 54,000 for v0/v4 ids with a random frameskip of 2 to 4 (the smallest counts).

Preprocessing (``EnvConfig.atari_preprocessing``, :func:`preprocess`): gymnasium's
``AtariPreprocessing`` with the usual DQN settings (:data:`PREPROCESSING`): up to 30 no-op
actions at reset, 4 frames per step with the last two max-pooled, grayscale, resized to 84x84
(``cv2.INTER_AREA``), as uint8 ``(84, 84, 1)`` (the channel axis kept, so the learner's CNN
reads it as an ``H x W x C`` image), no terminal on a lost life, no frame stacking (the sequence
model sees the history; ``FrameStackObservation`` would give a 4-D observation the CNN does not
take). The wrapper does the frame skipping itself, so the env is built with ``frameskip=1``
(:func:`preprocessing_kwargs`; v5's sticky actions, ``repeat_action_probability=0.25``, stay:
the ALE applies them per frame either way). It needs ``cv2`` (``opencv-python-headless``).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from common.config_utils import ConfigError

#: env ids starting with this are ALE (Atari) tasks.
ATARI_PREFIX = "ALE/"

#: ``AtariPreprocessing`` arguments of ``EnvConfig.atari_preprocessing`` (DQN's, grayscale
#: frames keeping their channel axis).
PREPROCESSING: dict[str, Any] = {
    "noop_max": 30,
    "frame_skip": 4,
    "screen_size": 84,
    "terminal_on_life_loss": False,
    "grayscale_obs": True,
    "grayscale_newaxis": True,
    "scale_obs": False,
}


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith(ATARI_PREFIX)


def atari_installed() -> bool:
    return importlib.util.find_spec("ale_py") is not None


def cv2_installed() -> bool:
    return importlib.util.find_spec("cv2") is not None


def import_atari(env_id: str) -> None:
    """Register the ALE's ids, or raise ``ConfigError("id", ...)`` if it is not installed."""
    if not atari_installed():
        raise ConfigError(
            "id",
            f"{env_id!r} is an Atari task but the optional package 'ale-py' is not installed "
            '(pip install -e ".[atari]")',
        )
    ale_py = importlib.import_module("ale_py")
    gym.register_envs(ale_py)


def is_ale_registration(spec: gym.envs.registration.EnvSpec) -> bool:
    """Whether a registered id builds ale_py's ``AtariEnv`` (from its entry point's name:
    nothing is constructed)."""
    entry = spec.entry_point
    name = entry if isinstance(entry, str) else getattr(entry, "__module__", "") or ""
    return name.startswith("ale_py")


def check_preprocessing(env_id: str, spec: gym.envs.registration.EnvSpec) -> None:
    """``ConfigError("atari_preprocessing", ...)`` unless the preprocessing can wrap ``env_id``
    (an ALE env, with cv2 installed)."""
    if not is_ale_registration(spec):
        raise ConfigError(
            "atari_preprocessing",
            f"{env_id!r} is not an ALE (Atari) env: the Atari preprocessing wraps ale_py's "
            "AtariEnv only",
        )
    if not cv2_installed():
        raise ConfigError(
            "atari_preprocessing",
            "needs opencv (module cv2) for its 84x84 resize, which is not installed "
            '(pip install -e ".[atari]")',
        )


def preprocessing_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an ALE env the preprocessing wraps: ``frameskip=1`` (the
    wrapper skips frames; a v5 id's own frameskip of 4 would make it 16). A ``frameskip``
    other than 1 given explicitly is a ``ConfigError`` naming ``kwargs``."""
    skip = kwargs.get("frameskip", 1)
    if skip != 1:
        raise ConfigError(
            "kwargs",
            f"frameskip={skip!r} with atari_preprocessing: the preprocessing skips "
            f"{PREPROCESSING['frame_skip']} frames per step itself, so the env runs with "
            "frameskip=1 (leave frameskip out)",
        )
    return {**kwargs, "frameskip": 1}


def preprocess(env: gym.Env) -> gym.Env:
    """``env`` (an ALE env built with ``frameskip=1``) in gymnasium's ``AtariPreprocessing``
    (:data:`PREPROCESSING`): uint8 ``(84, 84, 1)`` observations, 4 frames per step."""
    from gymnasium.wrappers import AtariPreprocessing

    return AtariPreprocessing(env, **PREPROCESSING)


def ale_horizon(env: gym.Env) -> tuple[int, str] | None:
    """The episode limit of an ALE env in agent steps, ``ceil(max_num_frames_per_episode /
    frames per step)``, and where it came from; None for any other env (or an ALE without a
    frame limit). Frames per step: the env's ``frameskip`` (the smallest of a random one)
    times an ``AtariPreprocessing``'s ``frame_skip``."""
    base = env.unwrapped
    ale = getattr(base, "ale", None)
    skip = getattr(base, "_frameskip", None)
    if ale is None or skip is None:
        return None
    try:
        frames = int(ale.getInt("max_num_frames_per_episode"))
    except Exception:  # not the ALE interface after all
        return None
    if frames <= 0:
        return None
    per_step = int(skip if isinstance(skip, int) else min(skip))
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if type(e).__name__ == "AtariPreprocessing":
            per_step *= int(e.frame_skip)
        e = e.env
    steps = math.ceil(frames / per_step)
    return steps, f"max_num_frames_per_episode ({frames} frames, {per_step} per step)"
