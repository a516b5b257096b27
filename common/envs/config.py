"""Which environment a run uses (the ``env`` section of the config)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

import common.envs  # noqa: F401  (registers the built-in amago/ ids)
from common.config_utils import ConfigError, prefixed, require
from common.envs.atari import check_preprocessing, import_atari, is_atari_id
from common.envs.metaworld_envs import import_metaworld, is_metaworld_id
from common.envs.minigrid_envs import import_minigrid, is_minigrid_id
from common.envs.popgym_envs import import_popgym, is_popgym_id
from common.records import TASK_NAME_RE


@dataclass
class TaskConfig:
    """One task of a multi-task run (an entry of ``env.tasks``)."""

    # label of the task in replay, metrics (the ``task`` label) and logs; "" = "task<i>"
    name: str = ""
    # gymnasium id; "" = the env section's id
    id: str = ""
    # constructor arguments; merged key by key into env.kwargs when the id is env.id's
    kwargs: dict[str, Any] = field(default_factory=dict)
    # share of the rollout actors this task gets (> 0; every task gets at least one)
    weight: float = 1.0
    # the run may stop early once a greedy evaluation of this task reaches this return and
    # every other task has reached its own (None = run.stop_at_return)
    stop_at_return: float | None = None


@dataclass(frozen=True)
class Task:
    """A resolved task: its name, the env section it runs and its sampling weight."""

    name: str
    env: EnvConfig
    weight: float
    stop_at_return: float | None


@dataclass
class EnvConfig:
    """Environment of a run; built by :func:`common.envs.make_env`."""

    # gymnasium id: a built-in "amago/..." task, any registered id ("CartPole-v1"),
    # "some.module:Name-v0" (the module is imported first; it must register the id), a
    # POPGym task "popgym-..." (needs the optional popgym package), a MiniGrid/BabyAI task
    # "MiniGrid-..."/"BabyAI-..." (needs the optional minigrid package), an Atari game
    # "ALE/Pong-v5" (needs ale-py) or a Meta-World benchmark "metaworld/ML1-reach-v3",
    # "metaworld/ML10", ... (needs metaworld; common/envs/metaworld_envs.py)
    id: str = "amago/TMaze-v0"
    # keyword arguments passed to the env constructor (e.g. {"corridor_length": 10})
    kwargs: dict[str, Any] = field(default_factory=dict)
    # > 1: run meta-RL trials of this many episodes sharing one sampled task (the env must
    # implement common.envs.api.TaskSampler); 1: plain episodes
    trial_episodes: int = 1
    # time limit of one (inner) episode in steps; 0 = the env's own limit (its registered
    # limit or the one it declares: a max_episode_steps / max_episode_length / max_steps /
    # max_path_length attribute); an env with neither needs a value here
    max_episode_steps: int = 0
    # Atari (ALE ids) only: wrap the env in gymnasium's AtariPreprocessing (30 no-op resets,
    # 4 frames per step max-pooled, grayscale, 84x84 uint8 (84, 84, 1) frames, no frame stack;
    # needs opencv). The env is then built with frameskip=1 (the wrapper skips; a v5 id's own
    # frameskip of 4 would make 16) and max_episode_steps counts agent steps, not frames.
    atari_preprocessing: bool = False
    # Multi-task runs: several tasks in one run ([] = the single task above). Each entry runs
    # this section with its own id/kwargs (trial_episodes and max_episode_steps are shared);
    # their observation and action spaces must be the same (checked at start-up).
    tasks: list[TaskConfig] = field(default_factory=list)

    def _task_configs(self) -> list[TaskConfig]:
        """``tasks`` as TaskConfigs (entries may be mappings: ``dataclasses.asdict``, JSON)."""
        out = []
        for i, t in enumerate(self.tasks):
            if isinstance(t, Mapping):
                try:
                    t = TaskConfig(**t)
                except TypeError as e:
                    raise ConfigError(f"tasks[{i}]", f"not a task: {e}") from None
            elif not isinstance(t, TaskConfig):
                raise ConfigError(f"tasks[{i}]", f"not a task: {t!r}")
            out.append(t)
        return out

    @property
    def multi_task(self) -> bool:
        """Whether the run has named tasks (``tasks``) rather than this section alone."""
        return bool(self.tasks)

    def task_list(self) -> list[Task]:
        """The run's tasks, resolved: ``tasks``' entries, or for a single-task run one
        unnamed task (``""``: this section itself, weight 1). Every run is a task list."""
        if not self.tasks:
            return [Task("", self, 1.0, None)]
        out = []
        for i, t in enumerate(self._task_configs()):
            same_id = not t.id or t.id == self.id
            kwargs = {**self.kwargs, **t.kwargs} if same_id else dict(t.kwargs)
            env = dataclasses.replace(self, id=t.id or self.id, kwargs=kwargs, tasks=[])
            out.append(Task(t.name or f"task{i}", env, float(t.weight), t.stop_at_return))
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field (relative: ``"id"``, ...)."""
        self._validate_own()
        seen: dict[str, int] = {}
        for i, t in enumerate(self._task_configs()):
            f = f"tasks[{i}]"
            name = t.name or f"task{i}"
            require(
                isinstance(name, str) and bool(TASK_NAME_RE.fullmatch(name)),
                f"{f}.name",
                f"must match {TASK_NAME_RE.pattern}, got {name!r}",
            )
            require(
                name not in seen,
                f"{f}.name",
                f"{name!r} is also the name of tasks[{seen.get(name)}]",
            )
            seen[name] = i
            w = t.weight
            require(
                isinstance(w, (int, float))
                and not isinstance(w, bool)
                and math.isfinite(w)
                and w > 0,
                f"{f}.weight",
                f"must be a finite number > 0, got {w!r}",
            )
            require(isinstance(t.kwargs, Mapping), f"{f}.kwargs", "must be a mapping")
            require(isinstance(t.id, str), f"{f}.id", "must be a string")
            stop = t.stop_at_return
            require(
                stop is None or (isinstance(stop, (int, float)) and math.isfinite(stop)),
                f"{f}.stop_at_return",
                f"must be a finite number or null, got {stop!r}",
            )
        for i, task in enumerate(self.task_list() if self.multi_task else []):
            prefixed(f"tasks[{i}]", task.env._validate_own)

    def _validate_own(self) -> None:
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
        require(
            isinstance(self.atari_preprocessing, bool),
            "atari_preprocessing",
            f"must be true or false, got {self.atari_preprocessing!r}",
        )
        env_spec = resolve_env_id(self.id)
        if self.atari_preprocessing:
            check_preprocessing(self.id, env_spec)
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
    ``module:`` prefix, popgym, minigrid, ale_py or Meta-World's ids), or
    ``ConfigError("id", ...)`` if it is unknown."""
    if is_popgym_id(env_id):
        import_popgym(env_id)
    if is_minigrid_id(env_id):
        import_minigrid(env_id)
    if is_atari_id(env_id):
        import_atari(env_id)
    if is_metaworld_id(env_id):
        import_metaworld(env_id)
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


__all__ = ["TASK_NAME_RE", "EnvConfig", "Task", "TaskConfig", "resolve_env_id"]


@dataclass(frozen=True)
class RewardProbe:
    """What uniformly random actions saw of an env's rewards (:func:`reward_probe`)."""

    largest: float  # largest |reward|
    rewarded: float  # fraction of the steps taken that paid a nonzero reward

    @property
    def dense(self) -> bool:
        """Rewards on at least half of the steps (CartPole, Pendulum, POPGym), as opposed to
        sparse ones (a goal, a trial's end)."""
        return self.rewarded >= 0.5
