"""Wire codec for trajectories: msgpack maps, numpy arrays as {dtype, shape, raw bytes}.

Layout of an encoded record (a msgpack map)::

    {"v": FORMAT_VERSION,
     "meta": {"env_id": str, "actor_id": int, "policy_version": int,
              "episode_starts": [int, ...], "info": {str: scalar}},
     "arrays": {"obs/<k>" | "prev_action" | ... | "extras/<k>":
                {"d": dtype name, "s": [dims...], "z": codec name, "b": raw bytes}}}

``"z"`` is ``""`` (raw) or ``"zstd"``. Decoding never unpickles: dtypes come from a fixed
whitelist and payloads become arrays with ``np.frombuffer`` (no copy beyond msgpack's own;
the arrays are read-only views). Every problem raises :class:`RecordError` naming the field
and a stable ``reason`` code that the replay service counts in its rejection metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from common.records import CORE_KEYS, FORMAT_VERSION, Trajectory, TrajectoryMeta

#: dtypes a record may carry; anything else (object, void, strings...) is refused.
ALLOWED_DTYPES = frozenset(
    [
        "bool",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    ]
)
#: Array compressions ("" = raw), also what ``ReplayConfig.compression`` accepts.
COMPRESSIONS = ("", "zstd")
# dtype -> name lookups (``np.dtype.name`` is a slow property; dict lookups are not)
_NAME_OF = {np.dtype(n): n for n in ALLOWED_DTYPES}
_DTYPE_OF = {n: np.dtype(n) for n in ALLOWED_DTYPES}

#: Stable reason codes (metric label values).
REASONS = (
    "version",
    "schema",
    "dtype",
    "shape",
    "length",
    "nonfinite",
    "oversize",
    "truncated",
    "compression",
)


class RecordError(ValueError):
    """A record failed to decode or validate. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str, detail: str):
        assert reason in REASONS, reason
        self.field, self.reason, self.detail = field, reason, detail
        super().__init__(f"invalid trajectory field {field!r} ({reason}): {detail}")


@dataclass(frozen=True)
class Limits:
    """Size caps enforced by :func:`validate` and :func:`decode`."""

    max_steps: int = 100_000
    max_bytes: int = 256 * 2**20


_zstd_c: Any = None
_zstd_d: Any = None


def _zstd():
    global _zstd_c, _zstd_d
    if _zstd_c is None:
        import zstandard

        _zstd_c, _zstd_d = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    return _zstd_c, _zstd_d


def _encode_array(a: np.ndarray, compression: str, min_bytes: int) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    raw = a.data if a.nbytes else b""
    z = compression if compression and a.nbytes >= min_bytes else ""
    payload = _zstd()[0].compress(raw) if z == "zstd" else raw
    if z and len(payload) >= a.nbytes:  # incompressible: store raw
        z, payload = "", raw
    return {"d": _NAME_OF.get(a.dtype) or a.dtype.name, "s": list(a.shape), "z": z, "b": payload}


def encode(traj: Trajectory, compression: str = "", compress_min_bytes: int = 4096) -> bytes:
    """Serialise a trajectory. ``compression``: ``""`` or ``"zstd"`` (arrays >= min bytes)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    m = traj.meta
    doc = {
        "v": FORMAT_VERSION,
        "meta": {
            "env_id": m.env_id,
            "actor_id": int(m.actor_id),
            "policy_version": int(m.policy_version),
            "episode_starts": [int(s) for s in m.episode_starts],
            "info": m.info,
        },
        "arrays": {
            k: _encode_array(v, compression, compress_min_bytes) for k, v in traj.arrays().items()
        },
    }
    return msgpack.packb(doc, use_bin_type=True)


def _decode_array(name: str, d: Any) -> np.ndarray:
    if not isinstance(d, dict) or not {"d", "s", "z", "b"} <= d.keys():
        raise RecordError(name, "schema", "array entry must be a map with keys d, s, z, b")
    dtype, shape, z, payload = d["d"], d["s"], d["z"], d["b"]
    if dtype not in ALLOWED_DTYPES:
        raise RecordError(name, "dtype", f"dtype {dtype!r} not in the allowed set")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise RecordError(name, "shape", f"shape must be a list of non-negative ints: {shape!r}")
    if not isinstance(payload, bytes):
        raise RecordError(name, "schema", "payload must be msgpack bin")
    if z == "zstd":
        try:
            payload = _zstd()[1].decompress(payload)
        except Exception as e:  # zstd raises its own error type
            raise RecordError(name, "compression", f"zstd payload does not decode: {e}") from e
    elif z != "":
        raise RecordError(name, "compression", f"unknown compression {z!r}")
    dt = _DTYPE_OF[dtype]
    expected = math.prod(shape) * dt.itemsize
    if len(payload) != expected:
        raise RecordError(
            name,
            "truncated",
            f"{len(payload)} payload bytes for shape {shape} {dtype} (expected {expected})",
        )
    return np.frombuffer(payload, dtype=dt).reshape(shape)


def decode(buf: bytes | memoryview, limits: Limits | None = None, check: bool = True) -> Trajectory:
    """Parse (and by default :func:`validate`) an encoded trajectory."""
    limits = limits or Limits()
    if len(buf) > limits.max_bytes:
        raise RecordError("record", "oversize", f"{len(buf)} bytes > max {limits.max_bytes}")
    try:
        doc = msgpack.unpackb(buf, raw=False, strict_map_key=True, max_bin_len=limits.max_bytes)
    except (msgpack.ExtraData, ValueError, msgpack.UnpackException) as e:
        raise RecordError("record", "truncated", f"not a complete msgpack record: {e}") from e
    if not isinstance(doc, dict):
        raise RecordError("record", "schema", "top level must be a map")
    if doc.get("v") != FORMAT_VERSION:
        raise RecordError(
            "v", "version", f"format version {doc.get('v')!r}, this build reads {FORMAT_VERSION}"
        )
    meta_d, arrays_d = doc.get("meta"), doc.get("arrays")
    if not isinstance(meta_d, dict):
        raise RecordError("meta", "schema", "missing or not a map")
    if not isinstance(arrays_d, dict):
        raise RecordError("arrays", "schema", "missing or not a map")
    try:
        meta = TrajectoryMeta(
            env_id=str(meta_d["env_id"]),
            actor_id=int(meta_d["actor_id"]),
            policy_version=int(meta_d["policy_version"]),
            episode_starts=[int(s) for s in meta_d["episode_starts"]],
            info=dict(meta_d.get("info") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError("meta", "schema", f"bad metadata: {e!r}") from e
    arrays = {str(k): _decode_array(str(k), v) for k, v in arrays_d.items()}
    for k in CORE_KEYS:
        if k not in arrays:
            raise RecordError(k, "schema", "required array missing")
    for k in arrays:
        if k not in CORE_KEYS and not k.startswith(("obs/", "extras/")):
            raise RecordError(k, "schema", "unknown array name")
    traj = Trajectory.from_arrays(arrays, meta)
    if check:
        validate(traj, limits)
    return traj


_EXPECTED_DTYPES = {
    "prev_action": ("float32",),
    "prev_reward": ("float32",),
    "time_idx": ("int32", "int64"),
    "terminated": ("bool",),
    "truncated": ("bool",),
}


def _all_finite(a: np.ndarray) -> bool:
    # A finite sum implies finite elements (NaN/inf propagate); only an overflowing sum of
    # finite values needs the exact elementwise check.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum(dtype=np.float64 if a.dtype != np.float64 else None)):
            return True
    return bool(np.isfinite(a).all())


def validate(traj: Trajectory, limits: Limits | None = None) -> None:
    """Raise :class:`RecordError` (naming the field) unless ``traj`` is well-formed."""
    limits = limits or Limits()
    if not traj.obs:
        raise RecordError("obs", "schema", "a trajectory needs at least one observation key")
    n = traj.prev_reward.shape[0] if traj.prev_reward.ndim >= 1 else -1
    if n < 1:
        raise RecordError("prev_reward", "length", "needs shape (N,) with N >= 1")
    if n > limits.max_steps:
        raise RecordError("record", "oversize", f"{n} timesteps > max {limits.max_steps}")
    arrays = traj.arrays()
    nbytes = 0
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise RecordError(name, "schema", f"expected a numpy array, got {type(a).__name__}")
        dname = _NAME_OF.get(a.dtype)
        if dname is None:
            raise RecordError(name, "dtype", f"dtype {a.dtype.name!r} not in the allowed set")
        if a.ndim == 0 or a.shape[0] != n:
            raise RecordError(name, "length", f"leading dim {a.shape[:1]} != N={n}")
        if a.dtype.kind == "f" and not _all_finite(a):
            raise RecordError(name, "nonfinite", "contains NaN or inf")
        expected = _EXPECTED_DTYPES.get(name)
        if expected is not None and dname not in expected:
            raise RecordError(name, "dtype", f"dtype {dname} (expected {expected})")
        nbytes += a.nbytes
    if traj.prev_action.ndim != 2:
        raise RecordError("prev_action", "shape", "expected (N, action_dim)")
    for name in ("prev_reward", "time_idx", "terminated", "truncated"):
        if arrays[name].ndim != 1:
            raise RecordError(name, "shape", "expected shape (N,)")
    starts = traj.meta.episode_starts
    if (
        not starts
        or starts[0] != 0
        or any(b <= a for a, b in zip(starts, starts[1:]))
        or starts[-1] >= n
    ):
        raise RecordError(
            "meta.episode_starts",
            "schema",
            f"must be strictly increasing, start at 0 and lie below N={n}: {starts}",
        )
    if nbytes > limits.max_bytes:
        raise RecordError("record", "oversize", f"{nbytes} array bytes > max {limits.max_bytes}")
