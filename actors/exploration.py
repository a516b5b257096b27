"""Exploration on top of the policy's actions, with a per-actor schedule."""

from __future__ import annotations

import numpy as np

from actors.config import ExplorationConfig


class Exploration:
    """Epsilon-greedy (discrete) or Gaussian noise (continuous) with a linear anneal, on top
    of the policy's sampled (``cfg.sample_actions``) or greedy actions.

    Actor ``actor_id`` of ``num_actors`` anneals from ``cfg.start`` to its own final value,
    spread geometrically over ``[cfg.end_min, cfg.end_max]`` across actors (an actor added
    mid-run, ``actor_id >= num_actors``, takes the value of actor ``actor_id % num_actors``:
    a grown fleet repeats the spread rather than leaving it). Within a rollout
    of ``horizon`` steps, epsilon is scaled down linearly to ``cfg.rollout_end_scale`` at the
    horizon and fixed over ``cfg.step_windows`` (see :class:`actors.config.ExplorationConfig`).
    """

    def __init__(
        self,
        cfg: ExplorationConfig,
        actor_id: int,
        num_actors: int,
        discrete: bool,
        action_dim: int,
        rng: np.random.Generator,
        horizon: int = 0,
    ):
        self.cfg, self.discrete, self.action_dim, self.rng = cfg, discrete, action_dim, rng
        self.horizon = max(int(horizon), 1)
        self._windows = [
            (w.start, w.stop if w.stop > 0 else self.horizon + w.stop, w.epsilon)
            for w in cfg.step_windows
        ]
        frac = (actor_id % num_actors) / (num_actors - 1) if num_actors > 1 else 0.0
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

    def step_epsilon(self, local_step: np.ndarray) -> np.ndarray:
        """Epsilon per env at rollout steps ``local_step`` ((n,) ints): the global schedule,
        the within-rollout scale, then the step windows."""
        t = np.asarray(local_step, np.float64)
        scale = 1.0 + (self.cfg.rollout_end_scale - 1.0) * np.minimum(t / self.horizon, 1.0)
        eps = self.epsilon * scale
        for start, stop, value in self._windows:
            eps = np.where((t >= start) & (t < stop), value, eps)
        return eps

    def __call__(self, actions: np.ndarray, local_step: np.ndarray | None = None) -> np.ndarray:
        """Perturb a batch of policy actions ((n,) ints or (n, A) floats) taken at rollout
        steps ``local_step`` ((n,), default 0); the schedule advances by the n env steps."""
        n = int(actions.shape[0])
        eps = self.step_epsilon(np.zeros(n, np.int64) if local_step is None else local_step)
        self.steps += n
        if not (eps > 0.0).any():
            return actions
        if self.discrete:
            flip = self.rng.random(n) < eps
            if flip.any():
                actions = actions.copy()
                actions[flip] = self.rng.integers(0, self.action_dim, size=int(flip.sum()))
            return actions
        scale = eps.reshape(n, *([1] * (actions.ndim - 1)))
        noise = (self.rng.standard_normal(actions.shape) * scale).astype(actions.dtype)
        return np.clip(actions + noise, -1.0, 1.0)
