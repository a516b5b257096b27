"""The learner actor: a thin Ray actor around the pure :class:`learner.amago.AmagoLearner`.

Batches are sampled from the replay service (a sampler made by the factory in its
:class:`LearnerSetup`) on a background thread (:class:`Prefetcher`) so sampling, decoding and
relabeling overlap the update. Weights are published through
:class:`common.weights.WeightPublisher` every ``publish_every`` updates with ONE ``ray.put``
per version; checkpoints are written every ``checkpoint_every_min`` minutes. Each ``train``
call answers with a :class:`common.reports.LearnerReport`.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.core import ReplaySampler
from common.metrics import Metrics, process_memory_mb
from common.records import Batch
from common.replay import RateLimitTimeout, ReplayStats
from common.reports import LearnerReport
from common.spec import EnvSpec
from common.weights import WeightPublisher
from learner.config import LearnerConfig

log = logging.getLogger(__name__)


class Prefetcher:
    """Calls ``sample()`` on a daemon thread, keeping up to ``depth`` batches ready.

    ``sample`` returns a batch, or None when nothing could be sampled yet (rate limiter,
    empty store); exceptions are logged and retried after a pause, never fatal.
    """

    def __init__(self, sample: Callable[[], Batch | None], depth: int):
        self._sample, self._q = sample, queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="prefetch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._sample()
            except Exception as e:  # replay outage, corrupt data...: keep the learner alive
                self.errors += 1
                log.warning("batch sampling failed (%s); retrying", e)
                self._stop.wait(0.5)
                continue
            while batch is not None and not self._stop.is_set():
                try:
                    self._q.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def get(self, timeout: float) -> Batch | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class LearnerSetup:
    """Everything the learner actor needs, picklable, passed once at construction. The
    sampler factory comes from the builder (``deploy/builder.py``): the learner never imports
    the replay service, only the roles of :mod:`common.core`."""

    spec: EnvSpec
    learner: LearnerConfig
    make_sampler: Callable[[], ReplaySampler]  # the replay sampler (relabeling included)
    run_dir: str
    resume_from: str = ""  # checkpoint file or run directory to continue from ("" = fresh)
    metrics_host: str = "127.0.0.1"
    serve_metrics: bool = True


class LearnerActor:
    def __init__(self, setup: LearnerSetup, broker) -> None:
        import torch

        from learner.amago import AmagoLearner
        from learner.checkpoint import latest_checkpoint

        cfg = setup.learner
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.setup, self.cfg = setup, cfg
        self.learner = AmagoLearner(setup.spec, cfg)
        self.ckpt_dir = Path(setup.run_dir) / "checkpoints"
        # A restarted learner (Ray re-runs this constructor) resumes from this run's newest
        # checkpoint; a fresh one from ``resume_from`` if given.
        self.resumed_from = latest_checkpoint(str(self.ckpt_dir)) or (
            latest_checkpoint(setup.resume_from) if setup.resume_from else None
        )
        if setup.resume_from and self.resumed_from is None:
            raise FileNotFoundError(f"resume_from: no checkpoint at {setup.resume_from!r}")
        if self.resumed_from:
            self.learner.restore(self.resumed_from)
            log.warning("learner resumed from %s (update %d)", self.resumed_from, self.version())
        self.incarnation = secrets.token_hex(6)  # new in every (re)started process
        self.sampler = setup.make_sampler()
        self.prefetcher = Prefetcher(self._sample_once, cfg.worker.prefetch_batches)
        self._last_ckpt = time.monotonic()
        self.metrics = Metrics()
        self.metrics_port = self.metrics.serve(setup.metrics_host) if setup.serve_metrics else 0
        self.weights = WeightPublisher(broker)
        self.publish(restart=True)  # replaces the weights of a learner that died, if any

    def _sample_once(self) -> Batch | None:
        t0 = time.perf_counter()
        try:
            return self.sampler.sample(
                self.cfg.batch_size, timeout_s=self.cfg.worker.sample_timeout_s
            )
        except RateLimitTimeout:
            return None
        finally:
            self.metrics.inc("amago_replay_sample_wait_seconds", time.perf_counter() - t0)

    # -- weights and checkpoints ---------------------------------------------------------
    def publish(self, restart: bool = False) -> int:
        v = self.learner.version
        if self.weights.publish(v, self.learner.policy_weights(), restart):
            self.metrics.set("amago_learner_policy_version", v)
        return v

    def checkpoint(self) -> str:
        from learner.checkpoint import checkpoint_name, list_checkpoints

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / checkpoint_name(self.learner.version)
        self.learner.save(str(path))
        for old in list_checkpoints(self.ckpt_dir)[: -self.cfg.worker.keep_checkpoints]:
            Path(old).unlink(missing_ok=True)
        self._last_ckpt = time.monotonic()
        return str(path)

    # -- training ------------------------------------------------------------------------
    def train(self, n_updates: int, max_seconds: float = 60.0) -> LearnerReport:
        """Run up to ``n_updates`` updates (fewer if no data arrives within ``max_seconds``)."""
        t_end = time.monotonic() + max_seconds
        sums: dict[str, float] = {}
        pending: list = []
        done, waited, age_sum, seq_steps = 0, 0.0, 0.0, 0
        t_start = time.perf_counter()
        while done < n_updates and time.monotonic() < t_end:
            t0 = time.perf_counter()
            batch = self.prefetcher.get(timeout=min(1.0, max(t_end - time.monotonic(), 0.01)))
            waited += time.perf_counter() - t0
            if batch is None:
                continue
            # metrics stay on the device until the call ends: no host sync per update
            pending.append(self.learner.train_step_deferred(batch))
            age_sum += float(np.mean(self.learner.version - batch.policy_version))
            seq_steps += int(batch.mask.sum())
            done += 1
            if self.learner.version % self.cfg.worker.publish_every == 0:
                self.publish()
            if time.monotonic() - self._last_ckpt > 60.0 * self.cfg.worker.checkpoint_every_min:
                self.checkpoint()
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
        """Replay service statistics, also exported as ``amago_replay_*`` gauges."""
        try:
            st = self.sampler.stats()
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
        return process_memory_mb()

    def close(self) -> str:
        self.prefetcher.close()
        return self.checkpoint()
