"""Text observations as fixed-length arrays of token ids (used by :mod:`common.envs.standardize`).

Two kinds of text space are supported; everything else keeps the "unsupported observation
space" error:

* gymnasium ``Text(max_length, charset=...)``: **characters**. The vocabulary is the space's
  ``character_set`` sorted (a frozenset's iteration order changes with ``PYTHONHASHSEED``, so it
  is never used as is); the array holds ``max_length`` ids.
* MiniGrid/BabyAI ``MissionSpace`` (free text): **words**. A mission is lower-cased and split
  into words ``[a-z0-9]+`` (punctuation dropped: ``"a, then b"`` reads as ``a then b``); the
  vocabulary is :data:`MINIGRID_WORDS` (every word MiniGrid's and BabyAI's mission grammars use)
  plus the words of the space's own ``ordered_placeholders`` and mission template, sorted; the
  array holds :data:`MISSION_MAX_WORDS` ids (longer missions are cut there).

Ids: ``0`` = padding (after the text), ``1`` = unknown (a character outside the charset, a word
outside the vocabulary), ``2 + i`` = the i-th vocabulary entry; ``vocab = 2 + len(entries)``.
The array's dtype is the smallest of uint8/int16/int32 that holds ``vocab - 1``.

Rollout actors and the learner build the vocabulary independently, so it is derived only from
the space (and this module's constants): the same space gives the same ids in every process.
The standardised space is a :class:`TokenBox` (a ``Box(0, vocab - 1, (length,))`` that also
carries ``vocab``); :meth:`common.spec.EnvSpec.from_spaces` turns it into a
:class:`common.spec.TokenSpec`, which the learner's timestep encoder embeds
(``learner.model.TokenEmbedding``).

Per step the conversion of an unchanged text (a mission is constant per episode) is one string
comparison and one small array copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np

#: id of a padding position (after the text).
PAD_ID = 0
#: id of a character or word outside the vocabulary.
UNK_ID = 1
#: ids below this are reserved (padding, unknown); vocabulary entry i has id ``FIRST_ID + i``.
FIRST_ID = 2
#: words kept of a mission (BabyAI's longest missions have ~40).
MISSION_MAX_WORDS = 64

#: The words of MiniGrid's and BabyAI's mission grammars (minigrid 3.x: every registered
#: ``MiniGrid-*``/``BabyAI-*`` env's missions, object types, colours and door states). Fixed
#: here (not gathered by resetting envs) so every process derives the same vocabulary; adding a
#: word changes the ids and the vocabulary size (a checkpoint's spec then no longer matches).
MINIGRID_WORDS = (
    "a after agent and at avoid ball behind blue box closed door empty end fetch find floor "
    "from front get go goal green grey hallway in key lava left locked matching must near next "
    "object of on open opening pick purple put reach red right room rooms square the then to "
    "traverse unlock up use wall yellow you your"
).split()

_WORD = re.compile(r"[a-z0-9]+")

Converter = Callable[[Any], np.ndarray]


class TokenBox(gym.spaces.Box):
    """``Box(0, vocab - 1, (length,))`` of token ids; ``vocab`` is the vocabulary size
    (padding and unknown ids included)."""

    def __init__(self, length: int, vocab: int):
        self.vocab = int(vocab)
        super().__init__(0, self.vocab - 1, (int(length),), token_dtype(self.vocab))

    def __repr__(self) -> str:
        return f"TokenBox(length={self.shape[0]}, vocab={self.vocab}, dtype={self.dtype})"


def token_dtype(vocab: int) -> np.dtype:
    """The smallest of uint8/int16/int32 that holds ids up to ``vocab - 1``."""
    for dt in (np.uint8, np.int16, np.int32):
        if vocab - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"vocabulary of {vocab} ids is too large")


def is_mission_space(space: gym.Space) -> bool:
    """MiniGrid's ``MissionSpace`` (duck-typed: minigrid need not be installed)."""
    return hasattr(space, "mission_func") and hasattr(space, "ordered_placeholders")


def words(text: str) -> list[str]:
    """The words of a mission: lower-cased ``[a-z0-9]+`` runs, punctuation dropped."""
    return _WORD.findall(str(text).lower())


def text_vocabulary(space: gym.spaces.Text) -> list[str]:
    """The characters of a ``Text`` space, sorted (ids ``FIRST_ID + i``)."""
    return sorted(space.character_set)


def mission_vocabulary(space: gym.Space) -> list[str]:
    """:data:`MINIGRID_WORDS` plus the words of the space's placeholders and its mission
    template (the mission with every placeholder empty), sorted (ids ``FIRST_ID + i``)."""
    found = set(MINIGRID_WORDS)
    placeholders = space.ordered_placeholders
    if placeholders:
        for options in placeholders:
            for p in options:
                found.update(words(p))
        template = space.mission_func(*([""] * len(placeholders)))
    else:
        template = space.mission_func()
    found.update(words(template))
    return sorted(found)


def _converter(
    vocabulary: list[str], length: int, split: Callable[[str], Iterable[str]]
) -> tuple[TokenBox, Converter]:
    index = {tok: FIRST_ID + i for i, tok in enumerate(vocabulary)}
    out = TokenBox(length, FIRST_ID + len(vocabulary))
    dtype = out.dtype
    last: list[Any] = [None, None]  # (text, ids) of the previous call: text is per-episode

    def convert(x: Any) -> np.ndarray:
        if x != last[0] or last[1] is None:
            ids = np.full(length, PAD_ID, dtype=dtype)
            toks = [index.get(t, UNK_ID) for t in split(x)][:length]
            ids[: len(toks)] = toks
            last[0], last[1] = x, ids
        return last[1].copy()

    return out, convert


def text_converter(space: gym.Space) -> tuple[TokenBox, Converter] | None:
    """(token space, converter) for a ``Text`` or ``MissionSpace``; None for any other space."""
    if isinstance(space, gym.spaces.Text):
        return _converter(text_vocabulary(space), int(space.max_length), lambda s: str(s))
    if is_mission_space(space):
        return _converter(mission_vocabulary(space), MISSION_MAX_WORDS, words)
    return None
