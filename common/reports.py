"""What each worker process reports to the driver, one typed record per finished call.

The data path never passes through the driver (trajectories go straight to the replay
service, weights through the object store); these are the control path's answers:

* :class:`ActorReport` — one ``collect`` call of a rollout actor;
* :class:`EvalReport` — one ``evaluate`` call (greedy rollouts, nothing stored);
* :class:`LearnerReport` — one ``train`` call of the learner.

Every report carries ``incarnation``, a token new in every (re)started process, which is how
the driver counts restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.replay import ReplayStats


@dataclass(frozen=True)
class ActorReport:
    """One ``collect`` call: env steps taken and the rollouts that finished during it."""

    actor: str  # the actor's label ("0", "1", ...)
    incarnation: str
    env_steps: int
    returns: list[float]  # of each rollout finished during the call
    successes: list[float | None]  # None: the env's info reported no "success"
    lengths: list[int]
    env_faults: int  # env exceptions (that env was reset)
    act_ms: float  # mean wall-clock of one batched act call
    policy_version: int  # weights acting at the end of the call
    epsilon: float  # exploration at the end of the call
    insert_retries: int  # total since the actor started
    rejected: int  # rollouts the replay refused as malformed, since the actor started
    task: str = ""  # the task the actor steps (multi-task runs; "" = single task)
    # per rollout handed to the replay during the call: versions behind the learner at
    # insert time (``RolloutActor.policy_lag``)
    policy_lags: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EvalReport:
    """One ``evaluate`` call: greedy rollouts with the newest weights."""

    incarnation: str
    policy_version: int
    returns: list[float]  # one per finished rollout
    successes: list[float | None]  # None: the env's info reported no "success"
    lengths: list[int]
    episode_returns: list[list[float]]  # per rollout, the return of each inner episode
    task: str = ""  # the task evaluated (multi-task runs; "" = single task)

    def mean_return(self) -> float | None:
        return float(np.mean(self.returns)) if self.returns else None

    def success_rate(self) -> float | None:
        """Mean over the rollouts whose env reported a success; None if none did."""
        known = [s for s in self.successes if s is not None]
        return float(np.mean(known)) if known else None

    def by_episode(self) -> list[float] | None:
        """Mean return of the k-th inner episode (meta-RL trials), over rollouts."""
        if not self.episode_returns:
            return None
        k = min(len(e) for e in self.episode_returns)
        return np.mean([e[:k] for e in self.episode_returns], axis=0).tolist()


@dataclass(frozen=True)
class LearnerReport:
    """One ``train`` call: updates done and the means of their metrics."""

    incarnation: str
    updates: int
    version: int  # update counter after the call
    seq_timesteps: int  # real (unpadded) timesteps trained on
    seconds: float
    batch_wait_s: float  # time spent waiting for a sampled batch
    data_age: float  # mean updates between a sampled row's policy and the learner
    sample_errors: int  # failed sampling attempts since the learner started
    resumed_from: str | None  # checkpoint this learner process started from
    replay: ReplayStats | None  # None when the replay could not be read
    losses: dict[str, float] = field(default_factory=dict)  # mean of each train_step scalar
