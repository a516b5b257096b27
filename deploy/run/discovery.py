"""Where a run's processes are: the Ray node each actor runs on, the ``host:port`` of each
metrics endpoint, and the Prometheus ``file_sd`` targets file that lists them.

The driver makes one :class:`ScrapeTargets` per run (the driver's, learner's and evaluation
actors' endpoints as its fixed part); the fleet (``deploy/run/fleet.py``) asks it where each
rollout actor runs and publishes the rollout actors' endpoints whenever the fleet changes::

    targets = ScrapeTargets.for_run(cfg, run_dir, [driver_addr, *process_addresses(fixed)])
    targets.publish(fleet_addresses)   # rewrites the file (atomically)
    targets.close()                    # a per-run file (deploy.metrics_sd_dir) goes
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol


class Discovery(Protocol):
    """What the fleet asks of the run's process discovery."""

    def node_of(self, handle) -> str:
        """The Ray node id an actor runs on ("" = not asked)."""
        ...

    def address_of(self, handle) -> str | None:
        """An actor's metrics endpoint ``host:port`` (None: metrics are not served)."""
        ...

    def publish(self, actor_addresses: list[str]) -> None:
        """The rollout actors' endpoints changed: the full list."""
        ...


class NoDiscovery:
    """Nothing asked, nothing published (a fleet without metrics, unit tests)."""

    def node_of(self, handle) -> str:
        return ""

    def address_of(self, handle) -> str | None:
        return None

    def publish(self, actor_addresses: list[str]) -> None:
        pass


def _node_address(_actor) -> str:
    """Run inside an actor (``__ray_call__``): the address its metrics are served on."""
    from common.metrics import NODE_HOST, resolve_metrics_host

    return resolve_metrics_host(NODE_HOST)


def _node_id(_actor) -> str:
    """Run inside an actor (``__ray_call__``): the Ray node it runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def node_of(handle) -> str:
    """The Ray node id the actor ``handle`` runs on."""
    import ray

    return ray.get(handle.__ray_call__.remote(_node_id), timeout=30)


def process_addresses(handles: list) -> list[str]:
    """``host:port`` of the metrics endpoints of the actors ``handles``, ``node`` hosts made
    concrete (asked of the actor itself)."""
    import ray

    from common.metrics import NODE_HOST

    out = []
    for h, addr in zip(handles, ray.get([h.metrics_address.remote() for h in handles])):
        host, port = addr.rsplit(":", 1)
        if host == NODE_HOST:
            host = ray.get(h.__ray_call__.remote(_node_address))
        out.append(f"{host}:{port}")
    return out


def write_sd_file(path: str, addresses: list[str], run_name: str) -> None:
    """Prometheus file_sd targets for every process of this run (written atomically)."""
    doc = [{"targets": sorted(set(addresses)), "labels": {"job": "amago", "run": run_name}}]
    tmp = Path(path + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


class ScrapeTargets:
    """A run's :class:`Discovery` on Ray: the fixed endpoints (``base``: driver, learner,
    evaluation actors; [] when metrics are not served) plus the rollout actors', in the
    targets file ``path`` ("" = none); ``temporary``: the file goes at :meth:`close`."""

    def __init__(self, path: str, temporary: bool, base: list[str], run_name: str):
        self.path, self.temporary, self.base, self.run_name = path, temporary, base, run_name

    @classmethod
    def for_run(cls, cfg, run_dir: Path, base: list[str]) -> ScrapeTargets:
        """``deploy.metrics_sd_dir``: a file of this run's own there (removed when the run
        ends), else ``deploy.metrics_sd_file`` (kept: the next run rewrites it)."""
        d = cfg.deploy
        if d.metrics_sd_dir:
            name = f"{cfg.run.name}-{Path(run_dir).name}-{os.getpid()}.json"
            return cls(str(Path(d.metrics_sd_dir) / name), True, base, cfg.run.name)
        return cls(d.metrics_sd_file, False, base, cfg.run.name)

    def node_of(self, handle) -> str:
        return node_of(handle)

    def address_of(self, handle) -> str | None:
        return process_addresses([handle])[0] if self.base else None

    def publish(self, actor_addresses: list[str]) -> None:
        if self.path and self.base:
            write_sd_file(self.path, [*self.base, *actor_addresses], self.run_name)

    def close(self) -> None:
        if self.temporary:
            Path(self.path).unlink(missing_ok=True)
