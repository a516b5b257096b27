"""Data-parallel learning: the ``torch.distributed`` process group of ``learner.num_learners``
ranks, and the few collectives the AMAGO update needs.

Every rank holds a full copy of the agent and samples its own batches. After each backward
the ranks average their gradients (one flat all-reduce), so every rank applies the same
optimizer step to the same parameters; the statistics an update moves from its batch (PopArt
and the observation normaliser) are merged from the sums of all ranks' batches
(:meth:`ProcessGroup.sum_`), so they stay identical too. The target networks' EMA and the
sigma-reparam vectors are deterministic functions of the parameters and need nothing.

    rdv = Rendezvous(rank=0, world_size=2, port=free_port())
    group = ProcessGroup(rdv, device)               # every rank, at start-up
    group.broadcast_(tensors)                       # rank 0's values everywhere
    group.mean_grads_(params)                       # after backward
    group.sum_([a, b])                              # element-wise sums over the ranks

One learner (``num_learners=1``) uses no group at all: the code paths take ``None``.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Rendezvous:
    """Where a rank finds its group (picklable: the builder passes it to each rank)."""

    rank: int
    world_size: int
    port: int  # rank 0 listens here (TCP store)
    host: str = "127.0.0.1"  # the ranks share one node
    timeout_s: float = 120.0  # a collective (or the rendezvous) stuck this long fails


class ProcessGroup:
    """This process's membership of the learners' group: gloo on CPU, NCCL on CUDA."""

    def __init__(self, rdv: Rendezvous, device: torch.device):
        import torch.distributed as dist

        self.rank, self.world_size = rdv.rank, rdv.world_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self._dist = dist
        dist.init_process_group(
            self.backend,
            init_method=f"tcp://{rdv.host}:{rdv.port}",
            rank=rdv.rank,
            world_size=rdv.world_size,
            timeout=datetime.timedelta(seconds=rdv.timeout_s),
        )
        self.device = device

    # -- collectives -------------------------------------------------------------------------
    def sum_(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Element-wise sums over the ranks of tensors shaped alike on every rank (one
        float64 all-reduce for all of them; each returned in its own dtype)."""
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        self._dist.all_reduce(flat)
        out, i = [], 0
        for t in tensors:
            out.append(flat[i : i + t.numel()].view(t.shape).to(t.dtype))
            i += t.numel()
        return out

    def mean_grads_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (one flat all-reduce). Which
        parameters have a gradient is a function of the code path, the same on every rank."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._dist.all_reduce(flat)
        flat.div_(self.world_size)
        i = 0
        for g in grads:
            g.copy_(flat[i : i + g.numel()].view_as(g))
            i += g.numel()

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's."""
        for t in tensors:
            self._dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small picklable values)."""
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]
