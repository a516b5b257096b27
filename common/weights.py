"""Versioned weight publication through the Ray object store.

The learner ``ray.put``s each new version ONCE and hands the object reference to a tiny
broker actor; rollout actors ask the broker whether something newer than what they hold
exists and only then fetch it (zero-copy from the node's shared memory for numpy arrays).
The reference travels wrapped in a list so Ray passes it on instead of resolving it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy_state(weights: dict[str, Any]) -> dict[str, np.ndarray]:
    """Torch tensors -> numpy arrays (what Ray's object store shares without copying)."""
    return {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in weights.items()
    }


class WeightBroker:
    """Holds the latest ``(version, [ObjectRef])``. Run as a Ray actor (``num_cpus=0``)."""

    def __init__(self) -> None:
        self._version = -1
        self._ref: list | None = None

    def publish(self, version: int, ref: list, restart: bool = False) -> None:
        """Hold ``ref`` if ``version`` is newer. ``restart``: a (re)started learner's first
        version replaces whatever is held (the old learner's objects died with it), even if
        older; actors holding newer weights keep them until the learner passes them."""
        if restart or version > self._version:
            self._version, self._ref = int(version), ref

    def latest(self, have: int = -1) -> tuple[int, list] | None:
        """``(version, [ref])`` if a version newer than ``have`` exists, else None."""
        if self._version > have and self._ref is not None:
            return self._version, self._ref
        return None

    def version(self) -> int:
        return self._version
