"""Optional Meta-World tasks (PyPI ``metaworld`` 3.x with ``mujoco``; not a dependency of this
project: the ``metaworld`` extra installs it).

Meta-World's own gymnasium ids for its meta-RL benchmarks (``Meta-World/ML1-train``, ...) are
vector envs only (``gym.make_vec``); rollout actors step single envs. So an id starting with
:data:`METAWORLD_PREFIX` imports this module's registrations (and ``metaworld``), one
:class:`MetaWorld` env per benchmark:

* ``metaworld/ML1-<task>`` (``metaworld/ML1-reach-v3``, ``metaworld/ML1-pick-place-v3``, ...):
  one task, 50 goal/object positions drawn per episode, **hidden** from the policy (the last 3
  of the 39 observation entries are 0): meta-RL, the goal is found from rewards;
* ``metaworld/ML10``, ``metaworld/ML25``, ``metaworld/ML45``: several tasks (10, 25, 45 for
  training; 5 other tasks for testing), 50 goals each, goals hidden;
* ``metaworld/MT1-<task>``, ``metaworld/MT10``, ``metaworld/MT25``, ``metaworld/MT50``: the
  multi-task benchmarks, goals **visible** (no test split).

Constructor arguments (``env.kwargs``): ``split`` (``"train"``, the default, or ``"test"``: the
held-out goals of ML1, the held-out tasks of ML10/25/45; e.g. ``run.eval_env.kwargs.split=test``
evaluates on them) and ``benchmark_seed`` (default 0: the seed Meta-World draws the 50 goals per
task with; every process of a run builds the same goals from it, so keep it the same across a
run). Goals are tasks in the :class:`~common.envs.api.TaskSampler` sense: a plain episode draws
one at reset; ``env.trial_episodes=k`` keeps one for k episodes (in-context meta-RL).

The episode limit is the env's own ``max_path_length`` attribute (500 steps), which the factory
reads. Observations: float64 ``(39,)`` (hand, gripper, two object poses, the previous frame's
same, the goal), actions a float ``Box(-1, 1, (4,))``; rewards are Meta-World's v2 shaped
rewards (0 to 10 a step), ``info["success"]`` its success flag (a rollout's success is its
maximum). Benchmarks are built once per process (ML1 in about 1.5 s, ML10 in about 9 s).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

import gymnasium as gym
import numpy as np

from common.config_utils import ConfigError

#: env ids starting with this are Meta-World tasks (registered by :func:`register_ids`).
METAWORLD_PREFIX = "metaworld/"
#: benchmarks of one named task (the id names it: ``metaworld/ML1-reach-v3``).
ONE_TASK = ("ML1", "MT1")
#: benchmarks of several tasks (the id is the benchmark: ``metaworld/ML10``).
MANY_TASKS = ("ML10", "ML25", "ML45", "MT10", "MT25", "MT50")


def is_metaworld_id(env_id: str) -> bool:
    return env_id.startswith(METAWORLD_PREFIX)


def metaworld_installed() -> bool:
    return importlib.util.find_spec("metaworld") is not None


def import_metaworld(env_id: str) -> None:
    """Register the ``metaworld/...`` ids, or raise ``ConfigError("id", ...)`` if the package
    is not installed."""
    if not metaworld_installed():
        raise ConfigError(
            "id",
            f"{env_id!r} is a Meta-World task but the optional package 'metaworld' is not "
            'installed (pip install -e ".[metaworld]")',
        )
    register_ids()


@functools.cache
def register_ids() -> None:
    """Register ``metaworld/ML1-<task>``, ``metaworld/MT1-<task>`` for every Meta-World task
    and ``metaworld/<benchmark>`` for the others (once per process)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    entry = f"{__name__}:MetaWorld"
    ids = {
        f"{METAWORLD_PREFIX}{b}-{name}": {"benchmark": b, "env_name": name}
        for b in ONE_TASK
        for name in ALL_V3_ENVIRONMENTS
    }
    ids.update({f"{METAWORLD_PREFIX}{b}": {"benchmark": b} for b in MANY_TASKS})
    for env_id, kwargs in ids.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, kwargs=kwargs)


@functools.lru_cache(maxsize=4)
def _benchmark(benchmark: str, env_name: str, seed: int) -> Any:
    """Meta-World's benchmark object (its env classes and goal lists), once per process."""
    import metaworld

    cls = getattr(metaworld, benchmark)
    return cls(env_name, seed=seed) if benchmark in ONE_TASK else cls(seed=seed)


class MetaWorld(gym.Env):
    """One Meta-World benchmark split as a single env: each reset sets one of its goals (a
    Meta-World ``Task``: a task name and its goal/object positions) on the env of that task
    and resets it; ``set_task`` pins one (:class:`~common.envs.api.TaskSampler`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str = "",
        split: str = "train",
        benchmark_seed: int = 0,
        render_mode: str | None = None,
    ):
        if benchmark not in ONE_TASK + MANY_TASKS:
            raise ValueError(f"benchmark must be one of {ONE_TASK + MANY_TASKS}, got {benchmark!r}")
        if benchmark in ONE_TASK and not env_name:
            raise ValueError(f"{benchmark} needs env_name (a Meta-World task, e.g. reach-v3)")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == "test" and benchmark.startswith("MT"):
            raise ValueError(f"{benchmark} has no test split (only the ML benchmarks have one)")
        b = _benchmark(benchmark, env_name, int(benchmark_seed))
        self.benchmark, self.split = benchmark, split
        self.classes = dict(b.train_classes if split == "train" else b.test_classes)
        self.tasks = list(b.train_tasks if split == "train" else b.test_tasks)
        self.render_mode = render_mode
        self._envs: dict[str, Any] = {}
        self._pinned: int | None = None
        self.task_index = 0
        first = self._env_for(0)
        self._current = first
        self.max_path_length = int(first.max_path_length)
        self.action_space = first.action_space
        space = first.observation_space
        if len(self.classes) > 1:  # tasks' bounds differ; their shape does not
            space = gym.spaces.Box(-np.inf, np.inf, space.shape, np.float64)
        self.observation_space = space

    def _env_for(self, index: int) -> Any:
        """The env of task ``index``'s class (built on first use), with that goal set."""
        task = self.tasks[index]
        env = self._envs.get(task.env_name)
        if env is None:
            env = self.classes[task.env_name](render_mode=self.render_mode)
            self._envs[task.env_name] = env
        env.set_task(task)
        return env

    # -- TaskSampler -------------------------------------------------------------------------
    def sample_task(self, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.tasks)))

    def set_task(self, task: int | None) -> None:
        self._pinned = None if task is None else int(task)

    # -- gymnasium ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        index = self._pinned
        if index is None:
            index = int(self.np_random.integers(len(self.tasks)))
        self.task_index = index
        self._current = self._env_for(index)
        obs, info = self._current.reset(seed=seed)
        return obs, info

    def step(self, action: Any):
        return self._current.step(action)

    def render(self) -> Any:
        return self._current.render()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
