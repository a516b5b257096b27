"""The driver's supervisor: one call in flight per worker, and every rule about deaths,
retries, restarts and outages in one place.

A worker is a Ray actor the driver calls over and over (a rollout actor's ``collect``, the
learner's ``train``, the evaluator's ``evaluate``). Ray restarts a dead actor from its
constructor arguments; the supervisor decides what the driver does meanwhile, per kind of
worker (:class:`Rule`): call it again after a delay, give up after too many deaths (consecutive
or in total) or too long an outage, or wait for the caller to call again. Restarts are counted
from the ``incarnation`` each report carries (a restarted process reports a new one).

    sup = Supervisor(metrics)
    sup.add("actor", 0, lambda: actor.collect.remote(), ACTOR_RULE)
    sup.call("actor", 0)
    for done in sup.poll(timeout_s=0.5):   # finished calls: Done(kind, index, report)
        ...

A worker leaving mid-run (the elastic fleet, ``deploy/run/fleet.py``) is *retired*: it gets no
new call and no retry, but the call it has in flight still finishes and is returned by
``poll`` (its report counted); once ``in_flight`` is False it can be forgotten (``remove``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("amago")

Key = tuple[str, int]  # (kind, index)


@dataclass(frozen=True)
class Rule:
    """What a worker's failed call leads to."""

    # Call it again this long after a failure; None = leave it to the caller (evaluations
    # wait for their next turn).
    retry_delay_s: float | None
    # Give up (re-raise the error) after more deaths than this; None = never.
    max_deaths: int | None = None
    # Deaths counted since the worker's last answer (True) or over the whole run (False:
    # Ray's max_restarts is a total).
    consecutive: bool = True
    # Give up when the worker has not answered for this long since its first failure.
    max_outage_s: float | None = None


#: Rollout actors: a few consecutive deaths (e.g. a constructor that keeps failing) end the run.
ACTOR_RULE = Rule(retry_delay_s=0.5, max_deaths=3)
#: The evaluator: a failed evaluation is skipped; the next one comes at its time.
EVAL_RULE = Rule(retry_delay_s=None)


def learner_rule(max_restarts: int, max_outage_s: float = 300.0) -> Rule:
    """The learner: as many deaths as Ray restarts it, and at most ``max_outage_s`` away."""
    return Rule(
        retry_delay_s=1.0, max_deaths=max_restarts + 1, consecutive=False, max_outage_s=max_outage_s
    )


@dataclass(frozen=True)
class Done:
    """A finished call."""

    kind: str
    index: int
    report: object  # the worker's typed report (common.reports)


class Supervisor:
    """Schedules calls to registered workers and applies their :class:`Rule` on failure."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self._calls: dict[Key, Callable[[], object]] = {}
        self._rules: dict[Key, Rule] = {}
        self._pending: dict[object, Key] = {}  # ObjectRef -> worker
        self._retry_at: dict[Key, float] = {}
        self._deaths: Counter[Key] = Counter()
        self._down_since: dict[Key, float] = {}
        self._incarnation: dict[Key, str] = {}
        self._retired: set[Key] = set()
        self.restarts: Counter[str] = Counter()  # by kind: "actor", "eval", "learner"
        metrics.inc("amago_driver_actor_restarts", 0)  # exported from the start
        metrics.inc("amago_driver_learner_restarts", 0)

    def add(self, kind: str, index: int, call: Callable[[], object], rule: Rule) -> None:
        """Register a worker: ``call()`` starts one call and returns its ObjectRef."""
        self._calls[kind, index] = call
        self._rules[kind, index] = rule

    def busy(self, kind: str, index: int = 0) -> bool:
        return (kind, index) in self._pending.values() or (kind, index) in self._retry_at

    def in_flight(self, kind: str, index: int = 0) -> bool:
        """Whether a call to the worker is running (a scheduled retry does not count)."""
        return (kind, index) in self._pending.values()

    def call(self, kind: str, index: int = 0) -> None:
        """Start a call unless one is in flight (or a retry is scheduled) or the worker is
        retired."""
        if not self.busy(kind, index) and (kind, index) not in self._retired:
            self._pending[self._calls[kind, index]()] = (kind, index)

    def retire(self, kind: str, index: int) -> None:
        """No new call (nor retry) for the worker; its call in flight still finishes."""
        self._retired.add((kind, index))
        self._retry_at.pop((kind, index), None)

    def remove(self, kind: str, index: int) -> None:
        """Forget a retired worker (after its last call finished)."""
        key = (kind, index)
        for store in (self._calls, self._rules, self._retry_at, self._deaths):
            store.pop(key, None)
        self._down_since.pop(key, None)
        self._incarnation.pop(key, None)
        self._retired.discard(key)
        for ref in [r for r, k in self._pending.items() if k == key]:
            del self._pending[ref]

    def call_all(self, kind: str) -> None:
        for k, i in list(self._calls):
            if k == kind:
                self.call(k, i)

    def poll(self, timeout_s: float) -> list[Done]:
        """Wait up to ``timeout_s`` for calls to finish; returns the successful ones (failed
        ones are handled by their rule, or re-raised when the rule gives up)."""
        import ray

        now = time.monotonic()
        for key in [k for k, t in self._retry_at.items() if t <= now]:
            del self._retry_at[key]
            self.call(*key)
        if not self._pending:
            time.sleep(timeout_s)
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout_s)
        done = []
        for ref in ready:
            key = self._pending.pop(ref)
            try:
                report = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._failed(key, e)
                continue
            self._answered(key, report)
            done.append(Done(key[0], key[1], report))
        return done

    def call_blocking(
        self,
        kind: str,
        index: int = 0,
        call: Callable[[], object] | None = None,
        attempts: int = 5,
        pause_s: float = 2.0,
    ):
        """One call outside the loop (``call``, default the registered one: e.g. the final
        evaluation), asked again while the worker is being restarted."""
        import ray

        call = call or self._calls[kind, index]
        for attempt in range(attempts):
            try:
                report = ray.get(call())
            except ray.exceptions.RayActorError:
                if attempt == attempts - 1:
                    raise
                time.sleep(pause_s)
                continue
            self._answered((kind, index), report)
            return report

    # -- rules -----------------------------------------------------------------------------
    def _answered(self, key: Key, report) -> None:
        rule = self._rules[key]
        if rule.consecutive:
            self._deaths.pop(key, None)
        self._down_since.pop(key, None)
        last = self._incarnation.get(key)
        if last is not None and last != report.incarnation:
            self.restarts[key[0]] += 1
            name = "learner" if key[0] == "learner" else "actor"
            self.metrics.inc(f"amago_driver_{name}_restarts")
        self._incarnation[key] = report.incarnation

    def _failed(self, key: Key, err: Exception) -> None:
        """The worker died (or is still restarting): only its in-flight work is lost."""
        from ray.exceptions import ActorUnavailableError

        kind, index = key
        rule = self._rules[key]
        if key in self._retired:  # leaving anyway: nothing to retry
            log.warning("%s %d died while leaving (%s)", kind, index, type(err).__name__)
            return
        log.warning("%s %d unavailable (%s); Ray restarts it", kind, index, type(err).__name__)
        if rule.retry_delay_s is None:
            return
        now = time.monotonic()
        if not isinstance(err, ActorUnavailableError):  # a death, not a restart in progress
            self._deaths[key] += 1
            if rule.max_deaths is not None and self._deaths[key] > rule.max_deaths:
                raise err
        since = self._down_since.setdefault(key, now)
        if rule.max_outage_s is not None and now - since > rule.max_outage_s:
            raise err
        self._retry_at[key] = now + rule.retry_delay_s
