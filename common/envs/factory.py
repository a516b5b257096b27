"""Build the standardised env a rollout actor steps, and its :class:`EnvSpec`.

``make_env(cfg, seed)`` stacks, from the inside out:

1. ``gym.make(cfg.id, **cfg.kwargs)`` without gymnasium's env checker (no per-step overhead);
   with ``cfg.atari_preprocessing``, built with ``frameskip=1`` and wrapped in gymnasium's
   ``AtariPreprocessing`` (:mod:`common.envs.atari`), the time limit then counting agent steps
   outside it, not emulator frames; a MiniGrid env's symbolic ``image`` one-hot per cell code
   (:class:`common.envs.minigrid_envs.OneHotCells`);
2. :class:`common.envs.goal_wrapper.GoalConditioned` if the env implements ``GoalTask`` and
   is not wrapped yet (``amago/GoalGrid-v0`` comes wrapped);
3. a time limit, always: ``cfg.max_episode_steps``, else the env's registered limit, else the
   limit it declares (an attribute of the unwrapped env: ``max_episode_steps``,
   ``max_episode_length``, MiniGrid's ``max_steps``, Meta-World's ``max_path_length``;
   :data:`common.envs.api.HORIZON_ATTRS`; an ALE env's ``max_num_frames_per_episode`` in agent
   steps, :func:`common.envs.atari.ale_horizon`) — an env with none of these is refused
   (``ConfigError`` naming ``max_episode_steps``): actors need a finite horizon. A declared
   limit also caps a TimeLimit's. :func:`env_spec` logs where an attribute's limit came from;
4. :class:`~common.envs.standardize.Standardize` (dict float32/uint8 observations, one-hot
   discrete observations, token ids for text (:mod:`common.envs.text`), 0-based discrete or
   [-1, 1] continuous actions, seeding);
5. :class:`~common.envs.trial.TrialWrapper` if ``cfg.trial_episodes > 1``.

The env follows the conventions of :mod:`common.envs.api`. ``env_spec(cfg)`` describes it:
``max_episode_steps`` is the horizon of one rollout, i.e. ``trial_episodes x`` the episode
limit for meta-RL trials.
"""

from __future__ import annotations

import dataclasses
import logging

import gymnasium as gym
from gymnasium.wrappers import TimeLimit

from common.config_utils import ConfigError
from common.envs import atari
from common.envs.api import declared_horizon_from, find_wrapper
from common.envs.config import EnvConfig, RewardProbe
from common.envs.goal_wrapper import GoalConditioned
from common.envs.minigrid_envs import OneHotCells, has_symbolic_image
from common.envs.standardize import Standardize
from common.envs.trial import TrialWrapper
from common.goals import GoalTask
from common.spec import EnvSpec

log = logging.getLogger(__name__)


def _build(cfg: EnvConfig, seed: int | None) -> tuple[gym.Env, int]:
    """The standardised env and the horizon (in steps) of one of its rollouts."""
    env, horizon, _ = _build_with_source(cfg, seed)
    return env, horizon


def _build_with_source(cfg: EnvConfig, seed: int | None) -> tuple[gym.Env, int, str | None]:
    """:func:`_build`, and what of the unwrapped env set the episode limit (``"max_steps
    attribute"``, an ALE's frame limit; None: a TimeLimit wrapper, ``cfg.max_episode_steps``
    or the registered limit, set it)."""
    cfg.validate()
    limit = cfg.max_episode_steps or None
    kwargs = dict(cfg.kwargs)
    if cfg.atari_preprocessing:
        kwargs = atari.preprocessing_kwargs(kwargs)
    try:
        # preprocessed Atari: the time limit goes outside the frame-skipping wrapper (below)
        inner_limit = None if cfg.atari_preprocessing else limit
        env = gym.make(cfg.id, max_episode_steps=inner_limit, disable_env_checker=True, **kwargs)
        if cfg.atari_preprocessing:
            env = atari.preprocess(env)
            if limit is not None:
                env = TimeLimit(env, limit)
    except Exception as e:  # the env's own constructor: any error is a config error here
        raise _construction_error(cfg, e) from e
    if has_symbolic_image(env):
        env = OneHotCells(env)
    if isinstance(env.unwrapped, GoalTask) and find_wrapper(env, GoalConditioned) is None:
        env = GoalConditioned(env)
    found = declared_horizon_from(env)
    if found is not None:
        found = (found[0], f"{found[1]} attribute")
    else:
        found = atari.ale_horizon(env)
    declared, source = found if found is not None else (None, None)
    time_limit = find_wrapper(env, TimeLimit)
    if time_limit is None:
        if declared is None:
            hint = _per_episode_hint(env)
            env.close()
            raise ConfigError(
                "max_episode_steps",
                f"{cfg.id!r} has no time limit of its own{hint}; set max_episode_steps > 0",
            )
        env = TimeLimit(env, declared)
        horizon = declared
    else:
        horizon = int(time_limit._max_episode_steps)
        if declared is not None and declared < horizon:
            horizon = declared
        else:
            source = None
    try:
        env = Standardize(env, seed=seed)
    except TypeError as e:
        env.close()
        raise ConfigError("id", f"{cfg.id!r}: {e}") from e
    if cfg.trial_episodes > 1:
        try:
            env = TrialWrapper(env, cfg.trial_episodes, seed=seed)
        except TypeError as e:
            env.close()
            raise ConfigError("trial_episodes", str(e)) from e
        horizon *= cfg.trial_episodes
    return env, horizon, source


def _per_episode_hint(env: gym.Env) -> str:
    """Why an env with a ``max_steps`` attribute of 0 has no limit (BabyAI levels set it on
    each reset, from the episode's instructions), for the "no time limit" error."""
    if getattr(env.unwrapped, "max_steps", None) == 0:
        return (
            " (its max_steps is 0 until each reset sets one, as BabyAI levels do;"
            " kwargs max_steps=N fixes it)"
        )
    return ""


def _construction_error(cfg: EnvConfig, e: Exception) -> ConfigError:
    """The config field to blame for an env constructor that raised ``e``: its kwargs when it
    was given any (a rejected or wrong argument), else the id."""
    what = f"{type(e).__name__}: {e}"
    if cfg.kwargs:
        return ConfigError(
            "kwargs", f"{cfg.id!r} rejected its arguments {dict(cfg.kwargs)}: {what}"
        )
    return ConfigError("id", f"{cfg.id!r} could not be constructed: {what}")


def make_env(cfg: EnvConfig, seed: int | None = None) -> gym.Env:
    """The standardised env for rollout actors (module doc). ``seed`` seeds its first reset
    (and task sampling); pass distinct seeds to distinct env copies."""
    return _build(cfg, seed)[0]


def spec_of(env: gym.Env, horizon: int) -> EnvSpec:
    """The :class:`EnvSpec` of a standardised env whose rollouts last at most ``horizon``."""
    spec = EnvSpec.from_spaces(env.observation_space, env.action_space, horizon)
    goal = find_wrapper(env, GoalConditioned)
    if goal is None:
        return spec
    return dataclasses.replace(spec, goal_keys=goal.goal_keys, extras=dict(goal.extras_spec))


def env_spec(cfg: EnvConfig) -> EnvSpec:
    """Spaces and rollout horizon of ``make_env(cfg)`` (builds a throwaway copy)."""
    env, horizon, source = _build_with_source(cfg, seed=0)
    try:
        try:
            env.reset(seed=0)
        except Exception as e:  # a constructor that works but an env that cannot reset
            raise _construction_error(cfg, e) from e
        if source is not None:
            log.info(
                "%r: episode limit %d steps from the env's own %s",
                cfg.id,
                horizon // cfg.trial_episodes,
                source,
            )
        return spec_of(env, horizon)
    finally:
        env.close()


def reward_probe(cfg: EnvConfig, max_steps: int = 1000, seed: int = 0) -> RewardProbe:
    """The rewards of ``make_env(cfg)`` under uniformly random actions over up to
    ``max_steps`` steps: a scale and density hint for derived defaults (an env that raises
    ends the probe; what it saw so far stands)."""
    env = make_env(cfg, seed=seed)
    biggest, steps, rewarded = 0.0, 0, 0
    try:
        env.reset(seed=seed)
        for _ in range(max_steps):
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            biggest = max(biggest, abs(float(r)))
            steps += 1
            rewarded += float(r) != 0.0
            if terminated or truncated:
                env.reset()
    except Exception:  # the probe is a hint: what it saw so far stands
        pass
    finally:
        env.close()
    return RewardProbe(biggest, rewarded / steps if steps else 0.0)
