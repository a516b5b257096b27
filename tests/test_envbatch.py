"""Vectorised envs (issue 17 item 5): the rollout loop steps its envs through an EnvBatch,
in-process (sync) or in gymnasium AsyncVectorEnv subprocesses (async). The same seeds and
policy give the very same records either way (time alignment, flags, extras, episode starts
of meta-RL trials), and an env raising in step is reset, its rollout dropped and the fault
counted in both."""

from __future__ import annotations

import functools
import os

import gymnasium as gym
import numpy as np
import pytest

from actors.config import ActorConfig
from actors.envbatch import AsyncEnvBatch, SyncEnvBatch, make_env_batch
from actors.rollout import RolloutLoop
from common.config_utils import ConfigError
from common.envs.config import EnvConfig
from common.envs.factory import env_spec, make_env
from common.records import Trajectory


class SeededPolicy:
    """Deterministic given its seed: the same action sequence for the same inputs."""

    def __init__(self, spec, seed=0):
        self.spec, self.rng, self.version = spec, np.random.default_rng(seed), 7
        self.resets: list[int] = []

    def act(self, step, slots, greedy=False):
        n = len(slots)
        if self.spec.discrete:
            return self.rng.integers(0, self.spec.action_dim, size=n)
        return self.rng.uniform(-1, 1, size=(n, self.spec.action_dim)).astype(np.float32)

    def reset(self, slots):
        self.resets += [int(s) for s in slots]

    def load_weights(self, version, weights):
        self.version = version


class FailAt(gym.Wrapper):
    """Raises in its ``at``-th step (counted over the env's life), then behaves."""

    def __init__(self, env, at):
        super().__init__(env)
        self.at, self.n = at, 0

    def step(self, action):
        self.n += 1
        if self.n == self.at:
            raise RuntimeError("injected env fault")
        return self.env.step(action)


class DieAt(FailAt):
    def step(self, action):
        self.n += 1
        if self.n == self.at:
            os._exit(3)  # the subprocess dies
        return self.env.step(action)


def _faulty(cfg, seed, at, cls=FailAt):
    env = make_env(cfg, seed=seed)
    return cls(env, at) if at else env


CASES = {
    "tmaze": EnvConfig(id="amago/TMaze-v0", kwargs={"corridor_length": 3}),
    "bandit_trials": EnvConfig(id="amago/MetaBandit-v0", trial_episodes=3),
    "goal_grid": EnvConfig(id="amago/GoalGrid-v0"),
}


def _collect(cfg, mode, steps=40, n=3, fail=None):
    spec = env_spec(cfg)
    makers = [functools.partial(_faulty, cfg, i, (fail or {}).get(i)) for i in range(n)]
    batch = make_env_batch(makers, mode, "forkserver")
    out: list[Trajectory] = []
    policy = SeededPolicy(spec)
    loop = RolloutLoop(batch, spec, policy, out.append, None, actor_id=2, env_id=cfg.id, seed=5)
    try:
        st = loop.run(steps)
    finally:
        loop.close()
    return st, out, policy


def _same(a: list[Trajectory], b: list[Trajectory]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.meta == y.meta
        xa, ya = x.arrays(), y.arrays()
        assert xa.keys() == ya.keys()
        for k in xa:
            assert xa[k].dtype == ya[k].dtype, k
            np.testing.assert_array_equal(xa[k], ya[k], err_msg=k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sync_and_async_stepping_give_the_same_records(case):
    cfg = CASES[case]
    st_s, sync, pol_s = _collect(cfg, "sync")
    st_a, asyn, pol_a = _collect(cfg, "async")
    _same(sync, asyn)
    assert st_s.env_steps == st_a.env_steps == 3 * 40
    assert st_s.returns == st_a.returns and st_s.finished_slots == st_a.finished_slots
    assert pol_s.resets == pol_a.resets  # the same slots reset in the same order


def test_an_env_raising_in_step_is_reset_and_counted_in_both_modes():
    cfg = CASES["tmaze"]
    fail = {1: 6}  # env 1 raises in its 6th step (mid-episode: corridor 3 -> 5-step episodes)
    st_s, sync, _ = _collect(cfg, "sync", fail=fail)
    st_a, asyn, _ = _collect(cfg, "async", fail=fail)
    assert st_s.env_faults == st_a.env_faults == 1
    assert st_s.env_steps == st_a.env_steps == 3 * 40 - 1
    _same(sync, asyn)
    clean = _collect(cfg, "sync")[1]
    assert len(sync) < len(clean)  # the interrupted rollout was dropped


def test_a_dead_subprocess_fails_the_loop_loudly():
    cfg = CASES["tmaze"]
    spec = env_spec(cfg)
    makers = [functools.partial(_faulty, cfg, i, 3 if i == 0 else None, DieAt) for i in range(2)]
    batch = AsyncEnvBatch(makers, "forkserver")
    loop = RolloutLoop(batch, spec, SeededPolicy(spec), None, None)
    try:
        with pytest.raises(Exception):  # noqa: B017  (gymnasium's own error types)
            loop.run(10)
    finally:
        loop.close()


def test_sync_batch_keeps_the_env_objects():
    cfg = CASES["tmaze"]
    envs = [make_env(cfg, seed=i) for i in range(2)]
    loop = RolloutLoop(envs, env_spec(cfg), SeededPolicy(env_spec(cfg)), None, None)
    assert isinstance(loop.batch, SyncEnvBatch) and loop.envs == envs and loop.num_envs == 2


@pytest.mark.parametrize(
    "field,value",
    [("vector_env", "threads"), ("vector_env_context", "thread")],
)
def test_vector_env_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        ActorConfig(**{field: value}).validate()
