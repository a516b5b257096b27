"""A multi-node Ray cluster on 127.0.0.1, held by one supervising process (``make cluster-up``
starts it detached; SIGTERM or SIGINT shuts every node down).

    python -m deploy.ops.local_cluster --temp-dir .state/cluster/ray --ready-file ready.json

Why not ``ray start``: on Linux, ``ray start --node-ip-address=127.0.0.1`` rewrites the loopback
address into the machine's external one and its servers bind every interface; Ray keeps a node
on loopback only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and with that flag ``ray start``
refuses to start worker nodes. Ray's own multi-node-on-one-machine tool,
``ray.cluster_utils.Cluster``, starts the same head and worker node processes (GCS, raylets,
dashboard with the jobs API, agents) without that rewrite, so every node here is 127.0.0.1.
A real multi-machine cluster uses ``ray start`` (deploy/clusters/aws.yaml, deploy/k8s/).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.config_utils import ConfigError, require
from common.net import LOOPBACK, free_port
from common.ray_utils import RAY_CLUSTER_FLAG


@dataclass
class LocalRayConfig:
    """Shape of the local Ray cluster."""

    # Ray's temp/session directory (logs, sockets, Ray's Prometheus service-discovery file).
    temp_dir: str = "/tmp/ray"
    # GCS port (the cluster address is 127.0.0.1:<gcs_port>).
    gcs_port: int = 6379
    # Dashboard and jobs API port (`ray job submit --address http://127.0.0.1:<port>`).
    dashboard_port: int = 8265
    # Logical CPUs of the head node (it also runs job drivers).
    head_cpus: float = 2.0
    # Worker nodes besides the head, and logical CPUs of each.
    worker_nodes: int = 1
    worker_cpus: float = 2.0
    # Shared-memory object store per node (MiB).
    object_store_mb: int = 256

    def validate(self) -> None:
        require(os.path.isabs(self.temp_dir), "temp_dir", "must be an absolute path")
        require(
            len(self.temp_dir) <= 40,  # worker nodes use <temp_dir>/n<i>
            "temp_dir",
            "too long: Ray's unix sockets under it must fit in 107 bytes",
        )
        for name in ("gcs_port", "dashboard_port"):
            require(1024 <= getattr(self, name) <= 65535, name, "must be in 1024..65535")
        require(self.gcs_port != self.dashboard_port, "dashboard_port", "must differ from gcs_port")
        require(self.head_cpus >= 0, "head_cpus", "must be >= 0")
        require(self.worker_nodes >= 1, "worker_nodes", "must be >= 1 (a multi-node cluster)")
        require(self.worker_cpus > 0, "worker_cpus", "must be > 0")
        require(self.object_store_mb >= 80, "object_store_mb", "must be >= 80 (Ray's minimum)")


def node_temp_dir(cfg: LocalRayConfig, worker: int | None = None) -> str:
    """Temp dir of the head (``worker=None``) or of worker node ``worker``. Every node needs
    its own: each node's runtime-env agent unpacks a job's ``--working-dir`` into
    ``<temp>/session_*/runtime_resources`` and replaces what is there, so nodes sharing one
    directory delete the files a job's driver is importing on another node."""
    return cfg.temp_dir if worker is None else f"{cfg.temp_dir}/n{worker}"


def _node_args(cfg: LocalRayConfig, cpus: float, worker: int | None = None) -> dict:
    return {
        "node_ip_address": LOOPBACK,
        "num_cpus": cpus,
        "object_store_memory": cfg.object_store_mb * 2**20,
        "temp_dir": node_temp_dir(cfg, worker),
        # Not 52365, Ray's default: any other Ray on this machine may hold it already.
        "dashboard_agent_listen_port": free_port(),
    }


def _head_args(cfg: LocalRayConfig) -> dict:
    """Node arguments of the head: a worker node's plus the GCS and dashboard ports."""
    return _node_args(cfg, cfg.head_cpus) | {
        "gcs_server_port": cfg.gcs_port,
        "include_dashboard": True,
        "dashboard_host": LOOPBACK,
        "dashboard_port": cfg.dashboard_port,
    }


def _stop_on_signals() -> dict:
    """Record SIGTERM/SIGINT in the returned dict's ``"signal"`` (0 until one arrives)."""
    stop = {"signal": 0}

    def on_signal(signum, _frame) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _restore_machine_default(machine_default: str | None) -> None:
    """Put back the machine-wide default Ray address (``machine_default``; none: remove it)."""
    from ray._common.utils import reset_ray_address
    from ray._private.utils import write_ray_address

    if machine_default:
        write_ray_address(machine_default)
    else:
        reset_ray_address()


def _start_head(cfg: LocalRayConfig, cluster_cls: type):
    """Start the head node as a ``cluster_cls`` (Ray's ``Cluster``) and return the cluster."""
    from ray._private.utils import read_ray_address, write_ray_address

    # Cluster() records its address as the machine-wide default that `ray.init()` and
    # `ray.init("auto")` join; put back whatever was there, so other Ray users of this machine
    # keep starting their own instances. Inside the cluster, "auto" (the jobs' drivers) reads
    # <temp_dir>/ray_current_cluster.
    machine_default = read_ray_address()
    cluster = cluster_cls(
        initialize_head=True, head_node_args=_head_args(cfg), shutdown_at_exit=True
    )
    write_ray_address(cluster.gcs_address, cfg.temp_dir)
    _restore_machine_default(machine_default)
    return cluster


def _add_workers(cfg: LocalRayConfig, cluster) -> list[dict]:
    """Add the worker nodes, wait for all nodes, and check every one is on loopback."""
    for i in range(cfg.worker_nodes):
        cluster.add_node(**_node_args(cfg, cfg.worker_cpus, worker=i + 1))
    cluster.wait_for_nodes()
    nodes = [
        {"node_id": n.node_id, "address": n.node_ip_address, "head": n.head}
        for n in [cluster.head_node, *cluster.worker_nodes]
    ]
    bad = [n["address"] for n in nodes if n["address"] != LOOPBACK]
    if bad:
        raise RuntimeError(f"Ray nodes came up on {bad}, not {LOOPBACK}")
    return nodes


def _write_ready(cfg: LocalRayConfig, cluster, nodes: list[dict], ready_file: Path) -> dict:
    """Write the cluster's addresses and nodes to ``ready_file`` atomically; return them."""
    info = {
        "pid": os.getpid(),
        "gcs_address": cluster.gcs_address,
        "dashboard_url": f"http://{LOOPBACK}:{cfg.dashboard_port}",
        "session_dir": cluster.head_node.get_session_dir_path(),
        "prometheus_sd_file": str(Path(cfg.temp_dir) / "prom_metrics_service_discovery.json"),
        "nodes": nodes,
        "config": asdict(cfg),
    }
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(ready_file)
    return info


def _hold(cluster, stop: dict) -> int:
    """Wait for a signal (exit code 0) or a dead head node process (1)."""
    while not stop["signal"]:
        if not cluster.head_node.remaining_processes_alive():
            print("ray: a head node process died; shutting down", flush=True)
            return 1
        time.sleep(0.5)
    print(f"ray: signal {stop['signal']}, shutting down", flush=True)
    return 0


def _shutdown(cluster) -> None:
    """Stop every node, keeping the machine-wide default Ray address as it was."""
    from ray._private.utils import read_ray_address

    machine_default = read_ray_address()  # shutdown() deletes it, whoever wrote it
    cluster.shutdown()
    _restore_machine_default(machine_default)
    print("ray: all nodes stopped", flush=True)


def run(cfg: LocalRayConfig, ready_file: Path) -> int:
    """Start the cluster, write ``ready_file`` (JSON), hold it until SIGTERM/SIGINT."""
    cfg.validate()
    # Read by Ray when it is imported, and inherited by every node and worker process.
    os.environ[RAY_CLUSTER_FLAG] = "0"
    from ray.cluster_utils import Cluster

    stop = _stop_on_signals()
    cluster = _start_head(cfg, Cluster)
    try:
        nodes = _add_workers(cfg, cluster)
        info = _write_ready(cfg, cluster, nodes, ready_file)
        print(
            f"ray: {len(nodes)} nodes up at {cluster.gcs_address}, dashboard "
            f"{info['dashboard_url']}",
            flush=True,
        )
        return _hold(cluster, stop)
    finally:
        ready_file.unlink(missing_ok=True)
        _shutdown(cluster)


def main(argv: list[str] | None = None) -> int:
    d = LocalRayConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ready-file", required=True, type=Path)
    for name, value in asdict(d).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(p.parse_args(argv))
    ready = args.pop("ready_file")
    try:
        return run(LocalRayConfig(**args), ready)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
