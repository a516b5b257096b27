"""Mutational fuzzing of the wire codec (``common.codec.decode``), for a fixed time.

Inputs are valid encoded records mutated at two levels:

- bytes: bit flips, truncations, splices of two records, random insertions/overwrites;
- msgpack structure: a random value of the decoded map replaced by a hostile one (wrong
  type, huge or non-int64 ints, inf/nan, long strings, deep nesting, many dims, odd array
  names, int keys...), keys deleted or added; half of these are re-sealed (checksum
  recomputed) so they reach the checks behind the checksum;
- zstd bombs: frames declaring far more bytes than the shape, frames without a content size,
  and shapes enlarged to a decoded size past the byte cap.

Each input must either decode (and then also pass ``validate`` and round-trip through
``encode``) or raise ``RecordError``; anything else is a crash. Prints inputs tried, accepted,
rejections by reason, crashes (with the first tracebacks) and peak memory.

    python -m benchmarks.fuzz_campaign [--seconds 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from common.codec import Limits, RecordError, decode, encode, pack_sealed, validate
from common.records import Trajectory, TrajectoryMeta

#: Limits of the campaign (and of tests/test_fuzz.py): small enough that a bomb past the cap
#: would show in the memory figure.
FUZZ_LIMITS = Limits(max_steps=1000, max_bytes=16 * 2**20)
_BOMB_BYTES = 64 * 2**20


def make_trajectory(n: int, seed: int, image: bool = False, extras: bool = False) -> Trajectory:
    rng = np.random.default_rng(seed)
    obs = {"observation": rng.normal(size=(n, 4)).astype(np.float32)}
    if image:
        obs["pixels"] = np.repeat(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), 4, axis=1)
    ex = {"achieved": rng.normal(size=(n, 2)).astype(np.float32)} if extras else {}
    starts = [0] if n < 4 else [0, n // 2]
    return Trajectory(
        obs=obs,
        prev_action=rng.normal(size=(n, 2)).astype(np.float32),
        prev_reward=rng.normal(size=n).astype(np.float32),
        time_idx=np.arange(n, dtype=np.int32),
        terminated=np.eye(1, n, n - 1, dtype=bool)[0],
        truncated=np.zeros(n, bool),
        extras=ex,
        meta=TrajectoryMeta(
            env_id="fuzz/Env-v0",
            actor_id=seed,
            policy_version=seed * 7,
            episode_starts=starts,
            info={"goal_reward_fn": "seq", "num_goals": 2, "w": [1.5, {"k": None}]},
        ),
    )


def base_records() -> list[bytes]:
    """Valid records of several shapes: raw and zstd, with/without extras and images."""
    return [
        encode(make_trajectory(6, 1)),
        encode(make_trajectory(12, 2, extras=True)),
        encode(make_trajectory(9, 3, image=True), compression="zstd", compress_min_bytes=64),
        encode(make_trajectory(1, 4)),
    ]


def seal(doc: Any) -> bytes:
    """Pack ``doc`` as the encoder does: its entries, then a correct "c" checksum last."""
    if not isinstance(doc, dict):
        return msgpack.packb(doc, use_bin_type=True)
    return pack_sealed({k: v for k, v in doc.items() if k != "c"})


def _deep(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    x = leaf
    for _ in range(depth):
        x = [x] if kind == "list" else {"k": x}
    return x


HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    math.inf,
    -math.inf,
    math.nan,
    2**63,
    2**64 - 1,
    -(2**63),
    -(2**63) + 1,
    2**31,
    "7",
    "",
    "x" * 5000,
    "obs/../../etc",
    "obs/\x00",
    b"",
    b"\x00" * 7,
    [],
    [0] * 70,
    [2**63, 0],
    [0, 2**62],
    [6, 2**40],
    [1, 2, 3],
    [-1],
    [1.5],
    ["a"],
    {},
    {1: 2},
    {"d": ["float32"], "s": [6], "z": "", "b": b""},
    _deep(6, kind="dict"),
    _deep(200),
    ["float32"],
    {"float32": 1},
    "complex128",
    "zstd",
    "lz4",
    list(range(3000)),
]


_KEYS: list[Any] = [
    "obs/../../etc",
    "obs/\x00",
    "obs/ok\n",
    "extras/ok",
    "obs/" + "a" * 65,
    "bogus",
    "prev_action",
    "meta",
    "c",
    7,
    -1,
    b"obs/x",
    1.5,
    None,
]


def _paths(x: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, (*path, k))
    elif isinstance(x, list) and len(x) <= 16:
        for i, v in enumerate(x):
            out += _paths(v, (*path, i))
    return out


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return doc


def mutate_structure(rng: np.random.Generator, blob: bytes) -> Any:
    """A copy of ``blob``'s document with one or a few hostile edits."""
    doc = msgpack.unpackb(blob, raw=False)
    for _ in range(int(rng.integers(1, 3))):
        paths = _paths(doc)
        path = paths[int(rng.integers(len(paths)))]
        op = rng.random()
        if op < 0.7 or not path:
            doc = _set(doc, path, copy.deepcopy(HOSTILE[int(rng.integers(len(HOSTILE)))]))
        else:
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                if op < 0.85:
                    parent.pop(path[-1], None)
                else:  # rename the key (array names, meta keys)
                    new = _KEYS[int(rng.integers(len(_KEYS)))]
                    parent[new] = parent.pop(path[-1])
    return doc


_bomb_cache: dict[str, bytes] = {}


def _bomb_frame(kind: str) -> bytes:
    if kind not in _bomb_cache:
        import zstandard

        zeros = bytes(2**20)
        cobj = zstandard.ZstdCompressor(level=1).compressobj(
            size=_BOMB_BYTES if kind == "sized" else -1
        )
        parts = [cobj.compress(zeros) for _ in range(_BOMB_BYTES // 2**20)]
        _bomb_cache[kind] = b"".join(parts) + cobj.flush()
    return _bomb_cache[kind]


def bomb(rng: np.random.Generator, blob: bytes) -> bytes:
    """A sealed record whose one array is a zstd frame of 64 MiB of zeros."""
    doc = msgpack.unpackb(blob, raw=False)
    name = str(rng.choice(sorted(doc["arrays"])))
    entry = doc["arrays"][name]
    kind = str(rng.choice(["sized", "unsized"]))
    entry["z"], entry["b"] = "zstd", _bomb_frame(kind)
    if rng.random() < 0.5:  # make the shape agree with the frame: past the byte cap
        itemsize = np.dtype(entry["d"]).itemsize if isinstance(entry["d"], str) else 1
        entry["s"] = [entry["s"][0], _BOMB_BYTES // itemsize // max(entry["s"][0], 1)]
    return seal(doc)


def mutate(rng: np.random.Generator, bases: list[bytes]) -> tuple[str, bytes]:
    """(mutation kind, input bytes) drawn at random."""
    blob = bases[int(rng.integers(len(bases)))]
    r = rng.random()
    b = bytearray(blob)
    if r < 0.2:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        return "flip", bytes(b)
    if r < 0.3:
        return "truncate", bytes(b[: int(rng.integers(len(b)))])
    if r < 0.4:
        other = bases[int(rng.integers(len(bases)))]
        i, j = int(rng.integers(len(b))), int(rng.integers(len(other)))
        return "splice", bytes(b[:i]) + other[j:]
    if r < 0.48:
        i = int(rng.integers(len(b) + 1))
        junk = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            b[i:i] = junk
        else:
            b[i : i + len(junk)] = junk
        return "insert", bytes(b)
    if r < 0.97:
        doc = mutate_structure(rng, blob)
        try:
            if rng.random() < 0.5:
                return "struct", msgpack.packb(doc, use_bin_type=True)
            return "struct_sealed", seal(doc)
        except (ValueError, TypeError, OverflowError):  # not packable: try another
            return mutate(rng, bases)
    return "bomb", bomb(rng, blob)


@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    tracebacks: list[str] = field(default_factory=list)


def check_one(buf: bytes, limits: Limits, tally: Tally) -> Trajectory | None:
    """Decode ``buf``; count the outcome; a non-RecordError (or an accepted record that
    validate() or a re-encode refuses) is recorded as a crash."""
    tally.tried += 1
    try:
        traj = decode(buf, limits)
    except RecordError as e:
        tally.rejected[e.reason] += 1
        return None
    except Exception as e:  # noqa: BLE001 - the point is to catch anything
        _crash(tally, f"decode: {type(e).__name__}")
        return None
    try:
        validate(traj, limits)
        decode(encode(traj, limits=limits), limits)
    except Exception as e:  # noqa: BLE001
        _crash(tally, f"accepted but refused by validate/re-encode: {type(e).__name__}: {e}")
        return None
    tally.accepted += 1
    return traj


def _crash(tally: Tally, key: str) -> None:
    tally.crashes[key] += 1
    if len(tally.tracebacks) < 5:
        tally.tracebacks.append(traceback.format_exc())


def run(
    seconds: float,
    seed: int = 0,
    limits: Limits = FUZZ_LIMITS,
    max_inputs: int | None = None,
    on_input: Callable[[str, bytes], None] | None = None,
) -> Tally:
    rng = np.random.default_rng(seed)
    bases = base_records()
    tally = Tally()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (max_inputs is None or tally.tried < max_inputs):
        kind, buf = mutate(rng, bases)
        tally.kinds[kind] += 1
        check_one(buf, limits, tally)
        if on_input is not None:
            on_input(kind, buf)
    return tally


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rss0 = peak_rss_mb()
    t0 = time.monotonic()
    tally = run(args.seconds, args.seed)
    dt = time.monotonic() - t0
    print(f"codec fuzz campaign: {dt:.0f} s, seed {args.seed}, limits {FUZZ_LIMITS}")
    print(f"{'inputs tried':34s} {tally.tried:>10,d}  ({tally.tried / dt:,.0f}/s)")
    for k, v in sorted(tally.kinds.items()):
        print(f"  {'mutation ' + k:32s} {v:>10,d}")
    print(f"{'accepted (valid after mutation)':34s} {tally.accepted:>10,d}")
    print(f"{'rejected (RecordError)':34s} {sum(tally.rejected.values()):>10,d}")
    for k, v in tally.rejected.most_common():
        print(f"  {'reason ' + k:32s} {v:>10,d}")
    print(f"{'crashes (anything else)':34s} {sum(tally.crashes.values()):>10,d}")
    for k, v in tally.crashes.most_common():
        print(f"  {k[:60]:60s} {v:,d}")
    print(f"{'peak RSS (MB)':34s} {peak_rss_mb():>10.0f}  (at start {rss0:.0f})")
    for tb in tally.tracebacks[:3]:
        print("-" * 80)
        print(tb)


if __name__ == "__main__":
    main()
