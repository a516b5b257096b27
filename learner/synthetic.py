"""Batches without a replay service: collate trajectories, or draw random data of the right
shapes; and a tiny model config. For tests and benchmarks (the real sampler lives in
``replay_service``)."""

from __future__ import annotations

import numpy as np

from common.records import Batch, Trajectory
from common.records import collate as collate_windows
from common.spec import EnvSpec
from learner.config import ModelConfig


def tiny_model(width: int = 32, **overrides) -> ModelConfig:
    """A 2-layer, 4-head model ``width`` wide (d_ff twice that): fast on one CPU thread."""
    base = dict(
        d_model=width,
        n_layers=2,
        n_heads=4,
        d_ff=2 * width,
        tstep_hidden=width,
        tstep_out=width,
        actor_hidden=width,
        critic_hidden=width,
    )
    return ModelConfig(**{**base, **overrides})


def collate(trajs: list[Trajectory], length: int, starts: list[int] | None = None) -> Batch:
    """Windows ``[start, start + length)`` of each trajectory, right-padded with zeros and
    ``mask`` False to exactly ``length`` timesteps (:func:`common.records.collate`)."""
    starts = starts or [0] * len(trajs)
    return collate_windows(
        [(tr, s, max(0, min(length, len(tr) - s))) for tr, s in zip(trajs, starts)], length
    )


def random_batch(
    spec: EnvSpec,
    batch_size: int,
    length: int,
    rng: np.random.Generator,
    min_len: int | None = None,
) -> Batch:
    """Random data of the right shapes and dtypes; row lengths uniform in [min_len, length]
    (default: all full), the rest padding (zeros, mask False)."""
    lens = rng.integers(min_len if min_len is not None else length, length + 1, size=batch_size)
    mask = np.arange(length)[None, :] < lens[:, None]  # (B, L)
    obs = {}
    for k, s in spec.obs.items():
        if s.dtype == "uint8":
            obs[k] = rng.integers(0, 256, size=(batch_size, length, *s.shape), dtype=np.uint8)
        else:
            obs[k] = rng.standard_normal((batch_size, length, *s.shape)).astype(s.dtype)
    if spec.discrete:
        idx = rng.integers(spec.action_dim, size=(batch_size, length))
        prev_action = np.eye(spec.action_dim, dtype=np.float32)[idx]
    else:
        prev_action = rng.uniform(-1, 1, size=(batch_size, length, spec.action_dim)).astype(
            np.float32
        )
    prev_action[:, 0] = 0.0
    prev_reward = rng.standard_normal((batch_size, length)).astype(np.float32)
    prev_reward[:, 0] = 0.0
    terminated = np.zeros((batch_size, length), dtype=bool)
    terminated[np.arange(batch_size), lens - 1] = rng.random(batch_size) < 0.5
    m = mask.astype(np.float32)
    batch = Batch(
        obs={
            k: (v * m.reshape(*m.shape, *([1] * (v.ndim - 2)))).astype(v.dtype)
            for k, v in obs.items()
        },
        prev_action=prev_action * m[..., None],
        prev_reward=prev_reward * m,
        time_idx=(np.arange(length)[None, :] * mask).astype(np.int64),
        terminated=terminated & mask,
        truncated=np.zeros((batch_size, length), dtype=bool),
        mask=mask,
        policy_version=np.zeros(batch_size, dtype=np.int64),
    )
    return batch


class SyntheticSampler:
    """A :class:`common.core.ReplaySampler` of :func:`random_batch` windows (full rows) from
    its own seeded generator: the learner's real sampling path without a replay service, for
    tests and benchmarks. ``stats()`` counts what it sampled."""

    def __init__(self, spec: EnvSpec, length: int, seed: int):
        self.spec, self.length = spec, length
        self.rng = np.random.default_rng(seed)
        self.windows = self.timesteps = 0

    def sample(self, batch_size: int, timeout_s: float | None = None) -> Batch:
        batch = random_batch(self.spec, batch_size, self.length, self.rng)
        self.windows += batch_size
        self.timesteps += int(batch.mask.sum())
        return batch

    def stats(self):
        from common.replay import ReplayStats

        return ReplayStats(sampled_windows=self.windows, sampled_timesteps=self.timesteps)


def synthetic_sampler(spec: EnvSpec, length: int, seed: int) -> SyntheticSampler:
    """Sampler factory (picklable through ``functools.partial``) for ``LearnerSetup``."""
    return SyntheticSampler(spec, length, seed)
