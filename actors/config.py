"""Configuration of the rollout actors (Hydra group ``actors``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config_utils import prefixed, require


@dataclass
class StepWindow:
    """A fixed epsilon over part of every rollout (AMAGO's per-timestep schedules).

    Covers rollout steps ``start <= t < stop`` (t = steps taken so far in the rollout, 0 at
    its first action); a ``stop <= 0`` counts back from the rollout horizon (``stop: -3`` ends
    three steps before it, ``stop: 0`` at it). Inside the window epsilon is ``epsilon``
    whatever the schedule says, e.g. a near-greedy corridor between an explored start and end.
    """

    start: int = 0  # first rollout step the window covers
    stop: int = 0  # one past the last step; <= 0 counts from the rollout horizon
    epsilon: float = 0.0  # epsilon inside the window

    def validate(self) -> None:
        require(self.start >= 0, "start", "must be >= 0")
        require(0.0 <= self.epsilon <= 1.0, "epsilon", f"must lie in [0, 1], got {self.epsilon}")
        require(self.stop <= 0 or self.stop > self.start, "stop", "must be > start (or <= 0)")


@dataclass
class ExplorationConfig:
    """Per-actor exploration schedule.

    The policy's action is sampled from it (``sample_actions``, the default) or its greedy one
    (mode/mean); then, discrete actions: epsilon-greedy on top of it; continuous: Gaussian
    noise of scale epsilon added to the action (then clipped to [-1, 1]). Epsilon anneals
    linearly from ``start`` to the actor's final value over ``anneal_steps`` of its own env
    steps. Final values are spread geometrically across actors between ``end_min`` and
    ``end_max`` (Ape-X style), so some actors stay greedy while others keep exploring.

    Within a rollout (AMAGO's bi-level schedule): epsilon is scaled linearly from 1 at the
    rollout's first step to ``rollout_end_scale`` at its horizon, so later steps of a long
    rollout or a meta-RL trial exploit more; ``step_windows`` then fix epsilon over ranges of
    rollout steps. The defaults (scale 1, no windows) make the schedule the same at every step.
    """

    start: float = 1.0  # epsilon at the actor's first step
    end_min: float = 0.02  # final epsilon of the greediest actor
    end_max: float = 0.2  # final epsilon of the most exploratory actor
    anneal_steps: int = 5_000  # env steps (per actor) over which epsilon anneals
    sample_actions: bool = True  # sample from the policy (else act greedily) before epsilon
    rollout_end_scale: float = 1.0  # epsilon multiplier at the rollout horizon (1 = flat)
    step_windows: list[StepWindow] = field(default_factory=list)  # fixed-epsilon step ranges

    def validate(self) -> None:
        for f in ("start", "end_min", "end_max", "rollout_end_scale"):
            v = getattr(self, f)
            require(0.0 <= v <= 1.0, f, f"must lie in [0, 1], got {v}")
        require(self.end_min <= self.end_max, "end_min", "must be <= end_max")
        require(self.anneal_steps >= 0, "anneal_steps", "must be >= 0")
        for i, w in enumerate(self.step_windows):
            prefixed(f"step_windows[{i}]", w.validate)


@dataclass
class ActorConfig:
    """How many rollout actors run, what each steps, and how they run under Ray."""

    num_actors: int = 2  # rollout actor processes at the start (the fleet can be resized
    # mid-run: `python -m deploy.ops.cluster scale N`, deploy/run/fleet.py)
    max_num_actors: int = 64  # the largest fleet a scale request may ask for
    # A shrink lets each leaving actor finish its collect call in flight (its rollouts are
    # inserted and counted), then kills it; after this many seconds (a collect held up by
    # replay backpressure) it is told to stop, dropping the rollout it is blocked on.
    drain_timeout_s: float = 120.0
    envs_per_actor: int = 8  # envs each actor steps as one batch (one inference call per step)
    steps_per_call: int = 64  # env steps (per env) each `collect` call runs before reporting
    weight_poll_steps: int = 16  # check for newer published weights every this many steps
    num_cpus: float = 0.5  # Ray CPU resource each actor asks for (logical)
    torch_threads: int = 1  # torch intra-op threads per actor process
    max_restarts: int = -1  # Ray restarts of a dead actor (-1 = unlimited)
    insert_retry_s: float = 120.0  # keep re-sending a rollout to an unreachable replay this long
    seed: int = 0  # base seed; actor i seeds its envs and exploration from (seed, i)
    # How an actor steps its envs_per_actor envs (actors/envbatch.py): "sync" = in its own
    # process, one after another; "async" = gymnasium AsyncVectorEnv, one subprocess per env,
    # stepped at once (for envs whose step is expensive; each subprocess costs memory and
    # ~2 IPC round trips per step, so cheap envs get slower). Same records either way;
    # an exception in an env is still reset + counted, a dead subprocess fails the actor.
    vector_env: str = "sync"
    # multiprocessing start method of the async subprocesses (forkserver|spawn|fork; fork
    # copies the Ray worker with its threads: avoid)
    vector_env_context: str = "forkserver"
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    # Stream each long rollout to the replay in chunks of this many new env steps (each
    # record repeats the learner.max_seq_len - 1 steps before them, so every training window
    # lies whole in one record), so the learner trains on a rollout while it goes on instead
    # of after its end. 0 = derived at start-up (deploy.config.derive_defaults): 2 x the
    # window when a rollout is longer than that and no hindsight relabeling needs whole
    # rollouts, else -1; -1 = whole rollouts only.
    chunk_steps: int = 0

    def validate(self) -> None:
        require(self.num_actors >= 1, "num_actors", "need at least one actor")
        require(self.chunk_steps >= -1, "chunk_steps", "must be -1 (off), 0 (derived) or > 0")
        require(
            self.max_num_actors >= self.num_actors,
            "max_num_actors",
            f"must be >= num_actors ({self.num_actors})",
        )
        require(self.drain_timeout_s > 0, "drain_timeout_s", "must be > 0")
        require(self.envs_per_actor >= 1, "envs_per_actor", "must be >= 1")
        require(self.steps_per_call >= 1, "steps_per_call", "must be >= 1")
        require(self.weight_poll_steps >= 1, "weight_poll_steps", "must be >= 1")
        require(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        require(self.torch_threads >= 1, "torch_threads", "must be >= 1")
        require(self.insert_retry_s > 0, "insert_retry_s", "must be > 0")
        require(
            self.vector_env in ("sync", "async"),
            "vector_env",
            f"must be 'sync' or 'async', got {self.vector_env!r}",
        )
        require(
            self.vector_env_context in ("forkserver", "spawn", "fork"),
            "vector_env_context",
            f"must be 'forkserver', 'spawn' or 'fork', got {self.vector_env_context!r}",
        )
        prefixed("exploration", self.exploration.validate)
