"""The learner actor: a thin Ray actor around the pure learner its :class:`LearnerSetup`'s
factory builds (``make_learner``: :class:`learner.amago.AmagoLearner`, whose update variant is
``learner.variant``, see :mod:`learner.variants`).

Batches are sampled from the replay service (a sampler made by the factory in its
:class:`LearnerSetup`) ahead of the updates by :mod:`learner.prefetch`: in a child process
by default (``learner.worker.sample_in``), so sampling, decoding and relabeling run on another
core and never contend for the update's GIL. Weights are published through
:class:`common.weights.WeightPublisher` every ``publish_every`` updates with ONE ``ray.put``
per version; checkpoints are written every ``checkpoint_every_min`` minutes and every
``checkpoint_every_updates`` updates (on a thread, from a copy of the state), and once soon
after a (re)start (``checkpoint_first_after`` updates). Each ``train``
call answers with a :class:`common.reports.LearnerReport`.

A rank of a data-parallel group (``LearnerSetup.rendezvous``, see :mod:`learner.group`)
joins the group's ``torch.distributed`` process group before building its learner, starts
from the checkpoint rank 0 names, and takes each update together with the other ranks: before
every update the ranks agree (one small all-reduce) whether all have a batch and whether any
wants to end the call, so they always run the same number of updates. Only rank 0 publishes
weights, writes checkpoints and serves metrics; its report counts the group's updates once and
the timesteps of every rank's batches.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.core import ReplaySampler
from common.metrics import Metrics, process_memory_mb
from common.records import Batch
from common.replay import ReplayStats
from common.reports import LearnerReport
from common.spec import EnvSpec
from common.weights import WeightPublisher
from learner.config import LearnerConfig
from learner.distributed import ProcessGroup, Rendezvous
from learner.prefetch import make_prefetcher

if TYPE_CHECKING:
    from learner.amago import AmagoLearner

log = logging.getLogger(__name__)

# (spec, config, data-parallel group or None) -> the pure learner the actor drives
LearnerFactory = Callable[[EnvSpec, LearnerConfig, ProcessGroup | None], "AmagoLearner"]


@dataclass
class LearnerSetup:
    """Everything the learner actor needs, picklable, passed once at construction. The
    factories come from the builder (``deploy/run/builder.py``): the learner never imports the
    replay service, only the roles of :mod:`common.core`."""

    spec: EnvSpec
    learner: LearnerConfig
    make_sampler: Callable[[], ReplaySampler]  # the replay sampler (relabeling included)
    make_learner: LearnerFactory  # the pure learner, built in the actor's process
    run_dir: str
    resume_from: str = ""  # checkpoint file or run directory to continue from ("" = fresh)
    metrics_host: str = "127.0.0.1"
    serve_metrics: bool = True
    rendezvous: Rendezvous | None = None  # a rank of a data-parallel group (None = alone)


class LearnerActor:
    def __init__(self, setup: LearnerSetup, broker) -> None:
        import torch

        from learner.amago import resolve_device
        from learner.checkpoint import latest_checkpoint

        cfg = setup.learner
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.setup, self.cfg = setup, cfg
        self.group = None
        if setup.rendezvous is not None:
            self.group = ProcessGroup(setup.rendezvous, resolve_device(cfg.device))
        self.rank = self.group.rank if self.group is not None else 0
        self.learner = setup.make_learner(setup.spec, cfg, self.group)
        self.ckpt_dir = Path(setup.run_dir) / "checkpoints"
        # A restarted learner (Ray re-runs this constructor) resumes from this run's newest
        # checkpoint; a fresh one from ``resume_from`` if given. Every rank of a group
        # restores the one rank 0 found.
        self.resumed_from = latest_checkpoint(str(self.ckpt_dir)) or (
            latest_checkpoint(setup.resume_from) if setup.resume_from else None
        )
        if self.group is not None:
            self.resumed_from = self.group.broadcast_object(self.resumed_from)
        if setup.resume_from and self.resumed_from is None:
            raise FileNotFoundError(f"resume_from: no checkpoint at {setup.resume_from!r}")
        if self.resumed_from:
            self.learner.restore(self.resumed_from)
            log.warning("learner resumed from %s (update %d)", self.resumed_from, self.version())
        self.incarnation = secrets.token_hex(6)  # new in every (re)started process
        self.metrics = Metrics()  # before the prefetcher, whose thread counts into it
        self.sampler = setup.make_sampler()  # replay statistics (and sampling, on a thread)
        self.prefetcher = make_prefetcher(
            cfg.worker.sample_in,
            setup.make_sampler,
            cfg.batch_size,
            cfg.worker.sample_timeout_s,
            cfg.worker.prefetch_batches,
            on_wait=lambda s: self.metrics.inc("amago_replay_sample_wait_seconds", s),
            sampler=self.sampler,
        )
        self._held: Batch | None = None  # a rank's batch kept for the group's next update
        self._last_ckpt = time.monotonic()
        self._ckpt_version = self.learner.version  # the version of the last checkpoint
        self._first_ckpt_due = cfg.worker.checkpoint_first_after > 0
        self._ckpt_writer = None  # a thread writing a periodic checkpoint (one at a time)
        serve = setup.serve_metrics and self.rank == 0  # one endpoint per group
        self.metrics_port = self.metrics.serve(setup.metrics_host) if serve else 0
        self.weights = WeightPublisher(broker) if self.rank == 0 else None
        self.publish(restart=True)  # replaces the weights of a learner that died, if any

    # -- weights and checkpoints ---------------------------------------------------------
    def publish(self, restart: bool = False) -> int:
        """Publish the current weights (rank 0 of a group only; the others' are the same)."""
        v = self.learner.version
        if self.weights is not None and self.weights.publish(
            v, self.learner.policy_weights(), restart
        ):
            self.metrics.set("amago_learner_policy_version", v)
        return v

    def checkpoint(self, background: bool = False) -> str:
        """Write a checkpoint; its path ("" on ranks other than 0: they hold the same state).
        ``background``: from a copy of the state, on a thread (the updates go on meanwhile);
        otherwise now, after any background write in flight."""
        import copy
        import threading

        from learner.checkpoint import checkpoint_name

        self._last_ckpt, self._ckpt_version = time.monotonic(), self.learner.version
        self._first_ckpt_due = False
        if self.rank != 0:
            return ""
        self._join_checkpoint_writer()
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / checkpoint_name(self.learner.version)
        if not background:
            self.learner.save(str(path))
            self._prune_checkpoints()
            return str(path)
        state = copy.deepcopy(self.learner.state_dict())  # tensors cloned: updates go on
        self._ckpt_writer = threading.Thread(
            target=self._write_checkpoint, args=(str(path), state), daemon=True
        )
        self._ckpt_writer.start()
        return str(path)

    def _write_checkpoint(self, path: str, state: dict) -> None:
        from learner.checkpoint import save_checkpoint

        save_checkpoint(path, self.learner.cfg.to_dict(), self.learner.spec, state)
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        from learner.checkpoint import list_checkpoints

        for old in list_checkpoints(self.ckpt_dir)[: -self.cfg.worker.keep_checkpoints]:
            Path(old).unlink(missing_ok=True)

    def _join_checkpoint_writer(self) -> None:
        if self._ckpt_writer is not None:
            self._ckpt_writer.join()
            self._ckpt_writer = None

    def _checkpoint_due(self) -> bool:
        """By time (``checkpoint_every_min``), by updates (``checkpoint_every_updates``), or the
        first one ``checkpoint_first_after`` updates after this learner started."""
        w = self.cfg.worker
        since = self.learner.version - self._ckpt_version
        return (
            time.monotonic() - self._last_ckpt > 60.0 * w.checkpoint_every_min
            or (w.checkpoint_every_updates > 0 and since >= w.checkpoint_every_updates)
            or (self._first_ckpt_due and since >= w.checkpoint_first_after)
        )

    # -- training ------------------------------------------------------------------------
    def train(self, n_updates: int, max_seconds: float = 60.0) -> LearnerReport:
        """Run up to ``n_updates`` updates (fewer if no data arrives within ``max_seconds``)."""
        t_end = time.monotonic() + max_seconds
        sums: dict[str, float] = {}
        pending: list = []
        done, waited, age_sum, seq_steps = 0, 0.0, 0.0, 0
        t_start = time.perf_counter()
        while True:
            stop = done >= n_updates or time.monotonic() >= t_end
            if self._held is None and not stop:
                t0 = time.perf_counter()
                wait = min(1.0, max(t_end - time.monotonic(), 0.01))
                self._held = self.prefetcher.get(timeout=wait)
                waited += time.perf_counter() - t0
            go, stop, steps = self._agree(stop)
            if stop:
                break
            if not go:
                continue
            batch, self._held = self._held, None
            # metrics stay on the device until the call ends: no host sync per update
            pending.append(self.learner.train_step_deferred(batch))
            age_sum += float(np.mean(self.learner.version - batch.policy_version))
            seq_steps += steps
            done += 1
            if self.learner.version % self.cfg.worker.publish_every == 0:
                self.publish()
            if self._checkpoint_due():
                self.checkpoint(background=True)
        for out in self.learner.resolve(pending):  # one read for every update of the call
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        means = {k: v / done for k, v in sums.items()} if done else {}
        age = age_sum / done if done else 0.0
        self._export(means, done, seq_steps, waited, age)
        return LearnerReport(
            incarnation=self.incarnation,
            updates=done,
            version=self.learner.version,
            seq_timesteps=seq_steps,
            seconds=time.perf_counter() - t_start,
            batch_wait_s=waited,
            data_age=age,
            sample_errors=self.prefetcher.errors,
            resumed_from=self.resumed_from,
            replay=self.replay_stats(),
            losses=means,
        )

    def _agree(self, stop: bool) -> tuple[bool, bool, int]:
        """``(update now, end the call, timesteps of the update's batches)``: this learner's
        own answer, or the group's (all ranks hold a batch; any rank wants to stop; the
        timesteps summed over the ranks) from one all-reduce."""
        held = self._held
        steps = int(held.mask.sum()) if held is not None else 0
        if self.group is None:
            return held is not None, stop, steps
        import torch

        flags = torch.tensor([float(held is not None), float(stop), float(steps)])
        if self.group.backend == "nccl":
            flags = flags.to(self.learner.device)
        (flags,) = self.group.sum_([flags])
        ready, stops, total = flags.cpu().tolist()
        return int(ready) == self.group.world_size, stops > 0, int(total)

    def _export(self, means: dict, done: int, seq_steps: int, waited: float, age: float) -> None:
        m = self.metrics
        m.inc("amago_learner_updates", done)
        m.inc("amago_learner_seq_timesteps", seq_steps)
        m.inc("amago_learner_batch_wait_seconds", waited)
        if done:
            m.set("amago_learner_data_age_updates", age)
        for k, v in means.items():
            if k.endswith("_loss") or k == "loss":
                m.set("amago_learner_loss", v, term=k)
        if "grad_norm" in means:
            m.set("amago_learner_grad_norm", means["grad_norm"])
        if "q_mean" in means:
            m.set("amago_learner_q_mean", means["q_mean"])
        try:
            import torch

            gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
            m.set("amago_learner_gpu_memory_bytes", gpu)  # 0 on CPU, as documented
        except Exception:  # metrics must never break training
            pass

    def replay_stats(self) -> ReplayStats | None:
        """Replay service statistics, also exported as ``amago_replay_*`` gauges: those of
        the sampler that samples (a sampler process's latest, else this process's own)."""
        try:
            st = self.prefetcher.stats() or self.sampler.stats()
        except Exception as e:
            log.warning("replay stats unavailable: %s", e)
            return None
        m = self.metrics
        for key in (
            "trajectories",
            "timesteps",
            "bytes",
            "inserted_trajectories",
            "inserted_timesteps",
            "sampled_timesteps",
        ):
            m.set(f"amago_replay_{key}", float(getattr(st, key)))
        m.set("amago_replay_shard_outages", float(st.shard_outages))
        for reason, n in st.rejected.items():
            m.set("amago_replay_rejected", float(n), reason=reason)
        for reason, n in st.corrupt.items():
            m.set("amago_replay_corrupt", float(n), reason=reason)
        return st

    def version(self) -> int:
        return self.learner.version

    def metrics_address(self) -> str:
        return f"{self.setup.metrics_host}:{self.metrics_port}"

    def memory_mb(self) -> dict[str, float]:
        """This process's memory, and ``sampler_rss_mb``: its sampler process's resident
        memory (now, or when it was stopped; 0 when sampling on a thread)."""
        return {**process_memory_mb(), "sampler_rss_mb": self.prefetcher.child_rss_mb()}

    def close(self) -> str:
        """Stops training: publishes the current version (the last ``publish_every`` may have
        fallen before it) and writes the final checkpoint; its path."""
        self.prefetcher.close()
        self.publish()
        return self.checkpoint()
