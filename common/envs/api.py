"""The env-side conventions rollout actors rely on, defined once.

Every env built by :func:`common.envs.make_env` follows them; custom envs and wrappers should
too. Records are filled as described in :mod:`common.records` (timestep ``t`` holds ``o_t``,
``a_{t-1}``, ``r_{t-1}``); the info keys below say what else goes into a
:class:`~common.records.Trajectory`:

``info[INFO_EPISODE_START]`` (bool, in every reset and step info)
    True when the returned observation is the first of an episode: always on ``reset()``, and
    on the step that starts a new inner episode of a meta-RL trial. The actor appends the
    timestep index to ``TrajectoryMeta.episode_starts`` whenever it is True.

``info[INFO_EXTRAS]`` (dict of arrays, optional)
    Per-timestep arrays stored in ``Trajectory.extras`` (hidden from the policy). They describe
    the *transition into* the returned observation, like ``prev_reward``: ``extras[k][t]``
    belongs with ``o_t`` and ``r_{t-1}``. Reset infos carry the "nothing happened" value
    (e.g. an all-False mask). The shapes are announced in ``EnvSpec.extras``.

``info[INFO_TRAJ]`` (dict of scalars/strings, reset info only)
    Static facts about the rollout that the actor copies into ``TrajectoryMeta.info`` (e.g. the
    goal reward function's name for hindsight relabeling, the number of trial episodes).

Task sampling for meta-RL trials: an env that implements :class:`TaskSampler` can be wrapped
into k-episode trials (:class:`common.envs.trial.TrialWrapper`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

#: info key: the returned observation starts an (inner) episode.
INFO_EPISODE_START = "episode_start"
#: info key: dict of per-timestep arrays for ``Trajectory.extras``.
INFO_EXTRAS = "extras"
#: reset-info key: dict of scalars/strings for ``TrajectoryMeta.info``.
INFO_TRAJ = "trajectory_info"
#: observation key added by the trial wrapper: float32 ``(1,)``, 1.0 on an episode's first step.
OBS_EPISODE_START = "episode_start"
#: observation key of a plain (non-dict) observation after standardisation.
OBS_DEFAULT = "observation"


@runtime_checkable
class TaskSampler(Protocol):
    """An env whose episodes are drawn from a distribution of tasks (meta-RL).

    Contract: ``sample_task(rng)`` draws a task (any value the env understands) without
    changing the env. ``set_task(task)`` pins ``task``: every later ``reset()`` uses it until
    ``set_task`` is called again; ``set_task(None)`` unpins, and each reset then samples a fresh
    task from the env's own ``np_random`` (the behaviour of an env used on its own).
    """

    def sample_task(self, rng: np.random.Generator) -> Any: ...

    def set_task(self, task: Any | None) -> None: ...


#: attributes of an unwrapped env that declare its own episode limit (in this order):
#: built-in envs, POPGym (``max_episode_length``), MiniGrid/BabyAI (``max_steps``: MiniGrid
#: truncates there itself, without a TimeLimit wrapper), Meta-World (``max_path_length``).
HORIZON_ATTRS = ("max_episode_steps", "max_episode_length", "max_steps", "max_path_length")


def declared_horizon_from(env: gym.Env) -> tuple[int, str] | None:
    """The episode limit an env declares itself and the attribute it came from, or None
    (the first of :data:`HORIZON_ATTRS` holding a positive int)."""
    base = env.unwrapped
    for name in HORIZON_ATTRS:
        value = getattr(base, name, None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
            return int(value), name
    return None


def declared_horizon(env: gym.Env) -> int | None:
    """The episode limit an env declares itself (built-in envs, POPGym, MiniGrid), or None."""
    found = declared_horizon_from(env)
    return None if found is None else found[0]


def find_wrapper(env: gym.Env, cls: type) -> gym.Env | None:
    """The outermost wrapper of type ``cls`` in ``env``'s wrapper chain, or None."""
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, cls):
            return e
        e = e.env
    return None


def merge_traj_info(info: dict[str, Any], **items: Any) -> None:
    """Add ``items`` to ``info[INFO_TRAJ]`` (a reset info), keeping what inner wrappers put."""
    info[INFO_TRAJ] = {**info.get(INFO_TRAJ, {}), **items}
