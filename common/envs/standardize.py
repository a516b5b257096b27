"""One wrapper that gives any gymnasium env the interface rollout actors expect.

Observations become a dict of arrays (``gym.spaces.Dict`` of ``Box``):

* a plain observation goes under key ``"observation"``; nested ``Dict``/``Tuple`` spaces are
  flattened into keys joined by ``"."`` (tuple entries by index: ``"0"``, ``"1"``, ...);
* ``Box``: float32 (any other dtype is cast; 0-d becomes shape ``(1,)``), except ``uint8`` with
  3 dims (an ``H x W x C`` image), which stays ``uint8``;
* ``Discrete(n, start)``: a float32 one-hot ``(n,)``; ``MultiDiscrete(nvec)``: the one-hots of
  its entries concatenated, ``(sum(nvec),)``; ``MultiBinary``: float32, flattened;
* text (gymnasium ``Text``, MiniGrid's ``MissionSpace``): a fixed-length array of token ids, a
  :class:`~common.envs.text.TokenBox` (characters or words; :mod:`common.envs.text`).

Actions become ``Discrete(n)`` (indices from 0, whatever the env's ``start``; a
``MultiDiscrete`` action space becomes one flat index over all combinations) or a float32
``Box(-1, 1, (A,))`` that is clipped to [-1, 1] and rescaled affinely to the env's bounds
(a dimension with an infinite bound is passed through unscaled; multi-dim boxes are flattened).

Infos always carry ``info[INFO_EPISODE_START]`` (True on reset, False on steps unless an outer
wrapper says otherwise). ``seed`` given at construction seeds the first ``reset()`` that is not
given a seed itself (and the action/observation spaces), so ``make_env(cfg, seed)`` is
reproducible however the actor calls ``reset``.

Per step this costs one dict and one small array per observation key; the conversion plan is
built once in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from common.envs.api import INFO_EPISODE_START, OBS_DEFAULT
from common.envs.text import TokenBox, text_converter

Converter = Callable[[Any], np.ndarray]


def _f32_bounds(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float32)


def _box_converter(space: gym.spaces.Box) -> tuple[gym.spaces.Box, Converter]:
    if space.dtype == np.uint8 and len(space.shape) == 3:
        return space, lambda x: np.asarray(x, dtype=np.uint8)
    shape = space.shape if space.shape else (1,)
    low = _f32_bounds(space.low).reshape(shape)
    high = _f32_bounds(space.high).reshape(shape)
    out = gym.spaces.Box(low, high, shape=shape, dtype=np.float32)
    if space.shape:
        return out, lambda x: np.asarray(x, dtype=np.float32)
    return out, lambda x: np.asarray(x, dtype=np.float32).reshape(1)


def _one_hot_converter(n: int, start: int) -> Converter:
    def convert(x: Any) -> np.ndarray:
        z = np.zeros(n, dtype=np.float32)
        z[int(x) - start] = 1.0
        return z

    return convert


def _multi_one_hot_converter(nvec: np.ndarray, start: np.ndarray) -> Converter:
    offsets = (np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start).astype(np.int64)
    total = int(nvec.sum())

    def convert(x: Any) -> np.ndarray:
        z = np.zeros(total, dtype=np.float32)
        z[offsets + np.asarray(x, dtype=np.int64).reshape(-1)] = 1.0
        return z

    return convert


def _leaf(space: gym.Space) -> tuple[gym.spaces.Box, Converter]:
    if isinstance(space, TokenBox):  # already token ids (an env standardised twice)
        dtype = space.dtype
        return space, lambda x: np.asarray(x, dtype=dtype)
    if isinstance(space, gym.spaces.Box):
        return _box_converter(space)
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        return gym.spaces.Box(0.0, 1.0, (n,), np.float32), _one_hot_converter(n, int(space.start))
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
        start = np.asarray(space.start, dtype=np.int64).reshape(-1)
        out = gym.spaces.Box(0.0, 1.0, (int(nvec.sum()),), np.float32)
        return out, _multi_one_hot_converter(nvec, start)
    if isinstance(space, gym.spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return gym.spaces.Box(0.0, 1.0, (n,), np.float32), lambda x: np.asarray(
            x, dtype=np.float32
        ).reshape(n)
    tokens = text_converter(space)
    if tokens is not None:
        return tokens
    raise TypeError(f"unsupported observation space {space}")


def _plan(space: gym.Space, key: str, path: tuple) -> list[tuple[str, tuple, gym.Space, Converter]]:
    """(key, index path into the raw observation, converted space, converter) per leaf."""
    if isinstance(space, gym.spaces.Dict):
        items = list(space.spaces.items())
    elif isinstance(space, gym.spaces.Tuple):
        items = list(enumerate(space.spaces))
    else:
        return [(key or OBS_DEFAULT, path, *_leaf(space))]
    plan = []
    for sub_key, sub_space in items:
        name = f"{key}.{sub_key}" if key else str(sub_key)
        plan.extend(_plan(sub_space, name, (*path, sub_key)))
    return plan


def _get(obs: Any, path: tuple) -> Any:
    for p in path:
        obs = obs[p]
    return obs


def _action_plan(space: gym.Space) -> tuple[gym.Space, Converter]:
    if isinstance(space, gym.spaces.Discrete):
        start = int(space.start)
        return gym.spaces.Discrete(int(space.n)), lambda a: start + int(a)
    if isinstance(space, gym.spaces.MultiDiscrete) and len(space.shape) == 1:
        nvec = tuple(int(n) for n in space.nvec)
        start = np.asarray(space.start, dtype=space.dtype)
        dtype = space.dtype
        return gym.spaces.Discrete(
            int(np.prod(nvec))
        ), lambda a: np.asarray(np.unravel_index(int(a), nvec), dtype=dtype) + start
    if isinstance(space, gym.spaces.Box):
        shape, dtype = space.shape, space.dtype
        dim = int(np.prod(shape))
        low = np.asarray(space.low, dtype=np.float64).reshape(dim)
        high = np.asarray(space.high, dtype=np.float64).reshape(dim)
        finite = np.isfinite(low) & np.isfinite(high)
        scale = np.where(finite, (high - low) / 2.0, 1.0)  # env = offset + scale * a
        offset = np.where(finite, (high + low) / 2.0, 0.0)
        out = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)

        def convert(a: Any) -> np.ndarray:
            a = np.clip(np.asarray(a, dtype=np.float64).reshape(dim), -1.0, 1.0)
            env_a = offset + scale * a
            if finite.all():  # guard rounding at the bounds
                env_a = np.clip(env_a, low, high)
            return env_a.reshape(shape).astype(dtype)

        return out, convert
    raise TypeError(f"unsupported action space {space}")


class Standardize(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Dict-of-arrays observations, 0-based discrete or [-1, 1] continuous actions (module doc)."""

    def __init__(self, env: gym.Env, seed: int | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        super().__init__(env)
        self._plan = _plan(env.observation_space, "", ())
        self.observation_space = gym.spaces.Dict({k: s for k, _, s, _ in self._plan})
        self.action_space, self._to_env_action = _action_plan(env.action_space)
        self._single = len(self._plan) == 1 and self._plan[0][1] == ()
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
            self.observation_space.seed(seed)

    def _convert(self, raw: Any) -> dict[str, np.ndarray]:
        if self._single:
            key, _, _, fn = self._plan[0]
            return {key: fn(raw)}
        return {key: fn(_get(raw, path)) for key, path, _, fn in self._plan}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        raw, info = self.env.reset(seed=seed, options=options)
        info[INFO_EPISODE_START] = True
        return self._convert(raw), info

    def step(self, action: Any):
        raw, reward, terminated, truncated, info = self.env.step(self._to_env_action(action))
        info.setdefault(INFO_EPISODE_START, False)
        return self._convert(raw), float(reward), bool(terminated), bool(truncated), info
