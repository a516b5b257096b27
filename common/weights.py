"""Versioned weight publication through the Ray object store: the one module both sides use.

The learner's :class:`WeightPublisher` ``ray.put``s each new version ONCE and hands the object
reference to a tiny :class:`WeightBroker` actor; a rollout actor's :class:`WeightClient` asks
the broker whether something newer than what its policy holds exists and only then fetches it
(zero-copy from the node's shared memory for numpy arrays). The reference travels wrapped in a
list so Ray passes it on instead of resolving it.

    broker = ray.remote(WeightBroker).options(num_cpus=0).remote()
    WeightPublisher(broker).publish(version, learner.policy_weights(), restart=True)
    client = WeightClient(broker)            # in each actor
    client.wait(policy)                      # blocks for the first version
    client.poll(policy)                      # each few steps: non-blocking
    client.learner_version(policy)           # newest version seen so far (no round trip)

Restartable actors are given a :class:`BrokerAddress` (the broker's name) rather than its
handle: a handle among an actor's constructor arguments is a reference Ray does not keep for
the actor's restarts (ray-project/ray#53727, which Ray reports at every run). Publisher and
client take either.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class BrokerAddress:
    """Where a :class:`WeightBroker` actor is found: the name and Ray namespace it was
    started under (``start_named_broker``)."""

    name: str
    namespace: str | None = None

    def handle(self):
        import ray

        return ray.get_actor(self.name, namespace=self.namespace)


def resolve_broker(broker):
    """The broker's handle, given its handle or its :class:`BrokerAddress`."""
    return broker.handle() if isinstance(broker, BrokerAddress) else broker


def start_named_broker(name: str):
    """``(handle, address)`` of a new broker actor named ``name`` (owned by the caller: it ends
    with the caller's job)."""
    import ray

    handle = ray.remote(WeightBroker).options(num_cpus=0, name=name).remote()
    return handle, BrokerAddress(name, ray.get_runtime_context().namespace)


class WeightPublisher:
    """The learner's side: one ``ray.put`` per new version, announced to the broker."""

    def __init__(self, broker) -> None:
        self.broker = resolve_broker(broker)
        self.published = -1  # last version announced by this process

    def publish(self, version: int, weights: dict[str, Any], restart: bool = False) -> bool:
        """Publish ``weights`` as ``version`` unless this process already did; True if it
        published. ``restart``: see :meth:`WeightBroker.publish`."""
        import ray

        if version == self.published:
            return False
        ref = ray.put(to_numpy_state(weights))
        ray.get(self.broker.publish.remote(version, [ref], restart))
        self.published = version
        return True


class WeightClient:
    """An actor's side: loads newer versions into a :class:`common.core.Policy`."""

    def __init__(self, broker, on_load=None) -> None:
        self.broker = resolve_broker(broker)
        self._pending = None  # the in-flight non-blocking broker query
        self._on_load = on_load  # called with each loaded version (metrics)
        self.latest_seen = -1  # newest version any broker answer showed (see learner_version)
        self._asked = -1  # the ``have`` of the in-flight query

    def _saw(self, found, have: int) -> None:
        """Note a broker answer to ``latest(have)``: None means nothing newer than ``have``."""
        self.latest_seen = max(self.latest_seen, have if found is None else int(found[0]))

    def learner_version(self, policy) -> int:
        """The newest published version this client knows of, without waiting: the latest
        broker answer received (the in-flight query's too, if it has arrived), never below
        the policy's own version. It trails the learner's true version by at most one poll
        interval (``actors.weight_poll_steps`` env steps) plus the broker round trip, and
        counts published versions only (versions are learner update counts, published
        every ``learner.worker.publish_every`` updates)."""
        if self._pending is not None:
            import ray

            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                self._saw(ray.get(self._pending), self._asked)
        return max(self.latest_seen, int(policy.version))

    def _load(self, policy, found) -> bool:
        """Load a published version; False (weights kept) if its object is gone: the
        learner that put it died, and its restarted self will publish again."""
        import ray
        from ray.exceptions import GetTimeoutError, ObjectLostError

        version, (ref,) = found
        try:
            weights = ray.get(ref, timeout=60)
        except (ObjectLostError, GetTimeoutError) as e:
            log.warning("weights version %d unavailable (%s); keeping mine", version, e)
            return False
        policy.load_weights(version, weights)
        if self._on_load is not None:
            self._on_load(version)
        return True

    def wait(self, policy, timeout_s: float = 300.0) -> None:
        """Block until the policy holds a published version."""
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = ray.get(self.broker.latest.remote(policy.version))
            self._saw(found, policy.version)
            if found is not None and self._load(policy, found):
                return
            time.sleep(0.2)
        raise TimeoutError(f"no policy weights were published within {timeout_s:.0f} s")

    def refresh(self, policy) -> None:
        """Blocking: load the newest version if it is newer than the policy's."""
        import ray

        found = ray.get(self.broker.latest.remote(policy.version))
        self._saw(found, policy.version)
        if found is not None:
            self._load(policy, found)

    def poll(self, policy) -> None:
        """Non-blocking: look at the answer to the previous query, then ask again."""
        import ray

        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if not ready:
                return
            found = ray.get(self._pending)
            self._saw(found, self._asked)
            if found is not None and found[0] > policy.version:
                self._load(policy, found)
        self._asked = int(policy.version)
        self._pending = self.broker.latest.remote(policy.version)
