"""The envs of one rollout loop, stepped as a batch: in-process or in subprocesses.

:class:`actors.rollout.RolloutLoop` is the one rollout mechanism; it steps an
:class:`EnvBatch` and never sees how. Both implementations return, per env, either the env's
own result or the exception it raised, so the loop's fault rule (an env that raises in
``step`` is reset, its rollout dropped and the fault counted) is the same for both:

* :class:`SyncEnvBatch` (``actors.vector_env: sync``, the default): the envs live in the
  actor's process and are stepped one after another.
* :class:`AsyncEnvBatch` (``actors.vector_env: async``): gymnasium's ``AsyncVectorEnv``, one
  subprocess per env, all stepped at once; for envs whose ``step`` is expensive (a simulator,
  rendering), so that ``envs_per_actor`` steps overlap instead of adding up.

Time alignment (``common.records``) is the loop's, whatever the batch: autoreset is OFF
(``AutoresetMode.DISABLED``); an env that finished a rollout is reset by the loop, through
:meth:`EnvBatch.reset` with the seed the loop chose, before it is stepped again, exactly as a
sync env is. Rewards, flags and infos come back as the env returned them (pickled whole, not
batched into arrays); observations through gymnasium's shared memory, in the observation
space's dtypes (what a standardised env returns anyway).

What differs with ``async`` (documented in docs/configuration.md, "Vectorised envs"):

* an exception inside an env is caught in its subprocess (:class:`_Guard`), which survives,
  and reported to the loop as in sync mode; but a subprocess that *dies* (segfault, killed,
  out of memory) breaks the whole vector env: the next call raises in the actor, which fails
  the ``collect`` call and Ray restarts the actor (its in-flight rollouts are lost, as in any
  actor crash);
* resets of the envs that finished in one step go out together; when a reset raises, the
  retries of that env draw their seeds after every env of that batch (sync mode: right after
  its own failed attempt), so only after a failed reset can the seeds differ from sync mode;
* ``make_env`` is called in each subprocess (and once in the actor, to read the spaces);
  it must be picklable (the builder's factories are) and the env module importable there.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)

VECTOR_MODES = ("sync", "async")
MP_CONTEXTS = ("forkserver", "spawn", "fork")


class EnvFault(RuntimeError):
    """An exception raised inside an env's subprocess (its traceback as the message)."""


class EnvBatch(Protocol):
    num_envs: int

    def reset(self, idx: Sequence[int], seeds: Sequence[int]) -> list:
        """Reset envs ``idx`` with ``seeds``: per entry of ``idx``, the env's ``(obs, info)``
        or the exception its reset raised."""
        ...

    def step(self, actions: np.ndarray) -> list:
        """Step env i with ``actions[i]``, every env: per env, its ``(obs, reward,
        terminated, truncated, info)`` or the exception its step raised."""
        ...

    def close(self) -> None: ...


class SyncEnvBatch:
    """The envs in this process, stepped one after another (``envs`` is the list)."""

    def __init__(self, envs: list[gym.Env]):
        self.envs = list(envs)
        self.num_envs = len(self.envs)

    def reset(self, idx: Sequence[int], seeds: Sequence[int]) -> list:
        out: list = []
        for i, seed in zip(idx, seeds):
            try:
                out.append(self.envs[i].reset(seed=seed))
            except Exception as e:
                out.append(e)
        return out

    def step(self, actions: np.ndarray) -> list:
        out: list = []
        for i, env in enumerate(self.envs):
            try:
                out.append(env.step(actions[i]))
            except Exception as e:
                out.append(e)
        return out

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # closing is best effort
                log.exception("env close failed")


class _Raw:
    """What a guarded env hands back besides its observation, pickled as it is (gymnasium's
    vector env puts unknown objects into an object array untouched)."""

    __slots__ = ("reward", "terminated", "truncated", "info", "fault")

    def __init__(self, reward=0.0, terminated=False, truncated=False, info=None, fault=""):
        self.reward, self.terminated, self.truncated = reward, terminated, truncated
        self.info, self.fault = info if info is not None else {}, fault

    def __getstate__(self):
        return (self.reward, self.terminated, self.truncated, self.info, self.fault)

    def __setstate__(self, state):
        self.reward, self.terminated, self.truncated, self.info, self.fault = state


RAW_KEY = "amago_raw"


class _Guard(gym.Wrapper):
    """Runs in the subprocess: catches the env's exceptions (the subprocess survives) and
    wraps each result into ``info[RAW_KEY]`` so that it reaches the actor unchanged."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._last_obs = None

    def _placeholder_obs(self):
        return self._last_obs if self._last_obs is not None else self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        try:
            # the vector env passes options={} once it has taken out its reset_mask
            obs, info = self.env.reset(seed=seed, options=options or None)
        except Exception:
            return self._placeholder_obs(), {RAW_KEY: _Raw(fault=traceback.format_exc())}
        self._last_obs = obs
        return obs, {RAW_KEY: _Raw(info=info)}

    def step(self, action):
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception:
            return (
                self._placeholder_obs(),
                0.0,
                False,
                False,
                {RAW_KEY: _Raw(fault=traceback.format_exc())},
            )
        self._last_obs = obs
        return obs, 0.0, False, False, {RAW_KEY: _Raw(reward, terminated, truncated, info)}


class _GuardedFactory:
    """Picklable ``() -> _Guard(make())`` for the subprocesses."""

    def __init__(self, make: Callable[[], gym.Env]):
        self.make = make

    def __call__(self) -> gym.Env:
        return _Guard(self.make())


class AsyncEnvBatch:
    """gymnasium ``AsyncVectorEnv`` over ``makers`` (each ``() -> env``), one subprocess per
    env, autoreset off; ``context`` is the multiprocessing start method (``forkserver`` by
    default: forking a Ray worker, with its threads, is not safe)."""

    def __init__(self, makers: Sequence[Callable[[], gym.Env]], context: str = "forkserver"):
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode

        self.num_envs = len(makers)
        self.vec = AsyncVectorEnv(
            [_GuardedFactory(m) for m in makers],
            shared_memory=True,
            copy=True,
            context=context,
            daemon=True,
            autoreset_mode=AutoresetMode.DISABLED,
        )

    def _split(self, obs, i: int):
        if isinstance(obs, dict):
            return {k: self._split(v, i) for k, v in obs.items()}
        if isinstance(obs, tuple):
            return tuple(self._split(v, i) for v in obs)
        return obs[i]

    def _raw(self, infos: dict, i: int) -> _Raw:
        return infos[RAW_KEY][i]

    def reset(self, idx: Sequence[int], seeds: Sequence[int]) -> list:
        if not len(idx):
            return []
        mask = np.zeros(self.num_envs, np.bool_)
        seed_list: list[int | None] = [None] * self.num_envs
        for i, s in zip(idx, seeds):
            mask[i], seed_list[i] = True, int(s)
        obs, infos = self.vec.reset(seed=seed_list, options={"reset_mask": mask})
        out: list = []
        for i in idx:
            raw = self._raw(infos, i)
            out.append(EnvFault(raw.fault) if raw.fault else (self._split(obs, i), raw.info))
        return out

    def step(self, actions: np.ndarray) -> list:
        obs, _r, _te, _tr, infos = self.vec.step(np.asarray(actions))
        out: list = []
        for i in range(self.num_envs):
            raw = self._raw(infos, i)
            if raw.fault:
                out.append(EnvFault(raw.fault))
            else:
                out.append(
                    (self._split(obs, i), raw.reward, raw.terminated, raw.truncated, raw.info)
                )
        return out

    def close(self) -> None:
        try:
            self.vec.close(terminate=True)
        except Exception as e:  # a dead subprocess: gymnasium's close waits on its pipe
            log.warning("closing the vector env: %r; terminating its processes", e)
            for proc in self.vec.processes:
                if proc.is_alive():
                    proc.terminate()
                proc.join(timeout=5)
            self.vec.closed = True  # its __del__ must not try again


def make_env_batch(
    makers: Sequence[Callable[[], gym.Env]], mode: str = "sync", context: str = "forkserver"
):
    """The :class:`EnvBatch` ``actors.vector_env`` asks for over ``makers``."""
    if mode == "async":
        return AsyncEnvBatch(makers, context)
    if mode == "sync":
        return SyncEnvBatch([m() for m in makers])
    raise ValueError(f"vector_env must be one of {VECTOR_MODES}, got {mode!r}")
