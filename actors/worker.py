"""The rollout actor: a thin Ray actor around :class:`actors.rollout.RolloutWorker`.

Run it with ``max_concurrency=2``: one thread runs ``collect``/``evaluate`` (a lock makes a
second one wait: the driver's final evaluation may arrive while a periodic one still runs),
the other answers control calls (``stop``, ``memory_mb``...) that must not wait behind a
``collect`` held up by replay backpressure.

It builds its envs and KV-cached policy, writes finished rollouts straight to the replay
service (never through the driver), pulls weights only when the broker has a newer version,
and reports what it did from each ``collect`` call. Run it with ``ray.remote(max_restarts=...)``:
a restarted actor rebuilds everything from its constructor arguments, so a crash costs only
the rollouts that were in progress.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np

from actors.config import ActorConfig
from actors.exploration import Exploration
from actors.rollout import RolloutStats, RolloutWorker
from common.codec import RecordError
from common.envs.config import EnvConfig
from common.metrics import Metrics, process_memory_mb
from common.records import Trajectory

log = logging.getLogger(__name__)


@dataclass
class ActorSetup:
    """Everything an actor needs, picklable, passed once at construction."""

    actor_id: int
    num_actors: int
    env: EnvConfig
    actors: ActorConfig
    learner: object  # learner.config.LearnerConfig (the policy's architecture)
    replay: object | None  # replay_service.config.ReplayConfig; None = evaluation actor
    metrics_host: str = "127.0.0.1"
    serve_metrics: bool = True


class RolloutActor:
    def __init__(self, setup: ActorSetup, broker) -> None:
        import torch

        from common.envs.factory import env_spec, make_env
        from learner.inference import InferencePolicy

        cfg = setup.actors
        torch.set_num_threads(cfg.torch_threads)
        self.setup, self.broker = setup, broker
        self.actor_id, self.evaluating = setup.actor_id, setup.replay is None
        self.label = "eval" if self.evaluating else str(setup.actor_id)
        seed = cfg.seed * 10_007 + setup.actor_id + (5_000 if self.evaluating else 0)
        spec = env_spec(setup.env)
        envs = [make_env(setup.env, seed=seed * 131 + i) for i in range(cfg.envs_per_actor)]
        # acting context = the training window: at most learner.max_seq_len timesteps
        self.policy = InferencePolicy(
            spec,
            setup.learner,
            num_slots=len(envs),
            context_len=setup.learner.max_seq_len,
            device="cpu",
        )
        self.store = None
        if not self.evaluating:
            from replay_service import ReplayStore, connect

            self.store = ReplayStore(connect(setup.replay.redis), setup.replay)
        explore = None
        if not self.evaluating:
            explore = Exploration(
                cfg.exploration,
                setup.actor_id,
                setup.num_actors,
                spec.discrete,
                spec.action_dim,
                np.random.default_rng(seed),
            )
        sink = None if self.evaluating else self._insert
        self.worker = RolloutWorker(
            envs,
            spec,
            self.policy,
            sink,
            explore,
            actor_id=setup.actor_id,
            env_id=setup.env.id,
            seed=seed,
            greedy=self.evaluating,
        )
        self.metrics = Metrics()
        self.metrics_port = self.metrics.serve(setup.metrics_host) if setup.serve_metrics else 0
        self._pending_poll = None
        self._stopping = False
        self._rollout_lock = threading.Lock()  # one collect/evaluate at a time
        self.insert_retries = 0
        self.rejected = 0
        self.incarnation = secrets.token_hex(6)  # new in every (re)started process
        self._wait_for_weights()

    # -- weights -------------------------------------------------------------------------
    def _load(self, found) -> bool:
        """Load a published version; False (weights kept) if its object is gone: the
        learner that put it died, and its restarted self will publish again."""
        import ray
        from ray.exceptions import ObjectLostError

        version, (ref,) = found
        try:
            weights = ray.get(ref, timeout=60)
        except (ObjectLostError, ray.exceptions.GetTimeoutError) as e:
            log.warning("weights version %d unavailable (%s); keeping mine", version, e)
            return False
        self.policy.load_weights(version, weights)
        self.metrics.set("amago_actor_policy_version", version, actor=self.label)
        return True

    def _wait_for_weights(self, timeout_s: float = 300.0) -> None:
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = ray.get(self.broker.latest.remote(self.policy.version))
            if found is not None and self._load(found):
                return
            time.sleep(0.2)
        raise TimeoutError("no policy weights were published within 300 s")

    def _poll_weights(self, block: bool = False) -> None:
        """Non-blocking: look at the answer to the previous poll, then ask again."""
        import ray

        if block:
            found = ray.get(self.broker.latest.remote(self.policy.version))
            if found is not None:
                self._load(found)
            return
        if self._pending_poll is not None:
            ready, _ = ray.wait([self._pending_poll], timeout=0)
            if not ready:
                return
            found = ray.get(self._pending_poll)
            if found is not None and found[0] > self.policy.version:
                self._load(found)
        self._pending_poll = self.broker.latest.remote(self.policy.version)

    # -- replay --------------------------------------------------------------------------
    def _insert(self, traj: Trajectory) -> None:
        """Write a finished rollout; waits out backpressure and replay outages."""
        from replay_service import ReplayBackpressure, ReplayUnavailable

        deadline = time.monotonic() + self.setup.actors.insert_retry_s
        delay = 0.01
        token = secrets.token_hex(16)  # one per rollout: a retried insert stores it once
        while not self._stopping:
            try:
                self.store.insert(traj, token=token)
                return
            except RecordError as e:  # counted by the store; drop it and carry on
                self.rejected += 1
                log.warning("replay rejected a rollout: %s", e)
                return
            except ReplayBackpressure:  # rate limiter or server memory: wait, never drop
                pass
            except ReplayUnavailable as e:
                if time.monotonic() > deadline:
                    log.error(
                        "replay unreachable for %.0f s, dropping a rollout: %s",
                        self.setup.actors.insert_retry_s,
                        e,
                    )
                    return
            self.insert_retries += 1
            self.metrics.inc("amago_actor_insert_retries", actor=self.label)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- calls from the driver -----------------------------------------------------------
    def collect(self, steps: int | None = None) -> dict:
        """Step every env ``steps`` times (default ``steps_per_call``); returns statistics."""
        cfg = self.setup.actors
        steps = steps or cfg.steps_per_call
        st = RolloutStats()
        done = 0
        with self._rollout_lock:
            while done < steps and not self._stopping:
                self._poll_weights()
                n = min(cfg.weight_poll_steps, steps - done)
                st.merge(self.worker.run(n))
                done += n
            return self._report(st)

    def evaluate(self, episodes: int) -> dict:
        """Greedy returns of fresh rollouts with the newest weights: ``episodes`` rounded up
        to a multiple of the number of envs (each env contributes the same number)."""
        per_slot = -(-episodes // len(self.worker.envs))
        horizon = self.worker.spec.max_episode_steps + 1
        with self._rollout_lock:
            self._poll_weights(block=True)
            return self._report(self.worker.run_rollouts(per_slot, max_steps=per_slot * horizon))

    def _report(self, st: RolloutStats) -> dict:
        m, lab = self.metrics, self.label
        m.inc("amago_actor_env_steps", st.env_steps, actor=lab)
        m.inc("amago_actor_episodes", len(st.returns), actor=lab)
        m.inc("amago_actor_env_faults", st.env_faults, actor=lab)
        if st.returns:
            m.set("amago_actor_episode_return", float(np.mean(st.returns)), actor=lab)
        if st.act_calls:
            m.observe(
                "amago_actor_inference_latency_seconds", st.act_seconds / st.act_calls, actor=lab
            )
        eps = self.worker.exploration.epsilon if self.worker.exploration else 0.0
        m.set("amago_actor_epsilon", eps, actor=lab)
        return {
            "actor": self.label,
            "incarnation": self.incarnation,
            "env_steps": st.env_steps,
            "returns": st.returns,
            "successes": st.successes,
            "lengths": st.lengths,
            "episode_returns": st.episode_returns,
            "env_faults": st.env_faults,
            "act_ms": 1e3 * st.act_seconds / max(st.act_calls, 1),
            "policy_version": self.policy.version,
            "epsilon": eps,
            "insert_retries": self.insert_retries,
            "rejected": self.rejected,
        }

    def stop(self) -> None:
        """Make a running ``collect`` return soon (a blocked insert gives up its rollout).
        The actor runs with ``max_concurrency=2`` so this call is not queued behind it."""
        self._stopping = True

    def metrics_address(self) -> str:
        return f"{self.setup.metrics_host}:{self.metrics_port}"

    def context_timesteps(self) -> int:
        """Timesteps of context each env slot's policy state holds (= learner.max_seq_len:
        acting never sees more than a training window)."""
        return self.policy.capacity_timesteps()

    def memory_mb(self) -> dict[str, float]:
        return process_memory_mb()

    def ping(self) -> str:
        return self.label
