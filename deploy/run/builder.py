"""Builds a run's processes and hands each the factories it needs (Acme's ``make_actor`` /
``make_policy`` pattern), so that peer packages never import each other: ``actors/`` gets a
policy factory (the learner's inference policy), an env factory and a replay-writer factory;
``learner/`` gets a replay-sampler factory and a learner factory. Everything here is
picklable (Ray ships it to the processes, which call the factories in their own address
space).

    workers = build_workers(cfg, spec, run_dir, use_gpu)
    workers.learner, workers.actors, workers.evaluator, workers.broker

A multi-task run (``env.tasks``) spreads its rollout actors over the tasks
(:func:`deploy.config.assign_tasks`: in proportion to the weights, at least one each) and starts
one evaluation actor per task (``workers.evaluators``, in task order).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.envs.config import EnvConfig, Task
from common.spec import EnvSpec
from deploy.config import TrainConfig, assign_tasks
from learner.config import LearnerConfig
from replay_service.config import ReplayConfig, SampleShape


# -- factories (module-level so Ray pickles them by reference) --------------------------------
def make_env(env: EnvConfig, seed: int):
    """Env factory: the standardised env (``common.envs.factory.make_env``)."""
    from common.envs.factory import make_env as build

    return build(env, seed=seed)


def make_policy(learner: LearnerConfig, spec: EnvSpec, num_slots: int):
    """Policy factory: the learner's KV-cached inference policy; its context is the training
    window (``learner.max_seq_len`` timesteps per slot)."""
    from learner.inference import InferencePolicy

    return InferencePolicy(
        spec, learner, num_slots=num_slots, context_len=learner.max_seq_len, device="cpu"
    )


def sample_shape(learner: LearnerConfig) -> SampleShape:
    """What the learner samples (``learner.batch_size`` windows of at most
    ``learner.max_seq_len`` timesteps): handed to the replay's samplers and writers, whose
    config does not repeat it."""
    return SampleShape(batch_size=learner.batch_size, max_seq_len=learner.max_seq_len)


def make_writer(replay: ReplayConfig, shape: SampleShape):
    """Replay-writer factory: a store on the run's Redis (sharded over
    ``replay.redis.shards`` when it names more servers); ``shape`` (the learner's) sizes the
    rate limiter's automatic tolerance."""
    from replay_service.shards import make_writer as build

    return build(replay, shape)


def make_sampler(replay: ReplayConfig, shape: SampleShape, seed: int, spec: EnvSpec | None = None):
    """Replay-sampler factory: batches of the learner's ``shape`` with the configured
    relabeling; ``spec`` fixes the batch layout (records that do not match it are skipped and
    counted as "schema")."""
    from replay_service import connect, get_relabeler
    from replay_service.shards import make_sampler as build

    relabel = get_relabeler(replay.relabel, **dict(replay.relabel_kwargs))
    if replay.prefill.enabled:  # offline data: replay.prefill.mix of every batch from it
        from replay_service.prefill import make_mixed_sampler

        return make_mixed_sampler(replay, shape, connect(replay.redis), relabel, seed, spec)
    return build(replay, shape, relabel=relabel, seed=seed, spec=spec)  # sharded if several


def make_learner(spec: EnvSpec, learner: LearnerConfig, group=None):
    """Learner factory: the pure AMAGO learner; its update is ``learner.variant``'s
    (:mod:`learner.variants`). ``group``: the rank's data-parallel process group, or None."""
    from learner.amago import AmagoLearner

    return AmagoLearner(spec, learner, group)


# -- processes -------------------------------------------------------------------------------
@dataclass
class Workers:
    """The Ray actors of one run."""

    broker: object
    learner: object
    actors: list
    evaluators: list  # one per task (one for a single-task run)
    tasks: list[str] = field(default_factory=list)  # task names ([""] = a single task)
    actor_tasks: list[str] = field(default_factory=list)  # the task of each rollout actor
    # (actor id, task index) -> one more rollout actor started as the first ones were (the
    # elastic fleet, deploy/run/fleet.py)
    make_actor: Callable[[int, int], object] | None = None

    @property
    def evaluator(self) -> object:
        return self.evaluators[0]

    def all(self) -> list:
        return [self.learner, *self.actors, *self.evaluators]


def learner_placement(device: str, cluster_gpus: float, local: bool) -> tuple[bool, str]:
    """``(ask Ray for a GPU, the device the learner runs on)`` for ``learner.device``.

    ``cluster_gpus`` is ``ray.cluster_resources()["GPU"]`` now; ``local``: this run started
    its own Ray on this machine (nothing can join it). ``cuda`` always asks Ray for a GPU
    (on a cluster whose GPU nodes scale from zero the autoscaler brings one up; the run
    waits ``deploy.gpu_wait_s``), except where none can ever come: a local Ray without one
    (``ConfigError`` on ``learner.device``). ``auto`` takes a GPU only if the cluster has one
    now and otherwise runs on CPU, said so on the console (a GPU node that would scale up
    later is not waited for: say ``cuda``). The learner gets the resolved device, never
    ``auto``, so it cannot pick a GPU that Ray did not give it."""
    from common.config_utils import ConfigError

    if device == "cpu":
        return False, "cpu"
    if device == "cuda":
        if cluster_gpus <= 0 and local:
            raise ConfigError(
                "learner.device",
                "is 'cuda' but this machine's Ray has no GPU (torch or the driver sees "
                "none); use learner.device=cpu or auto, or run on a cluster with GPU nodes",
            )
        return True, "cuda"
    if cluster_gpus > 0:
        return True, "cuda"
    print(
        "learner: device auto -> cpu (the Ray cluster has no GPU now; on a cluster whose GPU "
        "nodes scale from zero, set learner.device=cuda to ask for one)",
        flush=True,
    )
    return False, "cpu"


def wait_for_learner(learner, use_gpu: bool, timeout_s: float) -> None:
    """Block until the learner is up (it publishes version 0 in its constructor); with a GPU
    asked for, fail clearly after ``timeout_s`` instead of waiting forever for one."""
    import ray

    if not use_gpu:
        ray.get(learner.version.remote())
        return
    try:
        ray.get(learner.version.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        from common.config_utils import ConfigError

        raise ConfigError(
            "learner.device",
            f"is 'cuda' but Ray gave the learner no GPU within deploy.gpu_wait_s={timeout_s:g} "
            f"s (cluster resources now: {ray.cluster_resources()}); add a GPU node or use "
            "learner.device=cpu",
        ) from None


def start_broker():
    """``(handle, address)`` of the run's weight broker: the driver keeps the handle, the
    restartable workers get the address (its unique name; see ``common.weights``)."""
    import uuid

    from common.weights import start_named_broker

    return start_named_broker(f"amago-weights-{uuid.uuid4().hex[:16]}")


def learner_setup(cfg: TrainConfig, spec: EnvSpec, run_dir: Path, use_gpu: bool, rank: int = 0):
    """What learner ``rank`` is built from; each rank's sampler has its own seed (seed + rank)."""
    from learner.worker import LearnerSetup

    return LearnerSetup(
        spec=spec,
        # the device Ray placed it for: never "auto" (see learner_placement)
        learner=dataclasses.replace(cfg.learner, device="cuda" if use_gpu else "cpu"),
        make_sampler=functools.partial(
            make_sampler, cfg.replay, sample_shape(cfg.learner), cfg.learner.seed + rank, spec
        ),
        make_learner=make_learner,
        run_dir=str(run_dir),
        resume_from=cfg.run.resume_from,
        metrics_host=cfg.deploy.metrics_host,
        serve_metrics=cfg.deploy.serve_metrics,
    )


def start_learner(
    cfg: TrainConfig,
    spec: EnvSpec,
    broker,
    run_dir: Path,
    use_gpu: bool,
    started: list | None = None,
):
    """The learner actor (restartable: a restart resumes from the run's newest checkpoint);
    with ``learner.num_learners > 1`` the group that stands for it (:func:`start_learner_group`).
    What it starts is appended to ``started`` if given (for :func:`learner.group.release`)."""
    import ray

    from learner.worker import LearnerActor

    started = [] if started is None else started
    if cfg.learner.num_learners > 1:
        group, pg = start_learner_group(cfg, spec, broker, run_dir, use_gpu)
        started += [group, pg]
        return group
    setup = learner_setup(cfg, spec, run_dir, use_gpu)
    learner = (
        ray.remote(LearnerActor)
        .options(
            num_cpus=cfg.learner.worker.num_cpus,
            num_gpus=1 if use_gpu else 0,
            max_restarts=cfg.learner.worker.max_restarts,
            max_task_retries=0,
        )
        .remote(setup, broker)
    )
    started.append(learner)
    return learner


def start_learner_group(cfg: TrainConfig, spec: EnvSpec, broker, run_dir: Path, use_gpu: bool):
    """``(group actor, placement group)``: ``learner.num_learners`` data-parallel ranks on one
    node behind a :class:`learner.group.LearnerGroup` actor, which the driver supervises as
    the learner."""
    from learner.group import start_group

    n, w = cfg.learner.num_learners, cfg.learner.worker
    setups = [learner_setup(cfg, spec, run_dir, use_gpu, rank=r) for r in range(n)]
    return start_group(setups, broker, w.num_cpus, 1 if use_gpu else 0)


def start_rollout_actor(
    cfg: TrainConfig,
    broker,
    index: int,
    evaluation: bool = False,
    strategy: str = "DEFAULT",
    spec: EnvSpec | None = None,
    task: Task | None = None,
):
    """Rollout actor ``index`` (an evaluation actor, writing nothing to replay, if
    ``evaluation``: its env is ``run.eval_env``'s, its actions sampled if ``run.eval_sample``)
    as a restartable Ray actor with a second thread for control calls. ``spec``: the training
    env's (built from ``cfg.env`` when not given). ``task``: the task of a multi-task run it
    steps (its env, and the name its rollouts and metrics carry)."""
    import ray

    from actors.worker import ActorSetup, RolloutActor
    from deploy.config import eval_env_config

    base = cfg.env if task is None else task.env
    env = eval_env_config(cfg, base) if evaluation else base
    if spec is None or env is not cfg.env:
        from common.envs.factory import env_spec

        spec = env_spec(env)
    setup = ActorSetup(
        actor_id=index,
        num_actors=cfg.actors.num_actors,
        actors=cfg.actors,
        spec=spec,
        env_id=env.id,
        make_env=functools.partial(make_env, env),
        make_policy=functools.partial(make_policy, cfg.learner),
        make_writer=None
        if evaluation
        else functools.partial(make_writer, cfg.replay, sample_shape(cfg.learner)),
        metrics_host=cfg.deploy.metrics_host,
        serve_metrics=cfg.deploy.serve_metrics,
        eval_sample=evaluation and cfg.run.eval_sample,
        task="" if task is None else task.name,
        chunk=None if evaluation else rollout_chunks(cfg),
    )
    return (
        ray.remote(RolloutActor)
        .options(
            num_cpus=0 if evaluation else cfg.actors.num_cpus,
            max_restarts=cfg.actors.max_restarts,
            max_task_retries=0,
            max_concurrency=2,
            scheduling_strategy=strategy,
        )
        .remote(setup, broker)
    )


def rollout_chunks(cfg: TrainConfig) -> tuple[int, int] | None:
    """How rollout actors stream long rollouts (``actors.chunk_steps`` new steps per record,
    the training window - 1 before them repeated), or None: whole rollouts."""
    steps = cfg.actors.chunk_steps
    return (steps, cfg.learner.max_seq_len - 1) if steps > 0 else None


def _fleet_actor(start: Callable, tasks: list[Task], index: int, task: int):
    """Rollout actor ``index`` of task ``task`` (index into ``tasks``)."""
    return start(index, task=tasks[task])


def learner_gpu(cfg: TrainConfig) -> bool:
    """Whether the learner asks Ray for a GPU (:func:`learner_placement` of
    ``learner.device`` against the cluster Ray reports now)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    return learner_placement(cfg.learner.device, gpus, local=not cfg.deploy.ray_address)[0]


def build_workers(
    cfg: TrainConfig, spec: EnvSpec, run_dir: Path, use_gpu: bool, started: list
) -> Workers:
    """Start the broker, the learner, the rollout actors and the evaluation actor, then wait
    for the learner's first published version (a failed start-up surfaces there) and for
    every actor. On CPU the actors' processes start while the learner builds its model (their
    constructors wait for its first weights), so start-up costs the slower of the two rather
    than their sum; a learner that asked for a GPU is waited for first, since Ray may need to
    bring up a node for it (``deploy.gpu_wait_s``). Every handle is appended to ``started`` as
    soon as it exists (so the caller can kill what was started when a later step fails)."""
    import ray

    broker_handle, broker = start_broker()
    started.append(broker_handle)
    learner = start_learner(cfg, spec, broker, run_dir, use_gpu, started)
    if use_gpu:
        wait_for_learner(learner, use_gpu, cfg.deploy.gpu_wait_s)
    d = cfg.deploy
    strategy = "SPREAD" if (d.ray_address and d.spread_actors) else "DEFAULT"
    start = functools.partial(start_rollout_actor, cfg, broker, strategy=strategy, spec=spec)
    tasks = cfg.env.task_list()
    n = cfg.actors.num_actors
    which = assign_tasks([t.weight for t in tasks], n)
    actors = [start(i, task=tasks[k]) for i, k in enumerate(which)]
    evaluators = [start(n + k, evaluation=True, task=t) for k, t in enumerate(tasks)]
    actor_tasks = [tasks[k].name for k in which]
    started += [*actors, *evaluators]
    if not use_gpu:
        wait_for_learner(learner, use_gpu, cfg.deploy.gpu_wait_s)
    ray.get([a.ping.remote() for a in [*actors, *evaluators]])
    return Workers(
        broker_handle,
        learner,
        actors,
        evaluators,
        [t.name for t in tasks],
        actor_tasks,
        make_actor=functools.partial(_fleet_actor, start, tasks),
    )


__all__ = [
    "Workers",
    "build_workers",
    "learner_gpu",
    "make_env",
    "make_learner",
    "make_policy",
    "make_sampler",
    "make_writer",
    "sample_shape",
    "start_rollout_actor",
]
