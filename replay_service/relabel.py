"""Sample-time relabeling strategies, selected by name in config.

A relabeler is ``relabel(trajectory, rng) -> trajectory``: it gets the WHOLE stored
trajectory (arrays are read-only views of the decoded blob: build new arrays, never write in
place) and returns a trajectory (possibly shorter, e.g. cut where a relabeled goal
instruction is completed); the sampler cuts the training window afterwards. Built in:
``"none"`` (identity) and ``"hindsight"`` (:mod:`replay_service.hindsight`).

Strategies register a factory under a name at import time::

    @register_relabeler("my_strategy")
    def make_my_strategy(k: int = 1) -> Relabeler:
        def relabel(traj, rng): ...
        return relabel

    relabel = get_relabeler("my_strategy", k=2)   # ReplayConfig.relabel / relabel_kwargs
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from common.records import Trajectory

Relabeler = Callable[[Trajectory, np.random.Generator], Trajectory]
RelabelerFactory = Callable[..., Relabeler]

# name -> factory; filled by @register_relabeler at import time only.
_REGISTRY: dict[str, RelabelerFactory] = {}
# Modules registering the built-in strategies; imported on the first lookup (importing them
# at the top would be an import cycle: they use register_relabeler).
_BUILTIN_MODULES = ("replay_service.hindsight",)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def register_relabeler(name: str) -> Callable[[RelabelerFactory], RelabelerFactory]:
    """Decorator registering a relabeler factory under ``name`` (names are unique)."""

    def deco(factory: RelabelerFactory) -> RelabelerFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a relabeler named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def get_relabeler(name: str, **kwargs: Any) -> Relabeler:
    """Build the relabeler registered as ``name`` with ``kwargs``."""
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown relabeler {name!r}; registered: {sorted(_REGISTRY)}") from None
    return factory(**kwargs)


def relabeler_names() -> list[str]:
    """Names of the registered strategies."""
    _load_builtins()
    return sorted(_REGISTRY)


@register_relabeler("none")
def make_identity() -> Relabeler:
    """No relabeling: the stored trajectory as it is."""

    def identity(traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        return traj

    return identity
