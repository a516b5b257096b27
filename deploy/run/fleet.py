"""The elastic rollout fleet: grow and shrink a run's rollout actors while it trains.

The control is a tiny named Ray actor, :class:`FleetControl`, holding the fleet size the run
should have. The driver starts it as ``control/<run.name>`` in Ray namespace ``amago`` (a
second live run of the same name gets ``control/<run.name>-<run dir name>``; the driver
prints the name) and polls it about once a second; anything connected to the run's Ray
cluster sets it::

    python -m deploy.ops.cluster scale 3 --run tmaze            # the local cluster of `make cluster-up`
    python -m deploy.ops.cluster scale 3 --run tmaze --address 10.0.0.5:6379   # any Ray cluster
    request_scale("tmaze", 3)                               # from Python, inside that Ray

A request is checked where it lands (``1 <= N <= actors.max_num_actors``, and at least one
actor per task in a multi-task run); a refused one is answered with a one-line reason and
changes nothing.

The driver side, :class:`Fleet`, owns the rollout actors. Growing starts new actors through
the builder's factory (``Workers.make_actor``: the same Ray options, ``SPREAD`` scheduling on
a cluster when ``deploy.spread_actors``, else Ray's default), so they land on any node with
free CPUs, a node that joined the cluster mid-run included. Actor ids (and so seeds and the
``actor`` metric label) are never reused: new ones count up from the first id after the
evaluation actors'. Shrinking retires the highest-id actors (per task, see
:func:`plan_resize`): the supervisor gives them no new call, the ``collect`` they have in
flight finishes (its rollouts are inserted and its report counted), then they are killed;
one still busy after ``actors.drain_timeout_s`` is told to stop first. An actor counts as
alive once it has answered (its constructor finished); ``amago_driver_actors_alive`` and
``amago_driver_actors_desired`` export both numbers, and the Prometheus service-discovery
file is rewritten whenever the set of processes changes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deploy.config import assign_tasks
from deploy.run.discovery import Discovery, NoDiscovery
from deploy.run.supervisor import ACTOR_RULE, Supervisor

log = logging.getLogger("amago")

#: Ray namespace of the control actor (the one ``common.ray_utils.init_ray`` joins).
CONTROL_NAMESPACE = "amago"
#: Seconds between two reads of the control by the driver.
POLL_EVERY_S = 1.0


def control_name(run_name: str) -> str:
    """The Ray actor name of a run's fleet control."""
    return f"control/{run_name}"


class FleetSizeError(ValueError):
    """A fleet size that cannot be set (the message is one line)."""


def check_size(n: object, low: int, high: int) -> int:
    """``n`` if it is an integer in ``[low, high]``; :class:`FleetSizeError` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise FleetSizeError(f"fleet size must be an integer, got {n!r}")
    if n < low:
        why = "one rollout actor per task" if low > 1 else "at least one rollout actor"
        raise FleetSizeError(f"fleet size {n} is below {low} ({why})")
    if n > high:
        raise FleetSizeError(f"fleet size {n} is above actors.max_num_actors={high}")
    return n


@dataclass(frozen=True)
class FleetState:
    """What the control knows: the size asked for, its bounds, and what the driver last
    reported (rollout actors alive, and their ids)."""

    desired: int
    low: int
    high: int
    alive: int = 0
    actor_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScaleAnswer:
    """The answer to a scale request: the state after it, and why it was refused ("" = set)."""

    state: FleetState
    previous: int
    error: str = ""


class FleetControl:
    """The run's fleet control (a named Ray actor, ``num_cpus=0``)."""

    def __init__(self, desired: int, low: int, high: int) -> None:
        self._state = FleetState(check_size(desired, low, high), low, high)

    def set_desired(self, n: int) -> ScaleAnswer:
        prev = self._state.desired
        try:
            n = check_size(n, self._state.low, self._state.high)
        except FleetSizeError as e:
            return ScaleAnswer(self._state, prev, str(e))
        self._state = dataclasses.replace(self._state, desired=n)
        return ScaleAnswer(self._state, prev)

    def get(self) -> FleetState:
        return self._state

    def report(self, alive: int, actor_ids: Sequence[int]) -> None:
        """The driver's view after a change."""
        self._state = dataclasses.replace(self._state, alive=alive, actor_ids=tuple(actor_ids))


def start_control(run_name: str, alt_suffix: str, desired: int, low: int, high: int):
    """Start the run's control; returns ``(handle, name)``. The name is
    :func:`control_name` of ``run_name``, or of ``run_name-alt_suffix`` when another live
    run holds it."""
    import ray

    for name in (control_name(run_name), control_name(f"{run_name}-{alt_suffix}")):
        try:
            handle = (
                ray.remote(FleetControl)
                .options(name=name, namespace=CONTROL_NAMESPACE, num_cpus=0, max_restarts=0)
                .remote(desired, low, high)
            )
        except ValueError:  # the name is taken (another live run)
            continue
        ray.get(handle.get.remote())
        return handle, name
    raise RuntimeError(f"fleet control names for run {run_name!r} are all taken")


def request_scale(run_name: str, n: int, timeout_s: float = 10.0) -> ScaleAnswer:
    """Ask run ``run_name`` (the name its driver printed, without ``control/``) for a fleet
    of ``n`` rollout actors. Needs a connection to the run's Ray cluster; ``ValueError`` when
    no such run is live."""
    import ray

    try:
        handle = ray.get_actor(control_name(run_name), namespace=CONTROL_NAMESPACE)
    except ValueError:
        raise ValueError(f"no live run named {run_name!r} on this Ray cluster") from None
    return ray.get(handle.set_desired.remote(n), timeout=timeout_s)


def plan_resize(
    active: Sequence[tuple[int, int]], n: int, weights: Sequence[float]
) -> tuple[list[int], list[int]]:
    """How to go from the ``active`` actors (``(actor id, task index)`` pairs) to ``n``:
    ``(the task index of each actor to add, the ids of the actors to remove)``.

    The target split over tasks is :func:`deploy.config.assign_tasks` of ``n`` (``weights``:
    the tasks'; empty = a single-task run, task index 0), the split a run started with ``n``
    actors would have; each task with a surplus loses its highest ids."""
    want = Counter(assign_tasks(weights, n)) if weights else Counter({0: n})
    have = Counter(t for _, t in active)
    add = [t for t in sorted(want) for _ in range(max(want[t] - have[t], 0))]
    remove: list[int] = []
    for t in sorted(have):
        surplus = have[t] - want[t]
        if surplus > 0:
            remove += sorted((i for i, k in active if k == t), reverse=True)[:surplus]
    return add, sorted(remove)


@dataclass
class Member:
    """One rollout actor of the fleet, and what its reports added up to."""

    id: int
    handle: object
    task: int  # task index (0 in a single-task run)
    added_s: float
    ping: object | None = None  # an unanswered ping (None: it has answered)
    address: str = ""  # its metrics endpoint, once known
    up_s: float | None = None  # when it first answered
    node: str = ""  # the Ray node id it runs on, once up
    leaving_s: float | None = None  # when it was retired
    removed_s: float | None = None  # when it was killed
    stop_sent: bool = False
    reports: int = 0
    env_steps: int = 0
    rollouts: int = 0
    rollout_steps: int = 0  # env steps of the rollouts it finished (len - 1 each)

    @property
    def alive(self) -> bool:
        return self.ping is None and self.leaving_s is None

    def summary(self, task_names: Sequence[str]) -> dict:
        return {
            "id": self.id,
            "task": task_names[self.task] if task_names else "",
            "added_s": round(self.added_s, 3),
            "up_s": None if self.up_s is None else round(self.up_s, 3),
            "node": self.node,
            "left_s": None if self.leaving_s is None else round(self.leaving_s, 3),
            "removed_s": None if self.removed_s is None else round(self.removed_s, 3),
            "reports": self.reports,
            "env_steps": self.env_steps,
            "rollouts": self.rollouts,
            "rollout_steps": self.rollout_steps,
        }


@dataclass
class FleetSetup:
    """What the :class:`Fleet` needs from the run."""

    make_actor: Callable[[int, int], object]  # (actor id, task index) -> a started actor
    weights: list[float]  # the tasks' weights ([] = single task)
    task_names: list[str]  # ([] = single task)
    first_new_id: int  # the first id no process of the run uses
    low: int
    high: int
    drain_timeout_s: float
    # where each actor runs and serves its metrics; told the rollout actors' endpoints
    discovery: Discovery = field(default_factory=NoDiscovery)
    started: list = field(default_factory=list)  # every handle started (killed at the end)


class Fleet:
    """The rollout actors of a run, resized to what the control says (see module doc)."""

    def __init__(
        self,
        setup: FleetSetup,
        sup: Supervisor,
        metrics,
        actors: Sequence[object],
        tasks_of: Sequence[int],
        control=None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: seconds since the run started (the times in :meth:`summary`; default:
        since this call)."""
        self.setup, self.sup, self.metrics, self.control = setup, sup, metrics, control
        start = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - start)
        self.members: dict[int, Member] = {}
        for i, (h, t) in enumerate(zip(actors, tasks_of)):
            self._register(Member(i, h, t, 0.0, up_s=0.0))
        self.next_id = setup.first_new_id
        self.desired = len(self.members)
        self.changes: list[dict] = []
        self._next_poll = 0.0
        self._control_failed = False
        for m in self.members.values():
            m.node = setup.discovery.node_of(m.handle)
            m.address = setup.discovery.address_of(m.handle) or ""
        self._export()
        self._tell_control()

    # -- bookkeeping -----------------------------------------------------------------------
    def _register(self, m: Member) -> None:
        self.members[m.id] = m
        self.sup.add("actor", m.id, m.handle.collect.remote, ACTOR_RULE)

    def _now(self) -> float:
        return self.clock()

    def active(self) -> list[Member]:
        """Members not leaving (alive or starting)."""
        return [m for m in self.members.values() if m.leaving_s is None]

    def alive(self) -> int:
        return sum(m.alive for m in self.members.values())

    def handles(self) -> list:
        """Every actor not killed yet (leaving ones included)."""
        return [m.handle for m in self.members.values() if m.removed_s is None]

    def addresses(self) -> list[str]:
        return [m.address for m in self.members.values() if m.address and m.removed_s is None]

    def on_report(self, index: int, report) -> None:
        m = self.members[index]
        m.reports += 1
        m.env_steps += report.env_steps
        m.rollouts += len(report.lengths)
        m.rollout_steps += sum(n - 1 for n in report.lengths)

    def _export(self) -> None:
        self.metrics.set("amago_driver_actors_alive", self.alive())
        self.metrics.set("amago_driver_actors_desired", self.desired)

    # -- resizing --------------------------------------------------------------------------
    def resize(self, n: int) -> None:
        """Grow or shrink to ``n`` rollout actors (checked against the bounds)."""
        n = check_size(n, self.setup.low, self.setup.high)
        add, remove = plan_resize([(m.id, m.task) for m in self.active()], n, self.setup.weights)
        now = self._now()
        self.changes.append({"time_s": round(now, 3), "from": self.desired, "to": n})
        print(
            f"fleet: {self.desired} -> {n} rollout actors (adding {len(add)}, retiring ids "
            f"{remove or '-'})",
            flush=True,
        )
        self.desired = n
        for i in remove:
            m = self.members[i]
            m.leaving_s = now
            self.sup.retire("actor", i)
        for task in add:
            i, self.next_id = self.next_id, self.next_id + 1
            h = self.setup.make_actor(i, task)
            self.setup.started.append(h)
            m = Member(i, h, task, now, ping=h.ping.remote())
            self._register(m)
            self.sup.call("actor", i)  # queued behind the constructor
        self._export()
        self._tell_control()

    def step(self) -> None:
        """Poll the control (about once a second), notice actors that came up, and finish
        the departures whose last call is done."""
        import ray

        changed = False
        want = self._poll_control()
        if want is not None and want != self.desired:
            self.resize(want)
        starting = [m for m in self.members.values() if m.ping is not None]
        if starting:
            ready, _ = ray.wait([m.ping for m in starting], num_returns=len(starting), timeout=0)
            for m in starting:
                if m.ping in ready:
                    changed |= self._came_up(m)
        for m in list(self.members.values()):
            if m.leaving_s is not None and m.removed_s is None:
                changed |= self._drain(m)
        if changed:
            self._export()
            self._tell_control()
            self.setup.discovery.publish(self.addresses())

    def _poll_control(self) -> int | None:
        """The control's desired size, when it is time to read it (None otherwise)."""
        import ray

        if self.control is None or self._control_failed or self.clock() < self._next_poll:
            return None
        self._next_poll = self.clock() + POLL_EVERY_S
        try:
            return ray.get(self.control.get.remote(), timeout=5.0).desired
        except (ray.exceptions.RayError, TimeoutError) as e:
            log.warning("fleet control unreachable (%s); the fleet stays as it is", e)
            self._control_failed = True
            return None

    def _came_up(self, m: Member) -> bool:
        import ray

        try:
            ray.get(m.ping)
        except ray.exceptions.RayActorError:  # its constructor failed: Ray restarts it
            m.ping = m.handle.ping.remote()
            return False
        m.ping, m.up_s = None, self._now()
        m.node = self.setup.discovery.node_of(m.handle)
        if m.removed_s is None:
            m.address = self.setup.discovery.address_of(m.handle) or ""
        log.info("fleet: rollout actor %d is up", m.id)
        return True

    def _drain(self, m: Member) -> bool:
        """Kill a leaving actor once its last call finished; True when it was killed."""
        import ray

        if self.sup.in_flight("actor", m.id):
            if not m.stop_sent and self._now() - m.leaving_s > self.setup.drain_timeout_s:
                log.warning(
                    "fleet: actor %d still busy after %.0f s; stopping it",
                    m.id,
                    self.setup.drain_timeout_s,
                )
                m.handle.stop.remote()
                m.stop_sent = True
            return False
        ray.kill(m.handle)
        self.sup.remove("actor", m.id)
        m.removed_s = self._now()
        m.ping = None
        log.info("fleet: rollout actor %d removed", m.id)
        return True

    def _tell_control(self) -> None:
        if self.control is not None and not self._control_failed:
            self.control.report.remote(self.alive(), [m.id for m in self.active()])

    def summary(self) -> dict:
        """summary.json's ``fleet``: the final size, every change, and every actor's counts."""
        names = self.setup.task_names
        return {
            "desired": self.desired,
            "alive": self.alive(),
            "changes": self.changes,
            "actors": [m.summary(names) for m in sorted(self.members.values(), key=_by_id)],
        }


def _by_id(m: Member) -> int:
    return m.id


__all__ = [
    "CONTROL_NAMESPACE",
    "Fleet",
    "FleetControl",
    "FleetSetup",
    "FleetSizeError",
    "FleetState",
    "ScaleAnswer",
    "check_size",
    "control_name",
    "plan_resize",
    "request_scale",
    "start_control",
]


def start_fleet(
    cfg,
    w,
    run_dir,
    sup: Supervisor,
    metrics,
    discovery: Discovery,
    started: list,
    clock: Callable[[], float],
    say: Callable[[str], None],
) -> tuple[Fleet, str]:
    """The elastic fleet of a run's rollout actors (``w``: the builder's ``Workers``) and its
    control; also the run name ``scale --run`` takes (said on the console). New actors come
    from the builder's factory, with ids after the evaluation actors' (``n .. n+tasks-1``)."""
    import ray

    tasks = cfg.env.task_list()
    control, name = start_control(
        cfg.run.name, run_dir.name, len(w.actors), len(tasks), cfg.actors.max_num_actors
    )
    started.append(control)
    run = name.split("/", 1)[1]
    where = (
        f" --address {ray.get_runtime_context().gcs_address}" if not cfg.deploy.ray_address else ""
    )
    say(f"fleet: resize with `python -m deploy.ops.cluster scale N --run {run}{where}`")
    setup = FleetSetup(
        make_actor=w.make_actor,
        weights=[t.weight for t in tasks],
        task_names=[t.name for t in tasks],
        first_new_id=len(w.actors) + len(w.evaluators),
        low=len(tasks),
        high=cfg.actors.max_num_actors,
        drain_timeout_s=cfg.actors.drain_timeout_s,
        discovery=discovery,
        started=started,
    )
    names = [t.name for t in tasks]
    tasks_of = [names.index(t) for t in w.actor_tasks]
    fleet = Fleet(setup, sup, metrics, w.actors, tasks_of, control=control, clock=clock)
    return fleet, run
