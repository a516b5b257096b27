"""Learner checkpoints: one ``torch.save`` file, loaded with ``weights_only=True``.

Contents: format version, the resolved learner config (a dict), the env spec, the agent's
state (online and target networks, PopArt and observation statistics, sigma-reparam vectors),
the optimizer state, the update counter and the learner's RNG state. Restoring continues
training with identical counters (and, on CPU, identical numbers; on CUDA the backward's
atomic adds make two runs from one checkpoint differ in the last bits, so a resumed CUDA run
matches in step counts and state, not bit for bit in later numbers).

A checkpoint written under another config or env spec is refused with
:class:`CheckpointMismatchError` listing every differing field. Fields that only say where and
how fast to run (:data:`RUNTIME_FIELDS`) may differ.

The functions work on plain state (a config dict, the spec, the ``state_dict()`` of the
learner) and know nothing of the learner class: :meth:`learner.amago.AmagoLearner.save` and
``restore`` call them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from common.spec import EnvSpec

CHECKPOINT_FORMAT = 1

#: Config fields allowed to differ between the writer and the reader of a checkpoint.
RUNTIME_FIELDS = frozenset(
    {"device", "num_threads", "pin_memory", "compile", "worker", "batch_size", "num_learners"}
)


class CheckpointMismatchError(ValueError):
    """The checkpoint was written under another config/spec. ``differences`` lists
    ``"<dotted field>: <checkpoint value> != <current value>"`` strings."""

    def __init__(self, path: str, differences: list[str]):
        self.differences = differences
        super().__init__(
            f"checkpoint {path!r} does not match this learner: " + "; ".join(differences)
        )


def _plain(x: Any) -> Any:
    """Tuples -> lists etc., so configs and specs compare the same after a round trip."""
    return json.loads(json.dumps(x))


def spec_to_dict(spec: EnvSpec) -> dict[str, Any]:
    return _plain(dataclasses.asdict(spec))


def diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ, with both values."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for k in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in saved:
                out.append(f"{name}: missing in checkpoint != {current[k]!r}")
            elif k not in current:
                out.append(f"{name}: {saved[k]!r} != missing in this config")
            else:
                out += diff(saved[k], current[k], name)
        return out
    return (
        [] if saved == current else [f"{prefix}: {saved!r} (checkpoint) != {current!r} (current)"]
    )


def save_checkpoint(
    path: str, config: Mapping[str, Any], spec: EnvSpec, state: dict[str, Any]
) -> None:
    """Write a checkpoint to ``path`` atomically (temp file + rename): the learner config
    ``config`` (a dict, e.g. ``LearnerConfig.to_dict()``), the env ``spec`` and the learner's
    ``state`` (its ``state_dict()``)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": _plain(config),
        "spec": spec_to_dict(spec),
        "state": state,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str,
    config: Mapping[str, Any],
    spec: EnvSpec,
    map_location: str | torch.device | None = None,
) -> dict[str, Any]:
    """The learner state stored in ``path`` (tensors on ``map_location``, the RNG states on
    the CPU), for a learner of config ``config`` (a dict) and env ``spec``; refuses with
    :class:`CheckpointMismatchError` (naming the fields) if the stored config or spec differ
    outside :data:`RUNTIME_FIELDS`."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            path, [f"format: {payload.get('format')!r} (checkpoint) != {CHECKPOINT_FORMAT}"]
        )
    saved_cfg = {k: v for k, v in payload["config"].items() if k not in RUNTIME_FIELDS}
    current_cfg = {k: v for k, v in _plain(config).items() if k not in RUNTIME_FIELDS}
    differences = diff(saved_cfg, current_cfg, "learner")
    differences += diff(payload["spec"], spec_to_dict(spec), "spec")
    if differences:
        raise CheckpointMismatchError(path, differences)
    state = payload["state"]
    state["rng_cpu"] = state["rng_cpu"].cpu()
    if state.get("rng_cuda") is not None:
        state["rng_cuda"] = state["rng_cuda"].cpu()
    return state


def latest_checkpoint(path: str) -> str | None:
    """The checkpoint ``path`` names: the file itself, or the newest ``ckpt_*.pt`` in a
    directory or in its ``checkpoints/`` subdirectory (a run directory); None if none."""
    if os.path.isfile(path):
        return path
    for directory in (path, os.path.join(path, "checkpoints")):
        found = list_checkpoints(directory)
        if found:
            return found[-1]
    return None


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Paths of the ``ckpt_*.pt`` files in ``directory``, oldest version first ([] if none)."""
    if not os.path.isdir(directory):
        return []
    names = sorted(f for f in os.listdir(directory) if _CKPT_NAME.fullmatch(f))
    return [os.path.join(directory, f) for f in names]


def checkpoint_name(version: int) -> str:
    """File name of the checkpoint at update ``version`` (names sort by version)."""
    return f"ckpt_{version:08d}.pt"


_CKPT_NAME = re.compile(r"ckpt_\d{8,}\.pt")
