"""Process-level settings of the learner actor (nested as ``learner.worker``)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config_utils import require
from learner.prefetch import KINDS


@dataclass
class LearnerWorkerConfig:
    prefetch_batches: int = 2  # batches sampled ahead of the updates
    # where they are sampled: "process" (a child process: another core, not the update's GIL)
    # or "thread" (a thread of the learner process); see learner/prefetch.py
    sample_in: str = "process"
    publish_every: int = 20  # publish weights to actors every this many updates
    checkpoint_every_min: float = 10.0  # write a checkpoint this often (wall-clock minutes)
    # ... and every this many updates (0 = by time only), and once this many updates after the
    # learner (re)started (0 = off): a crash early in a run resumes instead of starting over.
    # Periodic checkpoints are written on a thread from a copy of the state (the updates go on).
    checkpoint_every_updates: int = 5000
    checkpoint_first_after: int = 200
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    num_cpus: float = 1.0  # Ray CPU resource the learner asks for (logical)
    sample_timeout_s: float = 1.0  # one blocking sample attempt (the loop retries)
    # Ray restarts of a crashed learner; a restarted learner resumes from this run's newest
    # checkpoint (so a crash costs at most the updates since the last checkpoint).
    max_restarts: int = 2
    # Data-parallel learners (learner.num_learners > 1): a rank stuck this long in a
    # collective or in the group's rendezvous fails, and the group restarts (seconds).
    group_timeout_s: float = 120.0

    def validate(self) -> None:
        require(self.prefetch_batches >= 1, "prefetch_batches", "must be >= 1")
        require(self.sample_in in KINDS, "sample_in", f"must be one of {', '.join(KINDS)}")
        require(self.publish_every >= 1, "publish_every", "must be >= 1")
        require(self.checkpoint_every_min > 0, "checkpoint_every_min", "must be > 0")
        require(self.checkpoint_every_updates >= 0, "checkpoint_every_updates", "must be >= 0")
        require(self.checkpoint_first_after >= 0, "checkpoint_first_after", "must be >= 0")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        require(self.sample_timeout_s > 0, "sample_timeout_s", "must be > 0")
        require(self.max_restarts >= 0, "max_restarts", "must be >= 0")
        require(self.group_timeout_s > 0, "group_timeout_s", "must be > 0")
