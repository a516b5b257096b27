"""Which environment a run uses (the ``env`` section of the config)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

import common.envs  # noqa: F401  (registers the built-in amago/ ids)
from common.config_utils import ConfigError, require
from common.envs.popgym_envs import import_popgym, is_popgym_id


@dataclass
class EnvConfig:
    """Environment of a run; built by :func:`common.envs.make_env`."""

    # gymnasium id: a built-in "amago/..." task, any registered id ("CartPole-v1"),
    # "some.module:Name-v0" (the module is imported first; it must register the id), or a
    # POPGym task "popgym-..." (needs the optional popgym package)
    id: str = "amago/TMaze-v0"
    # keyword arguments passed to the env constructor (e.g. {"corridor_length": 10})
    kwargs: dict[str, Any] = field(default_factory=dict)
    # > 1: run meta-RL trials of this many episodes sharing one sampled task (the env must
    # implement common.envs.api.TaskSampler); 1: plain episodes
    trial_episodes: int = 1
    # time limit of one (inner) episode in steps; 0 = the env's own limit (its registered
    # limit or the max_episode_steps it declares); an env with neither needs a value here
    max_episode_steps: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field (relative: ``"id"``, ...)."""
        require(isinstance(self.id, str) and bool(self.id.strip()), "id", "must be a non-empty id")
        require(isinstance(self.kwargs, Mapping), "kwargs", "must be a mapping")
        require(all(isinstance(k, str) for k in self.kwargs), "kwargs", "keys must be strings")
        require(
            "max_episode_steps" not in self.kwargs,
            "kwargs",
            "set the time limit with env.max_episode_steps, not inside kwargs",
        )
        require(
            isinstance(self.trial_episodes, int) and self.trial_episodes >= 1,
            "trial_episodes",
            f"must be an int >= 1, got {self.trial_episodes!r}",
        )
        require(
            isinstance(self.max_episode_steps, int) and self.max_episode_steps >= 0,
            "max_episode_steps",
            f"must be an int >= 0 (0 = the env's own limit), got {self.max_episode_steps!r}",
        )
        env_spec = resolve_env_id(self.id)
        if self.trial_episodes > 1:
            creator = _creator(env_spec)
            if isinstance(creator, type) and not issubclass_task_sampler(creator):
                raise ConfigError(
                    "trial_episodes",
                    f"{self.id!r} does not implement TaskSampler (sample_task, set_task), so "
                    "it cannot run as a meta-RL trial; use trial_episodes=1",
                )


def issubclass_task_sampler(cls: type) -> bool:
    """Whether instances of ``cls`` would satisfy :class:`TaskSampler` (checked on the class)."""
    return all(callable(getattr(cls, name, None)) for name in ("sample_task", "set_task"))


def _creator(env_spec: gym.envs.registration.EnvSpec) -> Any:
    entry = env_spec.entry_point
    if callable(entry):
        return entry
    try:
        return load_env_creator(entry)
    except Exception as e:  # import errors of the env's own module
        raise ConfigError("id", f"cannot load the entry point {entry!r}: {e}") from e


def resolve_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The gymnasium registration of ``env_id`` (importing the module that registers it: the
    ``module:`` prefix, or popgym), or ``ConfigError("id", ...)`` if it is unknown."""
    if is_popgym_id(env_id):
        import_popgym(env_id)
    name = env_id
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or the module's own code failing
            raise ConfigError(
                "id", f"cannot import module {module!r}: {type(e).__name__}: {e}"
            ) from e
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError("id", f"unknown environment id {env_id!r}{hint}")
    return gym.registry[name]


__all__ = ["EnvConfig", "resolve_env_id"]
