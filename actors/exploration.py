"""Exploration on top of the policy's actions, with a per-actor schedule."""

from __future__ import annotations

import numpy as np

from actors.config import ExplorationConfig


class Exploration:
    """Epsilon-greedy (discrete) or Gaussian noise (continuous) with a linear anneal, on top
    of the policy's sampled (``cfg.sample_actions``) or greedy actions.

    Actor ``actor_id`` of ``num_actors`` anneals from ``cfg.start`` to its own final value,
    spread geometrically over ``[cfg.end_min, cfg.end_max]`` across actors.
    """

    def __init__(
        self,
        cfg: ExplorationConfig,
        actor_id: int,
        num_actors: int,
        discrete: bool,
        action_dim: int,
        rng: np.random.Generator,
    ):
        self.cfg, self.discrete, self.action_dim, self.rng = cfg, discrete, action_dim, rng
        frac = actor_id / (num_actors - 1) if num_actors > 1 else 0.0
        lo, hi = max(cfg.end_min, 1e-6), max(cfg.end_max, 1e-6)
        self.end = float(lo * (hi / lo) ** frac) if cfg.end_max > 0 else 0.0
        self.steps = 0

    @property
    def sample_actions(self) -> bool:
        """Whether the policy samples its actions (else it acts greedily) before exploration
        perturbs them (``cfg.sample_actions``)."""
        return bool(self.cfg.sample_actions)

    @property
    def epsilon(self) -> float:
        if self.cfg.anneal_steps == 0 or self.steps >= self.cfg.anneal_steps:
            return self.end
        f = self.steps / self.cfg.anneal_steps
        return self.cfg.start + f * (self.end - self.cfg.start)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        """Perturb a batch of policy actions ((n,) ints or (n, A) floats); the schedule
        advances by the n env steps taken."""
        eps = self.epsilon
        self.steps += int(actions.shape[0])
        if eps <= 0.0:
            return actions
        if self.discrete:
            n = actions.shape[0]
            flip = self.rng.random(n) < eps
            if flip.any():
                actions = actions.copy()
                actions[flip] = self.rng.integers(0, self.action_dim, size=int(flip.sum()))
            return actions
        noise = self.rng.normal(0.0, eps, size=actions.shape).astype(actions.dtype)
        return np.clip(actions + noise, -1.0, 1.0)
