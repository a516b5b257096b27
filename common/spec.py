"""What a learner and its actors need to know about an environment's spaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # gymnasium only where spaces are read: the learner path runs without it
    import gymnasium as gym


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without batch/time dims) and numpy dtype name of one observation key."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TokenSpec(ArraySpec):
    """An observation key of token ids (text: ``common.envs.text``): integer ids in
    ``[0, vocab)``, ``0`` = padding, ``1`` = unknown; the learner embeds them.

    A subclass (not a field of :class:`ArraySpec`) so that the specs of every other key, and
    the dicts stored from them (``dataclasses.asdict``), stay what they were; a TokenSpec never
    equals an ArraySpec, so a policy trained on another vocabulary does not match."""

    vocab: int


def array_spec_from_dict(d: dict) -> ArraySpec:
    """Inverse of ``dataclasses.asdict`` of an :class:`ArraySpec` or :class:`TokenSpec` (a
    stored spec's ``obs`` entries: a ``"vocab"`` entry makes it a TokenSpec)."""
    shape, dtype = tuple(int(x) for x in d["shape"]), np.dtype(str(d["dtype"])).name
    if d.get("vocab") is not None:
        return TokenSpec(shape, dtype, int(d["vocab"]))
    return ArraySpec(shape, dtype)


def is_image(spec: ArraySpec) -> bool:
    """Observations that go through the CNN: uint8 arrays of shape (H, W, C), not text."""
    return len(spec.shape) == 3 and spec.dtype == "uint8" and not isinstance(spec, TokenSpec)


@dataclass(frozen=True)
class EnvSpec:
    """Observation keys, action space and episode horizon of an environment.

    ``obs`` maps each observation key to its spec (a plain Box observation is key
    ``"observation"``; a text key's spec is a :class:`TokenSpec`, which gives the learner its
    vocabulary size). Discrete actions are ``action_dim``-way categorical, stored one-hot;
    continuous actions are ``action_dim``-vectors in [-1, 1] (rescaled by the env wrapper).
    ``goal_keys`` names observation keys that hold a goal instruction (goal-conditioned tasks).
    ``extras`` gives the shape/dtype of each per-timestep array the env reports for
    ``Trajectory.extras`` (see ``common.envs.api``); empty for most envs.
    """

    obs: dict[str, ArraySpec]
    action_dim: int
    discrete: bool
    max_episode_steps: int
    goal_keys: tuple[str, ...] = field(default_factory=tuple)
    #: per-timestep arrays the env reports in ``info["extras"]`` (stored in Trajectory.extras)
    extras: dict[str, ArraySpec] = field(default_factory=dict)

    def image_keys(self) -> list[str]:
        """The observation keys the learner reads as images (a CNN each), sorted."""
        return sorted(k for k, v in self.obs.items() if is_image(v))

    @staticmethod
    def from_spaces(
        observation_space: gym.Space, action_space: gym.Space, max_episode_steps: int
    ) -> EnvSpec:
        import gymnasium as gym

        if isinstance(observation_space, gym.spaces.Dict):
            items = dict(observation_space.spaces.items())
        else:
            items = {"observation": observation_space}
        obs = {}
        for key, space in items.items():
            vocab = getattr(space, "vocab", None)  # common.envs.text.TokenBox
            if isinstance(space, gym.spaces.Box) and isinstance(vocab, int):
                shape = tuple(int(d) for d in space.shape)
                obs[key] = TokenSpec(shape, np.dtype(space.dtype).name, vocab)
            elif isinstance(space, gym.spaces.Box):
                obs[key] = ArraySpec(tuple(int(d) for d in space.shape), np.dtype(space.dtype).name)
            elif isinstance(space, gym.spaces.Discrete):
                obs[key] = ArraySpec((int(space.n),), "float32")  # one-hot by the env wrapper
            else:
                raise TypeError(f"observation key {key!r}: unsupported space {space}")
        if isinstance(action_space, gym.spaces.Discrete):
            return EnvSpec(obs, int(action_space.n), True, int(max_episode_steps))
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            return EnvSpec(obs, int(action_space.shape[0]), False, int(max_episode_steps))
        raise TypeError(f"unsupported action space {action_space}")


def compatible(policy: EnvSpec, env: EnvSpec, whose: str = "the policy's") -> list[str]:
    """How an env's spec differs from the one a policy was trained on (``whose``, in the
    messages), in what acting needs: observation keys, shapes and dtypes, the action space.
    The horizon may differ."""
    out = []
    if policy.obs != env.obs:
        out.append(f"observations {_obs_str(env.obs)} != {whose} {_obs_str(policy.obs)}")
    if (policy.discrete, policy.action_dim) != (env.discrete, env.action_dim):
        kind = lambda s: f"{'discrete' if s.discrete else 'continuous'} {s.action_dim}"  # noqa: E731
        out.append(f"actions {kind(env)} != {whose} {kind(policy)}")
    return out


def _obs_str(obs: dict[str, ArraySpec]) -> str:
    return "{" + ", ".join(f"{k}: {_array_str(v)}" for k, v in obs.items()) + "}"


def _array_str(a: ArraySpec) -> str:
    vocab = f" vocab {a.vocab}" if isinstance(a, TokenSpec) else ""
    return f"{list(a.shape)} {a.dtype}{vocab}"


def spec_from_dict(d) -> EnvSpec:
    """Inverse of ``dataclasses.asdict`` of an :class:`EnvSpec` (as checkpoints, exported
    policies and replay dumps store it, tuples as lists); ``KeyError`` / ``TypeError`` /
    ``ValueError`` for anything malformed."""

    def arrays(m) -> dict[str, ArraySpec]:
        if not isinstance(m, dict):
            raise TypeError(f"not a map: {m!r}")
        return {str(k): array_spec_from_dict(v) for k, v in m.items()}

    return EnvSpec(
        obs=arrays(d["obs"]),
        action_dim=int(d["action_dim"]),
        discrete=bool(d["discrete"]),
        max_episode_steps=int(d["max_episode_steps"]),
        goal_keys=tuple(str(k) for k in d.get("goal_keys", ())),
        extras=arrays(d.get("extras", {})),
    )
