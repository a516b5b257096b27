"""Built-in tasks (registered with gymnasium under ``amago/``) and the env factory.

Built-in ids (all pure numpy, fast on CPU):

* ``amago/TMaze-v0`` — memory over a corridor (:mod:`common.envs.tmaze`);
* ``amago/MetaBandit-v0`` — k-armed Bernoulli meta-bandit, one pull per episode, for trials
  (:mod:`common.envs.bandit`);
* ``amago/DarkKeyToDoor-v0`` — meta-RL dark room with an invisible key and door
  (:mod:`common.envs.key_door`);
* ``amago/PointGoal-v0`` — continuous meta-RL: walk to a hidden goal on a half circle
  (:mod:`common.envs.point_goal`);
* ``amago/GoalGrid-v0`` — procedurally generated gridworld with k-goal instructions,
  goal-conditioned (:mod:`common.envs.goal_grid`, :mod:`common.goals`, wrapped by
  :mod:`common.envs.goal_wrapper`).

``make_env``, ``env_spec``, ``EnvConfig``, ``TrialWrapper``, ``Standardize`` and ``rollout`` are
importable from here; they load on first use, so ``import common.envs`` stays cheap and only
registers the ids.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

_REGISTERED = {
    "amago/TMaze-v0": "common.envs.tmaze:TMaze",
    "amago/MetaBandit-v0": "common.envs.bandit:MetaBandit",
    "amago/DarkKeyToDoor-v0": "common.envs.key_door:DarkKeyToDoor",
    "amago/GoalGrid-v0": "common.envs.goal_grid:make_goal_grid",
    "amago/PointGoal-v0": "common.envs.point_goal:PointGoal",
}

for _id, _entry in _REGISTERED.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

_LAZY = {
    "EnvConfig": "common.envs.config",
    "make_env": "common.envs.factory",
    "env_spec": "common.envs.factory",
    "spec_of": "common.envs.factory",
    "Standardize": "common.envs.standardize",
    "TrialWrapper": "common.envs.trial",
    "TaskSampler": "common.envs.api",
    "rollout": "common.envs.record",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
