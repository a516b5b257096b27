"""Starting Ray for a local single-node run on loopback, or joining an existing cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from common.net import LOOPBACK

#: Ray's env var that, set to "0", keeps every node on loopback (single-machine mode).
RAY_CLUSTER_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(
    address: str = "",
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    namespace: str = "amago",
) -> str:
    """Connect to Ray and return the node address the driver runs on.

    ``address=""`` starts a private local instance bound to 127.0.0.1. On Linux Ray otherwise
    advertises the machine's external interface even when told 127.0.0.1 (it "resolves"
    localhost to a reachable address); Ray's single-machine mode (the default on macOS and
    Windows) keeps everything on loopback, so we select it here and then verify it with
    ``ray.nodes()``. ``address="auto"`` or ``"host:port"`` joins a running cluster (as under
    ``ray job submit``), where nodes keep the addresses they were started with.
    """
    if not address:
        os.environ[RAY_CLUSTER_FLAG] = "0"  # inherited by raylet and worker processes
    import ray
    from ray._private import ray_constants

    if not address:
        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by ray._private.services
    if ray.is_initialized():
        return ray.util.get_node_ip_address()
    kwargs: dict = {"namespace": namespace, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            address="local",  # a private instance even if a cluster runs (or left its file)
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            **kwargs,
        )
        bad = [
            n["NodeManagerAddress"]
            for n in ray.nodes()
            if n["Alive"] and n["NodeManagerAddress"] != LOOPBACK
        ]
        if bad:
            ray.shutdown()
            raise RuntimeError(f"local Ray came up on {bad}, not {LOOPBACK}; refusing to run")
    return ray.util.get_node_ip_address()


@contextlib.contextmanager
def ray_session(address: str = "", num_cpus: int | None = None) -> Iterator[bool]:
    """:func:`init_ray` for a run; yields whether this call started Ray, and shuts down on
    exit the Ray it started (a Ray already initialised, or a cluster joined by an outer
    caller, is left as it is)."""
    import ray

    started = not ray.is_initialized()
    init_ray(address, num_cpus=num_cpus)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
