"""The rollout actor: a thin Ray actor around :class:`actors.rollout.RolloutLoop`.

Run it with ``max_concurrency=2``: one thread runs ``collect``/``evaluate`` (a lock makes a
second one wait: the driver's final evaluation may arrive while a periodic one still runs),
the other answers control calls (``stop``, ``memory_mb``...) that must not wait behind a
``collect`` held up by replay backpressure.

It builds its envs, policy and replay writer with the factories its :class:`ActorSetup`
carries, writes finished rollouts straight to the replay service (never through the driver),
pulls weights through :class:`common.weights.WeightClient` only when the broker has a newer
version, and answers each call with a typed report (:mod:`common.reports`). Run it with ``ray.remote(max_restarts=...)``:
a restarted actor rebuilds everything from its constructor arguments, so a crash costs only
the rollouts that were in progress.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from actors.config import ActorConfig
from actors.envbatch import make_env_batch
from actors.exploration import Exploration
from actors.rollout import RolloutLoop, RolloutStats
from common.codec import RecordError
from common.core import Policy, ReplayWriter
from common.metrics import Metrics, process_memory_mb
from common.records import Trajectory
from common.replay import ReplayBackpressure, ReplayUnavailable
from common.reports import ActorReport, EvalReport
from common.spec import EnvSpec
from common.weights import WeightClient

log = logging.getLogger(__name__)


@dataclass
class ActorSetup:
    """Everything an actor needs, picklable, passed once at construction. The factories come
    from the builder (``deploy/run/builder.py``): the actor never imports the learner or the
    replay service, only the roles of :mod:`common.core`."""

    actor_id: int
    num_actors: int
    actors: ActorConfig
    spec: EnvSpec  # of the envs make_env builds
    env_id: str  # recorded in each trajectory's metadata
    make_env: Callable[[int], gym.Env]  # seed -> a standardised env
    make_policy: Callable[[EnvSpec, int], Policy]  # (spec, num_slots) -> the acting policy
    make_writer: Callable[[], ReplayWriter] | None  # None = evaluation actor (stores nothing)
    metrics_host: str = "127.0.0.1"
    serve_metrics: bool = True
    eval_sample: bool = False  # an evaluation actor samples its actions instead of greedy ones
    # the task of a multi-task run this actor steps ("" = a single-task run): recorded as
    # meta.info["task"] of every rollout, and the ``task`` label of its return metrics
    task: str = ""
    # (new steps, overlap): stream long rollouts in chunks (actors.rollout.RolloutLoop); None
    # = whole rollouts at their end
    chunk: tuple[int, int] | None = None


class RolloutActor:
    def __init__(self, setup: ActorSetup, broker) -> None:
        import torch

        cfg = setup.actors
        torch.set_num_threads(cfg.torch_threads)
        self.setup = setup
        self.actor_id, self.evaluating = setup.actor_id, setup.make_writer is None
        self.label = "eval" if self.evaluating else str(setup.actor_id)
        seed = cfg.seed * 10_007 + setup.actor_id + (5_000 if self.evaluating else 0)
        spec = setup.spec
        envs = make_env_batch(
            [functools.partial(setup.make_env, seed * 131 + i) for i in range(cfg.envs_per_actor)],
            cfg.vector_env,
            cfg.vector_env_context,
        )
        self.policy = setup.make_policy(spec, envs.num_envs)
        self.writer = None if self.evaluating else setup.make_writer()
        explore = None
        if not self.evaluating:
            explore = Exploration(
                cfg.exploration,
                setup.actor_id,
                setup.num_actors,
                spec.discrete,
                spec.action_dim,
                np.random.default_rng(seed),
                horizon=spec.max_episode_steps,
            )
        self.loop = RolloutLoop(
            envs,
            spec,
            self.policy,
            None if self.evaluating else self._insert,
            explore,
            actor_id=setup.actor_id,
            env_id=setup.env_id,
            task=setup.task,
            seed=seed,
            greedy=self.evaluating and not setup.eval_sample,
            chunk=setup.chunk,
        )
        self.metrics = Metrics()
        self.metrics_port = self.metrics.serve(setup.metrics_host) if setup.serve_metrics else 0
        self.weights = WeightClient(
            broker, lambda v: self.metrics.set("amago_actor_policy_version", v, actor=self.label)
        )
        self._stopping = False
        self._rollout_lock = threading.Lock()  # one collect/evaluate at a time
        self.insert_retries = 0
        self.rejected = 0
        self._lags: list[int] = []  # policy_lag of each rollout inserted in this collect
        self.incarnation = secrets.token_hex(6)  # new in every (re)started process
        self.weights.wait(self.policy)

    # -- replay --------------------------------------------------------------------------
    def policy_lag(self, traj: Trajectory) -> int:
        """Actor lag of a finished rollout, measured as it is handed to the replay: the
        newest learner version this actor has seen published
        (:meth:`common.weights.WeightClient.learner_version`: the last broker answer, at
        most ``weight_poll_steps`` env steps old, no extra round trip) minus
        ``traj.meta.policy_version``, the version the rollout *started* acting with (a
        rollout spanning a weight load counts from its first version). Both are learner
        update counts, so this is how many updates stale the rollout's policy was; it
        lags the learner's true counter by up to one publish interval. Always >= 0."""
        return max(self.weights.learner_version(self.policy) - traj.meta.policy_version, 0)

    def _insert(self, traj: Trajectory) -> None:
        """Write a finished rollout; waits out backpressure and replay outages."""
        lag = self.policy_lag(traj)
        deadline = time.monotonic() + self.setup.actors.insert_retry_s
        delay = 0.01
        token = secrets.token_hex(16)  # one per rollout: a retried insert stores it once
        while not self._stopping:
            try:
                if self.writer.insert(traj, token=token) >= 0:  # stored (-1: parked for a
                    # shard that is down; stored later by a flush, or lost with the actor)
                    self._lags.append(lag)
                    self.metrics.observe("amago_actor_policy_lag_versions", lag, actor=self.label)
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
    def collect(self, steps: int | None = None) -> ActorReport:
        """Step every env ``steps`` times (default ``steps_per_call``)."""
        cfg = self.setup.actors
        steps = steps or cfg.steps_per_call
        st = RolloutStats()
        done = 0
        with self._rollout_lock:
            self._lags = []
            while done < steps and not self._stopping:
                self.weights.poll(self.policy)
                n = min(cfg.weight_poll_steps, steps - done)
                st.merge(self.loop.run(n))
                done += n
            if self._stopping and self.writer is not None:
                self.writer.flush(force=True)  # a shard that came back gets what was parked
            self._export(st)
            return ActorReport(
                actor=self.label,
                incarnation=self.incarnation,
                env_steps=st.env_steps,
                returns=st.returns,
                successes=st.successes,
                lengths=st.lengths,
                env_faults=st.env_faults,
                act_ms=1e3 * st.act_seconds / max(st.act_calls, 1),
                policy_version=self.policy.version,
                epsilon=self._epsilon(),
                insert_retries=self.insert_retries,
                rejected=self.rejected,
                task=self.setup.task,
                policy_lags=self._lags,
            )

    def evaluate(self, episodes: int) -> EvalReport:
        """Returns of fresh rollouts with the newest weights (greedy actions unless
        ``eval_sample``): ``episodes`` rounded up to a multiple of the number of envs (each
        env contributes the same number)."""
        per_slot = -(-episodes // self.loop.num_envs)
        horizon = self.loop.spec.max_episode_steps + 1
        with self._rollout_lock:
            self.weights.refresh(self.policy)
            st = self.loop.run_rollouts(per_slot, max_steps=per_slot * horizon)
            self._export(st)
            return EvalReport(
                incarnation=self.incarnation,
                policy_version=self.policy.version,
                returns=st.returns,
                successes=st.successes,
                lengths=st.lengths,
                episode_returns=st.episode_returns,
                task=self.setup.task,
            )

    def _epsilon(self) -> float:
        return self.loop.exploration.epsilon if self.loop.exploration else 0.0

    def _export(self, st: RolloutStats) -> None:
        m, lab = self.metrics, self.label
        m.inc("amago_actor_env_steps", st.env_steps, actor=lab)
        m.inc("amago_actor_episodes", len(st.returns), actor=lab)
        m.inc("amago_actor_env_faults", st.env_faults, actor=lab)
        if st.returns:
            m.set(
                "amago_actor_episode_return",
                float(np.mean(st.returns)),
                actor=lab,
                task=self.setup.task,
            )
        if st.act_calls:
            m.observe(
                "amago_actor_inference_latency_seconds", st.act_seconds / st.act_calls, actor=lab
            )
        m.set("amago_actor_epsilon", self._epsilon(), actor=lab)

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
