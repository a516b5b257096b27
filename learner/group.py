"""A data-parallel learner group as ONE learner for the driver (``learner.num_learners > 1``).

:class:`LearnerGroup` is a thin Ray actor that owns ``num_learners`` :class:`LearnerActor`
ranks, packed on one node by the placement group the builder made for them (one bundle per
rank, ``STRICT_PACK``), and answers the driver's calls the way a single learner does:
``train`` runs the call on every rank and returns rank 0's report (updates counted once,
timesteps summed over the ranks, sampling errors summed), ``close`` and ``checkpoint`` return
rank 0's checkpoint, ``version`` and ``metrics_address`` are rank 0's.

Each start picks a free TCP port on the node (ranks meet on 127.0.0.1) and waits for every
rank's constructor (rendezvous, the checkpoint rank 0 names, the first publication). When a
rank dies or fails a call, the group kills every rank and starts them all again from the run's
newest checkpoint (a dead rank restarts the group, not the run), then answers that call with
an empty report carrying the new rank 0's incarnation: the driver's supervisor counts it as a
learner restart and calls again. More than ``learner.worker.max_restarts`` such restarts fail
the run. The ranks are owned by the group actor, so they die with it; Ray restarting the
group actor itself starts fresh ranks the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from common.reports import LearnerReport
from learner.distributed import Rendezvous, free_port
from learner.worker import LearnerActor, LearnerSetup

log = logging.getLogger(__name__)


class RankFailed(RuntimeError):
    """A rank died, failed its call, or did not answer in time."""


def _identity(actor: LearnerActor) -> tuple[str, str | None]:
    """Run inside a rank (``__ray_call__``): its incarnation and the checkpoint it resumed."""
    return actor.incarnation, actor.resumed_from


class LearnerGroup:
    """``setups[r]`` is rank r's setup (its own sampler seed); ``placement`` the placement
    group whose bundle r rank r runs in; ``num_cpus``/``num_gpus`` what each rank asks for."""

    def __init__(
        self,
        setups: list[LearnerSetup],
        broker,
        placement,
        num_cpus: float,
        num_gpus: float,
    ) -> None:
        self.setups, self.broker, self.placement = setups, broker, placement
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        worker = setups[0].learner.worker
        self.max_restarts, self.timeout_s = worker.max_restarts, worker.group_timeout_s
        self.restarts = 0
        self.ranks: list = []
        self._start()

    # -- life cycle ------------------------------------------------------------------------
    def _start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n, port = len(self.setups), free_port()
        self.ranks = []
        for r, setup in enumerate(self.setups):
            rdv = Rendezvous(rank=r, world_size=n, port=port, timeout_s=self.timeout_s)
            strategy = PlacementGroupSchedulingStrategy(self.placement, r)
            handle = (
                ray.remote(LearnerActor)
                .options(
                    num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus,
                    max_restarts=0,  # the group restarts all ranks together
                    max_task_retries=0,
                    scheduling_strategy=strategy,
                )
                .remote(dataclasses.replace(setup, rendezvous=rdv), self.broker)
            )
            self.ranks.append(handle)
        self._gather([h.version.remote() for h in self.ranks], None)

    def _kill(self) -> None:
        import ray

        for h in self.ranks:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already gone
                pass
        self.ranks = []

    def _restart(self, why: Exception) -> None:
        """Kill every rank and start them all again, up to ``max_restarts`` times in all."""
        while True:
            self.restarts += 1
            if self.restarts > self.max_restarts:
                raise RankFailed(
                    f"learner group: a rank failed after {self.max_restarts} restarts "
                    f"(learner.worker.max_restarts): {why}"
                ) from why
            log.warning("learner group: %s; restarting all ranks (%d)", why, self.restarts)
            self._kill()
            try:
                self._start()
                return
            except RankFailed as e:
                why = e

    def _gather(self, refs: list, timeout_s: float | None) -> list:
        """Every rank's answer, in rank order; :class:`RankFailed` as soon as one fails, or
        when they are not all in within ``timeout_s`` (None: the group's collective timeout
        plus a margin, for start-up)."""
        import ray

        limit = self.timeout_s + 30.0 if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        pending, out = list(refs), {}
        while pending:
            ready, pending = ray.wait(
                pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0)
            )
            if not ready:
                raise RankFailed(f"{len(pending)} rank(s) did not answer within {limit:.0f} s")
            for ref in ready:
                try:
                    out[ref] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise RankFailed(f"rank {refs.index(ref)}: {type(e).__name__}: {e}") from e
        return [out[r] for r in refs]

    def _call_all(self, method: str, *args, timeout_s: float | None = None) -> list:
        return self._gather([getattr(h, method).remote(*args) for h in self.ranks], timeout_s)

    # -- the learner's interface -----------------------------------------------------------
    def train(self, n_updates: int, max_seconds: float = 60.0) -> LearnerReport:
        """Rank 0's report of ``n_updates`` group updates (see the module docstring)."""
        try:
            reports = self._call_all(
                "train", n_updates, max_seconds, timeout_s=max_seconds + self.timeout_s + 30.0
            )
        except RankFailed as e:
            self._restart(e)
            return self._restarted_report()
        first = reports[0]
        return dataclasses.replace(first, sample_errors=sum(r.sample_errors for r in reports))

    def _restarted_report(self) -> LearnerReport:
        import ray

        incarnation, resumed = ray.get(self.ranks[0].__ray_call__.remote(_identity))
        return LearnerReport(
            incarnation=incarnation,
            updates=0,
            version=ray.get(self.ranks[0].version.remote()),
            seq_timesteps=0,
            seconds=0.0,
            batch_wait_s=0.0,
            data_age=0.0,
            sample_errors=0,
            resumed_from=resumed,
            replay=None,
        )

    def version(self) -> int:
        import ray

        return ray.get(self.ranks[0].version.remote())

    def checkpoint(self) -> str:
        return self._call_all("checkpoint")[0]

    def close(self) -> str:
        """Every rank's ``close``; rank 0's final checkpoint."""
        return self._call_all("close")[0]

    def metrics_address(self) -> str:
        """Rank 0's endpoint (the only one a group serves; same node as this actor)."""
        import ray

        return ray.get(self.ranks[0].metrics_address.remote())

    def memory_mb(self) -> dict[str, float]:
        """Memory of the ranks, summed."""
        per = self._call_all("memory_mb")
        return {k: float(sum(m[k] for m in per)) for k in per[0]}

    def rank_handles(self) -> list:
        """The ranks' actor handles (rank order), for inspection."""
        return list(self.ranks)


def start_group(setups: list[LearnerSetup], broker, num_cpus: float, num_gpus: float):
    """``(the group actor, its placement group)`` for ``len(setups)`` ranks on ONE node: a
    ``STRICT_PACK`` placement group of one bundle per rank (``num_cpus`` CPUs, ``num_gpus``
    GPUs), the :class:`LearnerGroup` actor in bundle 0 (Ray restarts it up to
    ``learner.worker.max_restarts`` times). The caller removes the placement group when the
    run ends (:func:`release`): it outlives the actors otherwise."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # a bundle must hold something: num_cpus=0 ranks get a token share
    bundle = {"CPU": max(num_cpus, 1e-3), **({"GPU": num_gpus} if num_gpus else {})}
    pg = placement_group([dict(bundle) for _ in setups], strategy="STRICT_PACK")
    group = (
        ray.remote(LearnerGroup)
        .options(
            num_cpus=0,
            max_restarts=setups[0].learner.worker.max_restarts,
            max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
        )
        .remote(setups, broker, pg, num_cpus, num_gpus)
    )
    return group, pg


def release(handle) -> None:
    """End what a run started: kill an actor, remove a placement group (and so what runs in
    it)."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if isinstance(handle, PlacementGroup):
        remove_placement_group(handle)
    else:
        ray.kill(handle)


def release_all(handles: list) -> None:
    """:func:`release` each of ``handles`` (what a run started), whatever state it is in."""
    import contextlib

    for h in handles:
        with contextlib.suppress(Exception):
            release(h)
