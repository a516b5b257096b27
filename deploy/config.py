"""The composed training configuration and its Hydra schema registration.

Hydra groups mirror the packages: ``configs/{env,learner,actors,replay,deploy}``; each group
maps onto the package's own config dataclass below, and ``run`` (budgets, evaluation, output)
lives in ``configs/config.yaml``. Unknown keys and wrongly typed values are refused by
OmegaConf when the config is composed; :meth:`TrainConfig.validate` then checks values and
cross-field consistency, raising :class:`common.config_utils.ConfigError` with the dotted
field name.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.config import ActorConfig
from common.config_utils import prefixed, require
from common.envs.config import EnvConfig, RewardProbe
from common.spec import EnvSpec
from learner.config import SMALL_IMAGE_CNN, LearnerConfig, ModelConfig
from learner.variants import LearnerVariant
from replay_service.config import ReplayConfig


@dataclass
class DeployConfig:
    """Where the components run (Hydra group ``deploy``: ``local`` or ``cluster``)."""

    # "" = start a private local Ray on 127.0.0.1; "auto" = join the running cluster (what
    # `ray job submit` jobs do); or "host:port" of a cluster's GCS.
    ray_address: str = ""
    # CPUs a local Ray may schedule (0 = all of this machine's). Ignored on a cluster.
    num_cpus: int = 0
    # Embedded server (used when replay.redis.url is ""): maxmemory in MiB (with noeviction:
    # a full server is backpressure, never silent eviction) and an optional data dir that
    # persists the store (AOF + RDB) across server restarts.
    embedded_maxmemory_mb: int = 2048
    embedded_data_dir: str = ""
    # Embedded servers to shard the replay over (replay_service.shards; each gets
    # embedded_maxmemory_mb and, with embedded_data_dir, its own <dir>/shard-<k>). 1 = one.
    embedded_shards: int = 1
    # Serve each process's Prometheus metrics on this host (loopback only locally; wildcards
    # such as 0.0.0.0 or :: are refused everywhere);
    # "node" = the Ray node address of each process (cluster runs: a Prometheus on the head
    # can scrape processes on every node).
    metrics_host: str = "127.0.0.1"
    serve_metrics: bool = True
    # Write the scrape targets of every process here (Prometheus file_sd JSON); "" = don't.
    metrics_sd_file: str = ""
    # Write them into this directory as <run name>-<run dir name>-<pid>.json instead (one file
    # per run, for a Prometheus watching <dir>/*.json); removed when the run ends. "" = don't.
    metrics_sd_dir: str = ""
    # Scrape every process once more at the end and write <run_dir>/metrics_final.prom.
    dump_final_metrics: bool = True
    # Spread rollout actors across nodes (Ray "SPREAD" scheduling) on a cluster.
    spread_actors: bool = True
    # Name of an environment variable holding replay.redis.password, read at startup when the
    # config leaves the password empty (the password never enters the saved config.yaml).
    # "" = don't read one. `make cluster-up`, the launcher YAML and KubeRay set it on every node.
    redis_password_env: str = ""
    # Name of an environment variable holding more replay servers (comma-separated URLs),
    # read at startup into replay.redis.shards when the config lists none (a sharded replay:
    # `make cluster-up REDIS_SHARDS=3` exports AMAGO_REDIS_SHARDS). "" = don't read one.
    redis_shards_env: str = ""
    # Refuse to start an embedded Redis when replay.redis.url is empty (cluster runs: actors
    # on other nodes must reach the cluster's own Redis).
    require_external_redis: bool = False
    # learner.device=cuda on a cluster: how long the learner may wait for Ray to give it a
    # GPU (an autoscaler bringing up a GPU node) before the run fails, naming the field.
    gpu_wait_s: float = 900.0

    def validate(self) -> None:
        require(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        require(self.gpu_wait_s > 0, "gpu_wait_s", "must be > 0")
        require(self.embedded_maxmemory_mb >= 16, "embedded_maxmemory_mb", "must be >= 16")
        require(self.embedded_shards >= 1, "embedded_shards", "must be >= 1")
        require(bool(self.metrics_host), "metrics_host", "must be a host, an IP or 'node'")
        if not self.ray_address:
            require(
                self.metrics_host.startswith("127."),
                "metrics_host",
                "local runs serve metrics on loopback only",
            )
        require(
            not _is_wildcard(self.metrics_host),
            "metrics_host",
            f"{self.metrics_host!r} binds every interface: use 'node' (each process's Ray "
            "node address) or an explicit address",
        )
        require(
            not (self.metrics_sd_file and self.metrics_sd_dir),
            "metrics_sd_dir",
            "set metrics_sd_file or metrics_sd_dir, not both",
        )


def _is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface (0.0.0.0, ::, *, [::], ...)."""
    if host.strip() in ("*", "", "-::*"):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


#: backend name -> (the Python module it imports, how to get it)
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard (an amago-ray dependency)"),
    "wandb": ("wandb", "pip install 'amago-ray[tracking]' (or pip install wandb)"),
    "mlflow": ("mlflow", "pip install 'amago-ray[tracking]' (or pip install mlflow-skinny)"),
}


def check_backends(names: Sequence[str]) -> str | None:
    """Why ``names`` (``run.tracking``) cannot be used here, or None when every backend is
    known and its package importable."""
    for name in names:
        if name not in BACKENDS:
            return f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}"
    if len(set(names)) != len(names):
        return f"lists a backend twice: {list(names)}"
    for name in names:
        module, how = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            return (
                f"{name} needs the Python package {module!r}, which is not installed: "
                f"{how}, or leave {name} out of run.tracking"
            )
    return None


@dataclass
class RunConfig:
    """Budgets, evaluation, logging and output of one training run."""

    name: str = "amago"  # run name (the run directory is out_dir/<name>/<timestamp>)
    out_dir: str = "runs"  # parent directory of run directories
    # Stop at the first budget reached (0 = no limit on that quantity; at least one > 0).
    # max_seconds counts training time: from the first learner update (start-up apart).
    max_env_steps: int = 100_000
    max_updates: int = 0
    max_seconds: float = 0.0
    # End the run (stop_reason "no_update", exit 1) when the learner has not updated this
    # long after the run started (seconds; 0 = never): a replay that never fills.
    max_startup_s: float = 900.0
    # End the run (stop_reason "stalled", exit 1, checkpoint and summary written) when neither
    # env steps nor learner updates moved for this long (seconds; 0 = never).
    stall_timeout_s: float = 600.0
    # Stop early once a greedy evaluation reaches this mean return (None = never).
    stop_at_return: float | None = None
    eval_every_s: float = 20.0  # greedy evaluation period (wall-clock seconds; 0 = off)
    eval_episodes: int = 20  # rollouts per periodic evaluation
    final_eval_episodes: int = 50  # rollouts of the final evaluation
    # The evaluation actor's env (periodic and final evaluations): overrides of the env
    # section, {} = the training env; e.g. {kwargs: {corridor_length: 20}}, or on the command
    # line +run.eval_env.kwargs.corridor_length=20. kwargs merge key by key into the training
    # env's (unless the overrides name another id). The observation and action spaces must
    # stay the training env's (checked at start-up, see eval_env_config).
    eval_env: dict[str, Any] = field(default_factory=dict)
    eval_sample: bool = False  # evaluate with actions sampled from the policy, not greedy
    log_every_s: float = 5.0  # console line + metrics.jsonl row period
    updates_per_call: int = 20  # learner updates per driver round trip
    plot: bool = True  # write learning_curve.png at the end
    # Continue training from a learner checkpoint: a ckpt_*.pt file, or a run directory (its
    # newest checkpoint). Restores weights, optimizer, normalisers and the update counter;
    # the replay starts from what the replay server holds. "" = start fresh.
    resume_from: str = ""
    # Experiment trackers every metrics.jsonl row also goes to (deploy/run/tracking.py):
    # tensorboard (event files in the run directory), wandb (offline unless WANDB_MODE is set),
    # mlflow (a file store in the run directory unless MLFLOW_TRACKING_URI is set); [] = none.
    tracking: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Export the replay (fresh partition) to <run_dir>/replay_dump when the run ends, for
    # replay.prefill.paths of later runs (or: python -m deploy.tools.replay_dump).
    dump_replay_on_exit: bool = False

    def validate(self) -> None:
        problem = check_backends(self.tracking)
        require(problem is None, "tracking", problem or "")
        require(self.max_env_steps >= 0, "max_env_steps", "must be >= 0")
        require(self.max_updates >= 0, "max_updates", "must be >= 0")
        require(self.max_seconds >= 0, "max_seconds", "must be >= 0")
        require(self.stall_timeout_s >= 0, "stall_timeout_s", "must be >= 0")
        require(self.max_startup_s >= 0, "max_startup_s", "must be >= 0")
        require(
            self.max_env_steps or self.max_updates or self.max_seconds,
            "max_env_steps",
            "set at least one budget (max_env_steps, max_updates or max_seconds)",
        )
        require(self.eval_every_s >= 0, "eval_every_s", "must be >= 0")
        require(self.eval_episodes >= 1, "eval_episodes", "must be >= 1")
        require(self.final_eval_episodes >= 0, "final_eval_episodes", "must be >= 0")
        env_fields = [f.name for f in dataclasses.fields(EnvConfig)]
        for key in self.eval_env:
            require(key in env_fields, f"eval_env.{key}", f"not an env field ({env_fields})")
        kwargs = self.eval_env.get("kwargs")
        require(
            kwargs is None or isinstance(kwargs, Mapping), "eval_env.kwargs", "must be a mapping"
        )
        require(self.log_every_s > 0, "log_every_s", "must be > 0")
        require(self.updates_per_call >= 1, "updates_per_call", "must be >= 1")
        if self.resume_from:
            from learner.checkpoint import latest_checkpoint

            require(
                latest_checkpoint(self.resume_from) is not None,
                "resume_from",
                f"no checkpoint at {self.resume_from!r} (a ckpt_*.pt file or a run directory)",
            )


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actors: ActorConfig = field(default_factory=ActorConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Every field (the env's own fields only: :func:`prepare` also builds the env)."""
        from replay_service.config import SampleShape

        for name in ("env", "learner", "actors", "replay", "deploy", "run"):
            if name == "replay":  # its limiter against what the (valid) learner samples
                shape = SampleShape(self.learner.batch_size, self.learner.max_seq_len)
                prefixed(name, self.replay.validate, shape)
            else:
                prefixed(name, getattr(self, name).validate)
        if self.deploy.embedded_shards > 1:
            self._check_embedded_shards()
        require(
            not (self.run.dump_replay_on_exit and self.replay_shards > 1),
            "run.dump_replay_on_exit",
            "not supported with a sharded replay (it would dump shard 0 only)",
        )
        require(
            self.replay.redis.url or not self.deploy.require_external_redis,
            "replay.redis.url",
            "empty, but deploy.require_external_redis is set: give the "
            "cluster's Redis (`make cluster-up` exports AMAGO_REDIS_URL to every node)",
        )

    @property
    def replay_shards(self) -> int:
        """Servers the replay is sharded over (external ones, or embedded ones)."""
        return max(self.replay.num_shards, self.deploy.embedded_shards)

    def _check_embedded_shards(self) -> None:
        """deploy.embedded_shards: only with an embedded server, and each shard's share of
        the replay's capacities must be valid (checked now, before any server starts)."""
        n = self.deploy.embedded_shards
        require(
            not self.replay.redis.url,
            "deploy.embedded_shards",
            f"is {n}, but replay.redis.url is set: list external shards in replay.redis.shards",
        )
        urls = [f"redis://127.0.0.1:{k + 1}" for k in range(n)]  # placeholders
        redis = dataclasses.replace(self.replay.redis, url=urls[0], shards=urls[1:])
        prefixed("replay", dataclasses.replace(self.replay, redis=redis).validate)


@dataclass(frozen=True)
class Derived:
    """A value the entrypoint filled in because the config left it to the run."""

    field: str  # dotted config field
    value: object
    reason: str

    def __str__(self) -> str:
        return f"{self.field}={self.value} ({self.reason})"


def derive_defaults(
    cfg: TrainConfig,
    horizon: int,
    reward_probe: RewardProbe | None = None,
    spec: EnvSpec | None = None,
) -> tuple[TrainConfig, list[Derived]]:
    """``cfg`` with the fields it leaves to the run filled in from the env's rollout
    ``horizon`` (steps), and what was derived. Fields set explicitly are kept.

    * ``learner.seq_len_cap = 0``: by the learner's device (:func:`window_cap`): a CPU
      learner pays for every timestep of its window in every update, a GPU much less;
    * ``learner.max_seq_len = 0``: whole rollouts, ``horizon + 1`` timesteps, capped at
      ``learner.seq_len_cap`` (longer rollouts are trained, and acted on, through a sliding
      window of that many timesteps);
    * ``learner.gammas = null`` / ``learner.reward_scale = null``: by the env's rewards
      (:func:`reward_regime`): AMAGO's seven discounts up to 0.999 and scale 10 for sparse
      rewards; discounts up to 0.99 for dense ones, scaled by 10 / their largest size within
      [1, 10];
    * ``learner.bc_weight = null``: the variant's own;
    * what the variant derives (:meth:`learner.variants.LearnerVariant.derive`): ``amago2``'s
      two-hot bounds left null, +- :func:`learner.variants.amago2.twohot_bound`, with
      ``learner.reward_bound`` raised to the largest |reward| a random-action probe of the
      env saw (``reward_probe``) when that is larger.
    """
    variant = _variant(cfg.learner)
    out: list[Derived] = []
    learner = cfg.learner
    if learner.max_seq_len == 0 and learner.seq_len_cap == 0:
        cap, why = window_cap(learner.device)
        learner = dataclasses.replace(learner, seq_len_cap=cap)
        out.append(Derived("learner.seq_len_cap", cap, why))
    if learner.max_seq_len == 0:
        whole = horizon + 1
        value = min(whole, learner.seq_len_cap)
        why = (
            f"whole rollouts: horizon {horizon} + 1"
            if value == whole
            else f"rollouts of {whole} timesteps capped at learner.seq_len_cap"
        )
        learner = dataclasses.replace(learner, max_seq_len=value)
        out.append(Derived("learner.max_seq_len", value, why))
    learner, notes = _reward_defaults(learner, reward_probe)
    out += notes
    if learner.bc_weight is None:
        learner = dataclasses.replace(learner, bc_weight=learner.bc_weight_value)
        out.append(Derived("learner.bc_weight", learner.bc_weight, f"{learner.variant}'s own"))
    largest = None if reward_probe is None else reward_probe.largest
    learner, notes = variant.derive(learner, horizon, largest)
    out += [Derived(f"learner.{d.field}", d.value, d.reason) for d in notes]
    if spec is not None:
        learner, fitted = _fit_cnn(learner, spec)
        out += fitted
    cfg = dataclasses.replace(cfg, learner=learner)
    if cfg.actors.chunk_steps == 0:
        steps, why = chunk_steps(horizon + 1, learner.max_seq_len, cfg.replay.relabel)
        cfg = dataclasses.replace(cfg, actors=dataclasses.replace(cfg.actors, chunk_steps=steps))
        if steps > 0:
            out.append(Derived("actors.chunk_steps", steps, why))
    return cfg, out


def chunk_steps(rollout: int, window: int, relabel: str) -> tuple[int, str]:
    """The derived ``actors.chunk_steps`` for rollouts of ``rollout`` timesteps trained in
    windows of ``window``, and why: a rollout longer than two windows streams in chunks of
    two windows of new steps (each record then repeats at most a third of its length);
    shorter ones, and any run whose relabeling needs whole rollouts, insert whole rollouts."""
    if relabel != "none":
        return -1, f"replay.relabel={relabel} needs whole rollouts"
    if rollout <= 2 * window:
        return -1, "a rollout fits two windows"
    return 2 * window, (
        f"rollouts of {rollout} timesteps, window {window}: the learner trains on a rollout "
        "while it goes on"
    )


#: Derived window caps (timesteps) by where the learner runs. On CPU an update's cost grows
#: with its window (default model, batch 24, one thread, this project's 2-vCPU VM: about 0.1 s
#: at 64 timesteps, 0.35-0.47 s at 256; docs/configuration.md), and for a Markov env a longer
#: window buys nothing; a GPU runs the 256-step window of AMAGO's long-horizon examples at a
#: fraction of that.
WINDOW_CAP_CPU = 64
WINDOW_CAP_GPU = 256


def window_cap(device: str) -> tuple[int, str]:
    """The derived ``learner.seq_len_cap`` for ``learner.device`` and why: ``cuda`` ->
    :data:`WINDOW_CAP_GPU`, ``cpu`` -> :data:`WINDOW_CAP_CPU`; ``auto`` follows whether this
    machine's torch sees a GPU (the learner itself is placed later, by the Ray cluster: on a
    cluster whose GPUs this machine lacks, say ``learner.device=cuda`` or set the cap)."""
    if device == "cuda":
        return WINDOW_CAP_GPU, "learner.device=cuda"
    if device == "cpu":
        return WINDOW_CAP_CPU, "learner.device=cpu: an update costs every timestep of the window"
    import torch

    if torch.cuda.is_available():
        return WINDOW_CAP_GPU, "learner.device=auto and this machine has a GPU"
    return WINDOW_CAP_CPU, "learner.device=auto and no GPU here: a CPU update costs every timestep"


#: Discounts (the last one acts) and reward scale for sparse and for dense rewards.
#: Sparse: AMAGO's own (``LearnerConfig``'s defaults). Dense: the acting discount 0.99 of
#: AMAGO's gym example and of this project's Pendulum, point-goal and Meta-World presets. With
#: a reward at every step and a 1,000-step effective horizon (0.999), values are so much larger
#: than one action's effect on them that the critics cannot rank actions
#: (docs/configuration.md). Dense rewards are scaled so the largest is at least 10 (scale
#: ``sigma / largest |reward|`` within [1, sigma], sigma = PopArt's initial scale
#: ``sqrt(learner.popart_init_nu)``, 10 by default): 10 for CartPole's, Acrobot's or POPGym's
#: +-1/episode length, 1 for Pendulum's (-16) or LunarLander's. Why sigma: the first TD
#: targets bootstrap from the critics' random outputs times PopArt's initial sigma, and that
#: noise lingers for thousands of updates; smaller rewards learn slowly under it
#: (POPGym RepeatPreviousEasy: ~1,960 updates to solve at scale 1, ~440 at 10; CartPole's
#: final greedy return at 300 s: 299.5 / 227.4 at 10 on seeds 0 / 1, 156.1 at 1 on seed 1;
#: docs/results.md).
SPARSE_REWARDS = (list(LearnerConfig().gammas or ()), float(LearnerConfig().reward_scale or 0))
#: Dense rewards keep AMAGO's discounts up to a 100-step effective horizon.
DENSE_GAMMAS = [g for g in SPARSE_REWARDS[0] if g <= 0.99]


def reward_regime(
    probe: RewardProbe | None, popart_init_nu: float = LearnerConfig().popart_init_nu
) -> tuple[list[float], float, str]:
    """``(gammas, reward_scale, why)`` for an env whose random-action probe saw ``probe``
    (None: not probed, taken as sparse); dense rewards are scaled towards PopArt's initial
    sigma ``sqrt(popart_init_nu)``."""
    if probe is None:
        return (*SPARSE_REWARDS, "env not probed: AMAGO's own")
    seen = f"a random-action probe saw rewards on {probe.rewarded:.0%} of steps"
    if not probe.dense:
        return (*SPARSE_REWARDS, seen)
    sigma = math.sqrt(popart_init_nu)
    scale = min(sigma, max(1.0, round(sigma / probe.largest, 2)))
    return DENSE_GAMMAS, scale, f"{seen}, |reward| <= {probe.largest:.3g}"


def _reward_defaults(
    learner: LearnerConfig, probe: RewardProbe | None
) -> tuple[LearnerConfig, list[Derived]]:
    """Null ``gammas`` / ``reward_scale`` filled in by :func:`reward_regime`."""
    if learner.gammas is not None and learner.reward_scale is not None:
        return learner, []
    gammas, scale, why = reward_regime(probe, learner.popart_init_nu)
    out = []
    if learner.gammas is None:
        learner = dataclasses.replace(learner, gammas=gammas)
        out.append(Derived("learner.gammas", gammas, why))
    if learner.reward_scale is None:
        learner = dataclasses.replace(learner, reward_scale=scale)
        out.append(Derived("learner.reward_scale", scale, why))
    return learner, out


def _fit_cnn(learner: LearnerConfig, spec: EnvSpec) -> tuple[LearnerConfig, list[Derived]]:
    """A conv trunk every image observation fits: the default (Nature-DQN) one when they do;
    :data:`learner.config.SMALL_IMAGE_CNN` for smaller images (MiniGrid's 7x7 views) unless
    the trunk was set explicitly, in which case a too-small image fails here in one line
    naming ``learner.model.cnn_kernels``."""
    m = learner.model
    small = [spec.obs[k].shape for k in spec.image_keys() if m.cnn_problem(spec.obs[k].shape)]
    if not small:
        return learner, []
    trunk = lambda c: (c.cnn_channels, c.cnn_kernels, c.cnn_strides)  # noqa: E731
    require(trunk(m) == trunk(ModelConfig()), "learner.model.cnn_kernels", m.cnn_problem(small[0]))
    ch, k, s = SMALL_IMAGE_CNN
    fitted = dataclasses.replace(m, cnn_channels=list(ch), cnn_kernels=list(k), cnn_strides=list(s))
    problem = fitted.cnn_problem(small[0])
    require(problem is None, "learner.model.cnn_kernels", problem or "")
    h, w = small[0][:2]
    why = f"a {h}x{w} image is too small for the default trunk"
    value = f"{ch}/{k}/{s}"
    return dataclasses.replace(learner, model=fitted), [
        Derived("learner.model.cnn_channels/kernels/strides", value, why)
    ]


def _variant(learner: LearnerConfig) -> LearnerVariant:
    """The learner's variant (a ``ConfigError`` naming ``learner.variant`` if none is
    registered under its name)."""
    return prefixed("learner", learner.variant_impl)


def resolve_environment(cfg: TrainConfig, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """``cfg`` with the values the config asks to read from the environment filled in: the
    Redis password named by ``deploy.redis_password_env`` and the replay shards named by
    ``deploy.redis_shards_env`` (each when the config has none; shards read are checked as
    the config's own would be: ``ConfigError`` naming ``replay.*``)."""
    environ = os.environ if environ is None else environ
    redis = cfg.replay.redis
    name = cfg.deploy.redis_password_env
    if name and not redis.password and environ.get(name):
        redis = dataclasses.replace(redis, password=environ[name])
    name = cfg.deploy.redis_shards_env
    shards = [u.strip() for u in environ.get(name, "").split(",") if u.strip()] if name else []
    if shards and not redis.shards:
        redis = dataclasses.replace(redis, shards=shards)
    if redis is cfg.replay.redis:
        return cfg
    replay = dataclasses.replace(cfg.replay, redis=redis)
    if redis.shards is not cfg.replay.redis.shards:
        prefixed("replay", replay.validate)
    return dataclasses.replace(cfg, replay=replay)


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, EnvSpec, list[Derived]]:
    """Everything a run checks before it starts a process: the env section, then the env
    itself (built once and reset: an unknown id, an unimportable module, kwargs its
    constructor rejects, no time limit all raise :class:`ConfigError` naming the ``env.``
    field; in a multi-task run every task's, whose spaces must agree), then the values
    derived from it (:func:`derive_defaults`), then every other field. Returns the config to
    run, the env's spec (a multi-task run's: the longest task horizon) and what was derived."""
    from common.envs.factory import env_spec

    prefixed("env", cfg.env.validate)
    spec = run_spec(cfg)
    horizon = spec.max_episode_steps
    cfg, derived = derive_defaults(cfg, horizon, _reward_probe(cfg), spec)
    cfg.validate()
    tasks = cfg.env.task_list()
    require(
        len(tasks) <= cfg.actors.num_actors,
        "actors.num_actors",
        f"{cfg.actors.num_actors} rollout actors for {len(tasks)} tasks: every task needs one",
    )
    require(
        horizon + 1 <= cfg.replay.max_traj_steps,
        "replay.max_traj_steps",
        f"must hold a whole rollout ({horizon + 1} timesteps for {_what(cfg)})",
    )
    prefixed("replay", cfg.replay.check_fits, spec, horizon + 1)
    if cfg.run.eval_env:
        from common.spec import compatible

        for i, env in enumerate(eval_env_configs(cfg)):
            eval_spec = prefixed("run.eval_env", env_spec, env)
            problems = compatible(spec, eval_spec, "the training env's")
            where = f" (task {tasks[i].name!r})" if tasks[i].name else ""
            require(not problems, "run.eval_env", "; ".join(problems) + where)
    if cfg.replay.prefill.enabled:  # offline data: dumps checked against the env now
        from replay_service.prefill import check_dumps, fresh_rate_limit

        check_dumps(cfg.replay, spec)
        replay, why = fresh_rate_limit(cfg.replay)
        if why:
            cfg = dataclasses.replace(cfg, replay=replay)
            derived.append(Derived("replay.rate_limit.samples_per_insert", 0.0, why))
    return cfg, spec, derived


@dataclass(frozen=True)
class RunPlan:
    """A run resolved once, before any process starts (:func:`plan_run`): the config it runs
    (checked, derived fields filled in, the values the config names in the environment read:
    it may hold secrets, so it is written with ``deploy.run.run_dir.save_config``, which
    leaves them out), the env's spec and what was derived."""

    cfg: TrainConfig
    spec: EnvSpec
    derived: list[Derived]


def plan_run(cfg: TrainConfig, environ: Mapping[str, str] | None = None) -> RunPlan:
    """:func:`resolve_environment`, then :func:`prepare` (``ConfigError`` naming the field
    for anything a run would refuse)."""
    return RunPlan(*prepare(resolve_environment(cfg, environ)))


def _what(cfg: TrainConfig) -> str:
    return "the longest task" if cfg.env.multi_task else cfg.env.id


def task_specs(env: EnvConfig) -> list[tuple[str, EnvSpec]]:
    """(name, spec) of each task of a multi-task run; each env is built once (errors name
    ``env.tasks[i].<field>``)."""
    from common.envs.factory import env_spec

    return [
        (t.name, prefixed(f"env.tasks[{i}]", env_spec, t.env))
        for i, t in enumerate(env.task_list())
    ]


def run_spec(cfg: TrainConfig) -> EnvSpec:
    """The spec the learner trains on: the env's, or for a multi-task run the tasks' common
    one with the longest task horizon. Tasks whose observation or action spaces (or goal
    keys, extras) differ are refused with :class:`ConfigError` naming both tasks: one
    network acts in all of them, so give them one space (pad observations to a common
    shape, map actions onto a common set) in a wrapper of your own."""
    from common.envs.factory import env_spec

    if not cfg.env.multi_task:
        return prefixed("env", env_spec, cfg.env)
    specs = task_specs(cfg.env)
    from common.spec import compatible

    (first, s0), rest = specs[0], specs[1:]
    for name, s in rest:
        problems = compatible(s0, s, f"task {first!r}'s")
        if (s.goal_keys, s.extras) != (s0.goal_keys, s0.extras):
            problems.append(f"goal keys / extras differ from task {first!r}'s")
        require(
            not problems,
            "env.tasks",
            f"tasks {first!r} and {name!r} have different spaces ({'; '.join(problems)}); "
            "a multi-task run needs one observation and action space for all its tasks",
        )
    return dataclasses.replace(s0, max_episode_steps=max(s.max_episode_steps for _, s in specs))


def assign_tasks(weights: Sequence[float], num_actors: int) -> list[int]:
    """The task index of each of ``num_actors`` rollout actors: task i's share is
    ``num_actors * w_i / sum(w)`` rounded by largest remainder, but at least one actor each;
    actors of one task are contiguous, ties go to the earlier task. Deterministic; ``[]``
    when there are no tasks."""
    n = len(weights)
    if n == 0:
        return []
    if num_actors < n:
        raise ValueError(f"{num_actors} actors for {n} tasks")
    total = float(sum(weights))
    quota = [num_actors * w / total for w in weights]
    counts = [max(1, int(q)) for q in quota]
    while sum(counts) < num_actors:  # the largest shortfall first
        counts[max(range(n), key=lambda i: (quota[i] - counts[i], -i))] += 1
    while sum(counts) > num_actors:  # the minimum of one pushed us over: the largest surplus
        spare = [i for i in range(n) if counts[i] > 1]
        counts[min(spare, key=lambda i: (quota[i] - counts[i], -i))] -= 1
    return [i for i, c in enumerate(counts) for _ in range(c)]


def eval_env_config(cfg: TrainConfig, env: EnvConfig | None = None) -> EnvConfig:
    """The evaluation actor's env section: ``env`` (default ``cfg.env``; a task's in a
    multi-task run) with ``run.eval_env``'s overrides (``kwargs`` merged key by key, or only
    the overrides' when they name another id)."""
    env = cfg.env if env is None else env
    over = dict(cfg.run.eval_env)
    if not over:
        return env
    kwargs = dict(over.pop("kwargs", None) or {})
    if over.get("id", env.id) == env.id:
        kwargs = {**env.kwargs, **kwargs}
    return dataclasses.replace(env, **over, kwargs=kwargs)


def eval_env_configs(cfg: TrainConfig) -> list[EnvConfig]:
    """The env section of each evaluation actor: one per task (one for a single task)."""
    return [eval_env_config(cfg, t.env) for t in cfg.env.task_list()]


def _needs_probe(learner: LearnerConfig) -> bool:
    """Whether deriving ``learner``'s defaults reads the env's rewards."""
    return (
        learner.gammas is None
        or learner.reward_scale is None
        or _variant(learner).derive_needs_env(learner)
    )


def _reward_probe(cfg: TrainConfig) -> RewardProbe | None:
    """What :func:`derive_defaults` needs of the env's rewards (None when nothing derived
    reads them); a multi-task run's: the largest reward of any task, and dense only if every
    task's rewards are."""
    if not _needs_probe(cfg.learner):
        return None
    from common.envs.factory import reward_probe

    probes = [reward_probe(t.env) for t in cfg.env.task_list()]
    return RewardProbe(max(p.largest for p in probes), min(p.rewarded for p in probes))


def compose(overrides: Sequence[str] = (), resolved: bool = True):
    """The config ``python -m deploy.train <overrides>`` runs (Hydra's compose API): a
    :class:`TrainConfig` with the run-derived fields filled in (:func:`derive_defaults`,
    which builds the env once), or with ``resolved=False`` the OmegaConf tree before
    conversion. Nothing is validated beyond what deriving needs; values read from the
    environment at startup (:func:`resolve_environment`) are not applied.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    register_schemas()
    config_dir = str(Path(__file__).resolve().parent.parent / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        dcfg = hydra_compose("config", overrides=list(overrides))
    if not resolved:
        return dcfg
    cfg = OmegaConf.to_object(dcfg)
    learner = cfg.learner
    needs_env = not learner.max_seq_len or _needs_probe(learner) or not cfg.actors.chunk_steps
    if not needs_env:  # nothing to derive needs the env's horizon: do not build it
        return derive_defaults(cfg, 0)[0]
    horizon = run_spec(cfg).max_episode_steps
    return derive_defaults(cfg, horizon, _reward_probe(cfg))[0]


def register_schemas() -> None:
    """Register :class:`TrainConfig` as Hydra's ``base_config`` (the schema config.yaml extends)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=TrainConfig)
