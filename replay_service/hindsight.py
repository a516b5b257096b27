"""Hindsight instruction relabeling (AMAGO's multi-goal generalisation of HER): ``"hindsight"``.

Selected by config (``replay.relabel: hindsight``, ``replay.relabel_kwargs``: the fields of
:class:`HindsightConfig`) and run by the :class:`~replay_service.sampler.Sampler` on every
sampled WHOLE trajectory before its window is cut. For goal-conditioned trajectories
(:mod:`common.goals`), with probability ``p_relabel``, each episode's k-goal instruction gets
goals the agent actually achieved in that episode; rewards, ``obs["goal_progress"]`` and flags
are then recomputed by the task's own reward function (:func:`common.goals.relabel_episodes`).

Strategies (per episode; meta-RL trials relabel every inner episode from its own data only):

``"final"`` — AMAGO's relabeler. The goals of the real instruction that were reached (at their
    real hit times) are kept; ``n`` further timesteps with achieved goals (not real hits) are
    drawn uniformly without replacement, one achieved goal from each; all of them, sorted by
    time, become the first slots of the instruction, the rest keep the original goals (k is
    fixed). ``n`` is every free slot (``amount="all"``) or uniform in ``[0, free]``
    (``"some"``); free = k - real hits, and at most the number of candidate timesteps.
``"future"`` — keeps a uniformly drawn prefix of c of the really reached goals (0 <= c <=
    real hits) and fills the next ``n`` slots (``n`` as above from the k - c free slots) with
    goals achieved strictly *after* the pivot: the timestep at which the c-th kept goal was
    reached (the episode start if c = 0). Later slots keep the original goals.

"Future" (what the tests check): the goal put in slot j was achieved by the transition into a
timestep t_j of the same episode, with episode start < t_1 < t_2 < ... (slot order = time
order), and for ``"future"`` every hindsight goal also after the pivot. So an agent following
the new instruction reaches slot j at a replayed hit time h_j with h_{j-1} < h_j <= t_j: every
relabeled goal lies in the future of the point where its slot becomes active, never in its past
and never in another episode. When the new instruction is completed before the episode's end,
the trajectory is cut there (last episode: the rollout ends ``terminated``; earlier episode of
a trial: the next episode follows the completing step, see :func:`common.goals.relabel_episodes`),
so no data after a terminal state is trained on.

Trajectories without goal arrays, those not drawn for relabeling and those whose instructions
come out unchanged are returned as the very same object (no copy). With ``0 < p_relabel < 1``
one uniform number is drawn per goal trajectory; non-goal trajectories draw nothing, so the
sampler's random stream (window starts) is the same as with ``"none"``. The result depends
only on the trajectory and the generator's state; the input is never written to.

A goal trajectory whose goal arrays are inconsistent (zero-width or mis-shaped achieved goals,
an instruction not a whole number of goals, an unknown reward function) raises ``ValueError``
(:func:`check_goal_arrays`) when it is drawn for relabeling; the sampler then skips it and
counts it under reason ``"relabel"`` (a record's second failure drops it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.config_utils import ConfigError, prefixed, require
from common.goals import (
    ACHIEVED_KEY,
    ACHIEVED_MASK_KEY,
    GOALS_KEY,
    META_REWARD_FN,
    achieved_events,
    episode_bounds,
    instruction_of,
    relabel_episodes,
    replay_goals,
    reward_fn_of,
)
from common.records import Trajectory
from replay_service.relabel import register_relabeler

STRATEGIES = ("final", "future")
AMOUNTS = ("some", "all")


@dataclass
class HindsightConfig:
    """Options of the ``"hindsight"`` relabeler (``replay.relabel_kwargs``)."""

    # Probability that a sampled goal-conditioned trajectory is relabeled (else unchanged).
    p_relabel: float = 0.8
    # "final" (AMAGO: real hits kept, extra achieved goals from anywhere in the episode, all in
    # time order) or "future" (a prefix of real hits kept, then goals achieved after it).
    strategy: str = "final"
    # Hindsight goals per episode: "all" free slots, or "some" (uniform in [0, free slots]).
    amount: str = "some"

    def validate(self) -> None:
        p = self.p_relabel
        require(
            isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0,
            "p_relabel",
            f"must be a probability in [0, 1], got {p!r}",
        )
        require(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
        require(self.amount in AMOUNTS, "amount", f"must be one of {AMOUNTS}")


@dataclass(frozen=True)
class EpisodePlan:
    """The new instruction of one episode and where each of its goals comes from."""

    episode: int  # index into meta.episode_starts
    original: np.ndarray  # (k, G) the stored instruction
    instruction: np.ndarray  # (k, G) the new instruction
    # (k,) int64: timestep whose incoming transition achieved slot j's goal (a real hit or a
    # hindsight pick); -1 for trailing slots that keep the original goal with no timing planned
    times: np.ndarray
    relabeled: np.ndarray  # (k,) bool: slot j's goal was picked in hindsight
    pivot: int  # every hindsight goal was achieved strictly after this timestep

    @property
    def changed(self) -> bool:
        return not np.array_equal(self.instruction, self.original)


def is_goal_trajectory(traj: Trajectory) -> bool:
    """Whether ``traj`` carries what relabeling needs (goal obs, achieved extras, reward fn)."""
    return (
        GOALS_KEY in traj.obs
        and ACHIEVED_KEY in traj.extras
        and ACHIEVED_MASK_KEY in traj.extras
        and META_REWARD_FN in traj.meta.info
    )


def check_goal_arrays(traj: Trajectory) -> None:
    """Raise ``ValueError`` unless the goal arrays of a goal trajectory fit together:
    ``achieved (N, M, G)`` with G >= 1 and M >= 1, ``achieved_mask (N, M)``, the instruction
    ``(N, k * G)`` with k >= 1, and a registered reward function."""
    n = len(traj)
    achieved = traj.extras[ACHIEVED_KEY]
    mask = traj.extras[ACHIEVED_MASK_KEY]
    goals = traj.obs[GOALS_KEY]
    if achieved.ndim != 3 or achieved.shape[0] != n or min(achieved.shape[1:]) < 1:
        raise ValueError(f"extras {ACHIEVED_KEY!r} must be (N={n}, M>=1, G>=1): {achieved.shape}")
    if mask.shape != achieved.shape[:2]:
        raise ValueError(f"extras {ACHIEVED_MASK_KEY!r} {mask.shape} != {achieved.shape[:2]}")
    g = achieved.shape[2]
    if goals.ndim != 2 or goals.shape[0] != n or goals.shape[1] < g or goals.shape[1] % g:
        raise ValueError(f"obs {GOALS_KEY!r} {goals.shape} is not (N={n}, k * G) with G={g}")
    try:
        reward_fn_of(traj)
    except KeyError as e:
        raise ValueError(str(e).strip('"')) from None


class HindsightRelabeler:
    """``relabel(traj, rng) -> traj`` (a :data:`~replay_service.relabel.Relabeler`)."""

    def __init__(self, cfg: HindsightConfig):
        cfg.validate()
        self.cfg = cfg

    def __call__(self, traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        plans = self.plan(traj, rng)
        if plans is None or not any(p.changed for p in plans):
            return traj
        return relabel_episodes(traj, [p.instruction if p.changed else None for p in plans])

    def plan(self, traj: Trajectory, rng: np.random.Generator) -> list[EpisodePlan] | None:
        """One :class:`EpisodePlan` per episode, or None if ``traj`` is left as it is (no goal
        arrays, or not drawn). Consumes ``rng`` exactly as :meth:`__call__` does."""
        p = float(self.cfg.p_relabel)
        if not is_goal_trajectory(traj) or p <= 0.0 or (p < 1.0 and rng.random() >= p):
            return None
        check_goal_arrays(traj)
        fn = reward_fn_of(traj)
        achieved = np.asarray(traj.extras[ACHIEVED_KEY], dtype=np.float32)  # (N, M, G)
        mask = np.asarray(traj.extras[ACHIEVED_MASK_KEY], dtype=bool)  # (N, M)
        plans = []
        for e, (s, _, stop) in enumerate(episode_bounds(traj)):
            instr = instruction_of(traj, e)  # (k, G)
            real = replay_goals(instr, achieved[s + 1 : stop], mask[s + 1 : stop], fn)
            hits = (np.flatnonzero(real.hit) + s + 1).astype(np.int64)  # (p,) real hit times
            times, goals = achieved_events(traj, e)  # (E,), (E, G) in time order
            plans.append(self._plan_episode(e, s, instr, hits, times, goals, rng))
        return plans

    def _plan_episode(
        self,
        episode: int,
        start: int,
        instr: np.ndarray,
        hits: np.ndarray,
        times: np.ndarray,
        goals: np.ndarray,
        rng: np.random.Generator,
    ) -> EpisodePlan:
        k = instr.shape[0]
        distinct = times[np.concatenate([times[:1] >= 0, times[1:] != times[:-1]])]  # unique
        if self.cfg.strategy == "final":
            kept, pivot = len(hits), start
            candidates = distinct[~np.isin(distinct, hits, assume_unique=True)]  # no real hit
        else:
            kept = int(rng.integers(0, len(hits) + 1))
            pivot = int(hits[kept - 1]) if kept else start
            candidates = distinct[distinct > pivot]
        free = k - kept
        n = free if self.cfg.amount == "all" else int(rng.integers(0, free + 1))
        n = min(n, len(candidates))
        picked_t = np.sort(rng.choice(candidates, size=n, replace=False)).astype(np.int64)
        lo = np.searchsorted(times, picked_t, side="left")  # events of each picked timestep
        hi = np.searchsorted(times, picked_t, side="right")
        picked_g = goals[lo + (rng.random(n) * (hi - lo)).astype(np.int64)]  # (n, G)
        slot_t = np.concatenate([hits[:kept], picked_t])  # (kept + n,)
        slot_g = np.concatenate([instr[:kept], picked_g])  # (kept + n, G)
        slot_h = np.concatenate([np.zeros(kept, bool), np.ones(n, bool)])
        order = np.argsort(slot_t, kind="stable")  # "future": already in time order
        new = instr.copy()
        new[: len(order)] = slot_g[order]
        planned = np.full(k, -1, np.int64)
        planned[: len(order)] = slot_t[order]
        relabeled = np.zeros(k, bool)
        relabeled[: len(order)] = slot_h[order]
        return EpisodePlan(episode, instr, new, planned, relabeled, pivot)


@register_relabeler("hindsight")
def make_hindsight(**kwargs: Any) -> HindsightRelabeler:
    """The ``"hindsight"`` relabeler; ``kwargs`` are :class:`HindsightConfig` fields."""
    known = set(HindsightConfig.__dataclass_fields__)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError("relabel_kwargs", f"unknown options {unknown}; known: {sorted(known)}")
    cfg = HindsightConfig(**kwargs)
    prefixed("relabel_kwargs", cfg.validate)
    return HindsightRelabeler(cfg)


__all__ = [
    "AMOUNTS",
    "STRATEGIES",
    "EpisodePlan",
    "HindsightConfig",
    "HindsightRelabeler",
    "check_goal_arrays",
    "is_goal_trajectory",
    "make_hindsight",
]
