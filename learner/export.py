"""Policy artifacts: the acting part of a checkpoint, and a policy that acts in one env.

An artifact is a directory of two files:

* ``model.safetensors``: the policy network's weights (``PolicyNet`` state: timestep and
  trajectory encoders, actor, observation statistics), nothing of the critics or optimizer;
* ``policy.json``: ``format``, the learner config the weights belong to (``learner``, a dict),
  the env spec (``spec``), the env section of the run (``env``: id, kwargs, trial_episodes,
  max_episode_steps), the policy ``version`` (learner updates) and the ``source`` checkpoint.

Write one with ``python -m deploy.tools.export <run dir | checkpoint> out=DIR`` (or
:func:`export_policy`), then act in a few lines, without Ray, Redis or Hydra::

    import gymnasium as gym
    from learner.export import load_policy

    policy = load_policy("policy/")           # greedy actions; sample=True to sample
    env = gym.make("amago/TMaze-v0")          # the raw env: the policy standardises for itself
    obs, _ = env.reset(seed=0)
    policy.reset()
    reward, done = 0.0, False
    while not done:
        action = policy.act(obs, reward)      # reward: of the previous action
        obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated

:class:`LoadedPolicy` keeps its own context (the KV cache of :class:`InferencePolicy`, exact
training window) for one env, the previous action and the step count; it turns the raw
observation into what the network was trained on with the actors' own
:class:`common.envs.standardize.Standardize` (flattened dict of float32 / uint8 arrays,
one-hot discrete observations) and its actions back into the env's action space.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from common.envs.api import OBS_EPISODE_START, find_wrapper
from common.envs.config import EnvConfig
from common.envs.record import action_record
from common.envs.standardize import Standardize
from common.records import StepInput
from common.spec import EnvSpec, compatible, spec_from_dict
from learner.checkpoint import CHECKPOINT_FORMAT, latest_checkpoint, spec_to_dict
from learner.config import LearnerConfig, ModelConfig
from learner.inference import InferencePolicy

EXPORT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "policy.json"


class ExportError(ValueError):
    """A checkpoint or artifact that cannot be read (missing, wrong format, mismatched env)."""


@dataclass
class PolicyParts:
    """What acting needs, read from a checkpoint or an artifact."""

    learner: dict[str, Any]  # the learner config (LearnerConfig.to_dict())
    spec: EnvSpec
    weights: dict[str, torch.Tensor]  # PolicyNet.state_dict()
    version: int  # learner updates behind the weights
    source: str  # the checkpoint (or artifact) they were read from
    env: dict[str, Any] | None = None  # the run's env section, when known

    def learner_config(self) -> LearnerConfig:
        return learner_config(self.learner)

    def inference_policy(
        self, num_slots: int = 1, device: str = "cpu", seed: int = 0
    ) -> InferencePolicy:
        """An :class:`InferencePolicy` with these weights; its context is the training window
        (``learner.max_seq_len``), exact mode (acting = a fresh forward over the window)."""
        cfg = self.learner_config()
        policy = InferencePolicy(
            self.spec, cfg, num_slots, cfg.max_seq_len, device, seed=seed, window="exact"
        )
        try:
            policy.load_weights(self.version, self.weights)
        except RuntimeError as e:  # missing / unexpected keys, wrong shapes
            first = str(e).strip().splitlines()
            raise ExportError(
                f"the weights of {self.source!r} do not fit the model its config describes: "
                + " ".join(x.strip() for x in first[:3])
            ) from None
        return policy


def learner_config(d: Mapping[str, Any]) -> LearnerConfig:
    """A :class:`LearnerConfig` from a stored dict, ignoring fields this version does not know
    (a checkpoint from another version of the code; acting needs only the architecture, the
    discounts, ``prob_clip`` and ``max_seq_len``)."""
    known = {f.name for f in dataclasses.fields(LearnerConfig)}
    model_known = {f.name for f in dataclasses.fields(ModelConfig)}
    d = {k: v for k, v in d.items() if k in known}
    d["model"] = {k: v for k, v in dict(d.get("model", {})).items() if k in model_known}
    d.pop("worker", None)
    return LearnerConfig.from_dict(d)


def read_checkpoint(path: str | os.PathLike) -> PolicyParts:
    """The policy part of a learner checkpoint (a ``ckpt_*.pt`` file, a checkpoints
    directory or a run directory: its newest checkpoint)."""
    found = latest_checkpoint(str(path))
    if found is None:
        raise ExportError(f"no checkpoint at {str(path)!r} (a ckpt_*.pt file or a run directory)")
    try:
        payload = torch.load(found, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, not a torch file, ...
        raise ExportError(f"cannot read checkpoint {found!r}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else None
        raise ExportError(
            f"{found!r} is not a learner checkpoint of format {CHECKPOINT_FORMAT} ({fmt!r})"
        )
    state = payload["state"]
    weights = {
        k.removeprefix("policy."): v for k, v in state["agent"].items() if k.startswith("policy.")
    }
    return PolicyParts(
        learner=payload["config"],
        spec=spec_from_dict(payload["spec"]),
        weights=weights,
        version=int(state["step"]),
        source=str(found),
    )


def export_policy(
    parts: PolicyParts, out_dir: str | os.PathLike, env: EnvConfig | Mapping | None = None
) -> Path:
    """Write ``parts`` as an artifact in ``out_dir`` (created; its two files replaced).
    ``env``: the env section to record (default ``parts.env``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if env is None:
        env = parts.env
    elif isinstance(env, EnvConfig):
        env = dataclasses.asdict(env)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in parts.weights.items()}
    doc = {
        "format": EXPORT_FORMAT,
        "version": parts.version,
        "source": parts.source,
        "learner": parts.learner,
        "spec": spec_to_dict(parts.spec),
        "env": None if env is None else json.loads(json.dumps(dict(env))),
    }
    for name, write in (
        (WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": str(EXPORT_FORMAT)})),
        (CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(doc, indent=2) + "\n")),
    ):
        tmp = out / f".{name}.tmp"
        write(str(tmp))
        os.replace(tmp, out / name)
    return out


def is_artifact(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_artifact(path: str | os.PathLike) -> PolicyParts:
    """The parts stored in an artifact directory written by :func:`export_policy`."""
    from safetensors.torch import load_file

    root = Path(path)
    if not is_artifact(root):
        raise ExportError(f"{str(root)!r} is not an exported policy (no {CONFIG_FILE})")
    try:
        doc = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {str(root / CONFIG_FILE)!r}: {e}") from e
    if doc.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{str(root)!r}: export format {doc.get('format')!r}, this code reads {EXPORT_FORMAT}"
        )
    try:
        weights = load_file(str(root / WEIGHTS_FILE))
    except Exception as e:  # missing or corrupt weights file
        raise ExportError(f"cannot read {str(root / WEIGHTS_FILE)!r}: {e}") from e
    return PolicyParts(
        learner=doc["learner"],
        spec=spec_from_dict(doc["spec"]),
        weights=weights,
        version=int(doc["version"]),
        source=str(doc.get("source", root)),
        env=doc.get("env"),
    )


class LoadedPolicy:
    """Acts in one env from its raw observations, keeping its own context (module doc).

    ``act(obs, reward)`` takes the env's own observation and the reward of the previous action
    (ignored on the first step after :meth:`reset`) and returns an action of the env's own
    action space. Meta-RL trials (``trial_episodes > 1``): call :meth:`reset` at the start of
    a trial only, and pass ``episode_start=True`` with the first observation of every later
    episode of the trial (the env's ``reset()``), as the trial wrapper marks it in training.
    """

    def __init__(
        self,
        parts: PolicyParts,
        env: gym.Env | None = None,
        *,
        greedy: bool = True,
        device: str = "cpu",
        seed: int = 0,
    ):
        self.parts, self.spec, self.greedy = parts, parts.spec, greedy
        self.policy = parts.inference_policy(1, device, seed)
        self.version = parts.version
        self._std = self._standardizer(env)
        self._slot = np.zeros(1, np.int64)
        self.reset()

    def _standardizer(self, env: gym.Env | None) -> Standardize:
        """The actors' observation/action conversion for ``env`` (default: the env the
        artifact names, built once to read its spaces)."""
        if env is None:
            if not self.parts.env:
                raise ExportError("the artifact names no env: pass load_policy(..., env=...)")
            from common.envs.factory import make_env

            built = make_env(EnvConfig(**self.parts.env), seed=0)
            std = find_wrapper(built, Standardize)
            built.close()
        else:
            std = find_wrapper(env, Standardize) or Standardize(env)
        keys = {k: v for k, v in std.observation_space.spaces.items()}
        if OBS_EPISODE_START in self.spec.obs and OBS_EPISODE_START not in keys:
            keys[OBS_EPISODE_START] = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        got = EnvSpec.from_spaces(gym.spaces.Dict(keys), std.action_space, 1)
        problems = compatible(self.spec, dataclasses.replace(got, max_episode_steps=1))
        if problems:
            raise ExportError("the env does not match the policy: " + "; ".join(problems))
        return std

    def reset(self) -> None:
        """Forget the context: the next :meth:`act` is the first step of an episode (or of a
        meta-RL trial)."""
        self.policy.reset(self._slot)
        self._t = 0
        self._prev_action = np.zeros(self.spec.action_dim, np.float32)

    def standardize(self, obs: Any, episode_start: bool = False) -> dict[str, np.ndarray]:
        """The raw observation as the network sees it (the actors' ``Standardize``; the
        trial wrapper's ``episode_start`` flag added for meta-RL policies)."""
        out = self._std._convert(obs)
        if OBS_EPISODE_START in self.spec.obs and OBS_EPISODE_START not in out:
            out[OBS_EPISODE_START] = np.full((1,), float(episode_start or self._t == 0), np.float32)
        return out

    def act(self, obs: Any, reward: float = 0.0, *, episode_start: bool = False) -> Any:
        """The action for raw observation ``obs``; ``reward`` is the reward of the previous
        action (0 is used on the first step after :meth:`reset`)."""
        std_obs = self.standardize(obs, episode_start)
        step = StepInput(
            obs={k: np.asarray(std_obs[k])[None] for k in self.spec.obs},
            prev_action=self._prev_action[None],
            prev_reward=np.array([reward if self._t > 0 else 0.0], np.float32),
            time_idx=np.array([self._t], np.int64),
        )
        action = self.policy.act(step, self._slot, greedy=self.greedy)[0]
        self._prev_action = action_record(action, self.spec)
        self._t += 1
        return self._std._to_env_action(action)


def load_policy(
    path: str | os.PathLike,
    env: gym.Env | None = None,
    *,
    sample: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> LoadedPolicy:
    """The policy of an artifact directory written by ``deploy.tools.export`` (module doc), acting
    greedily (``sample=True``: sampled actions, seeded by ``seed``). ``env``: the env it will
    act in, to read its spaces from (default: built from the artifact's env section)."""
    return LoadedPolicy(read_artifact(path), env, greedy=not sample, device=device, seed=seed)


__all__ = [
    "ExportError",
    "LoadedPolicy",
    "PolicyParts",
    "compatible",
    "export_policy",
    "is_artifact",
    "learner_config",
    "load_policy",
    "read_artifact",
    "read_checkpoint",
    "spec_from_dict",
]
