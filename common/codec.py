"""Wire codec for trajectories: msgpack maps, numpy arrays as {dtype, shape, raw bytes}.

Layout of an encoded record (a msgpack map, keys in this order)::

    {"v": FORMAT_VERSION,
     "meta": {"env_id": str, "actor_id": int, "policy_version": int,
              "episode_starts": [int, ...], "info": {str: value}},
     "arrays": {"obs/<k>" | "prev_action" | ... | "extras/<k>":
                {"d": dtype name, "s": [dims...], "z": codec name, "b": raw bytes}},
     "c": 8-byte bin: :func:`record_digest` (xxh3-64) of every record byte before "c"}

``"z"`` is ``""`` (raw) or ``"zstd"`` (one frame that records its content size). ``"c"`` is
always the last entry, so a record ends with the 12 bytes ``a1 63 c4 08 <digest>``. Decoding
never unpickles: dtypes come from a fixed whitelist and payloads become arrays with
``np.frombuffer`` (no copy beyond msgpack's own; the arrays are read-only views).

Contract
--------
- Every malformed input to :func:`decode` (any bytes whatsoever) raises
  :class:`RecordError` ``(field, reason, detail)`` and nothing else; ``reason`` is one of
  :data:`REASONS`, a stable code the replay service counts in its rejection metrics.
- Bounds are checked before any allocation: the record size, then every shape (rank <=
  ``Limits.max_ndim``, leading dim N <= ``max_steps``, ``prod(shape) * itemsize`` summed over
  all arrays <= ``max_bytes``), computed from the headers with Python ints; a zstd payload must
  declare exactly that many bytes in its frame header and is decompressed with that bound.
  Only then is the checksum verified and the data touched (decompression, finiteness scan).
- :func:`validate` (the encoder side; :func:`encode` runs it by default) applies the same
  schema, through the same functions, and refuses exactly what :func:`decode` refuses. The
  encoder converts numpy scalars in metadata (``np.integer`` -> int, ``np.floating`` ->
  float, ``np.bool_`` -> bool) and tuples to lists; nothing else is coerced.

Schema: array names are the core keys or ``obs/<name>`` / ``extras/<name>`` with ``name``
matching ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}``; metadata types are strict (see
:class:`common.records.TrajectoryMeta`); ``time_idx >= 0``; floats finite.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import xxhash

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
    "checksum",
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_META_KEYS = frozenset(["env_id", "actor_id", "policy_version", "episode_starts", "info"])
_TOP_KEYS = frozenset(["v", "meta", "arrays", "c"])
_ENTRY_KEYS = frozenset(["d", "s", "z", "b"])
_NAME_RE = re.compile(r"(?:obs|extras)/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_CORE = frozenset(CORE_KEYS)
DIGEST_LEN = 8
_TAIL_PREFIX = b"\xa1c\xc4\x08"  # "c": bin8 of length DIGEST_LEN
_TAIL_LEN = len(_TAIL_PREFIX) + DIGEST_LEN


def record_digest(buf) -> bytes:
    """The checksum of a record's bytes before its "c" entry: xxh3-64, big-endian. (xxhash:
    ~0.1 ms per 3 MB image record here, against 0.7 ms for zlib.crc32)."""
    return xxhash.xxh3_64_digest(buf)


_EXPECTED_DTYPES = {
    "prev_action": ("float32",),
    "prev_reward": ("float32",),
    "time_idx": ("int32", "int64"),
    "terminated": ("bool",),
    "truncated": ("bool",),
}


class RecordError(ValueError):
    """A record failed to decode or validate. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str, detail: str):
        assert reason in REASONS, reason
        self.field, self.reason, self.detail = field, reason, detail
        super().__init__(f"invalid trajectory field {field!r} ({reason}): {detail}")


@dataclass(frozen=True)
class Limits:
    """Caps enforced by :func:`validate` and :func:`decode` (both, identically).

    ``max_bytes`` bounds the encoded record and, separately, the decoded array bytes
    (``sum(prod(shape) * itemsize)``); ``max_str_len`` bounds ``env_id``, info keys and info
    strings (characters); ``max_info_entries`` counts every dict key and list element of
    ``info`` at every depth; ``max_info_depth`` counts ``info`` itself as depth 1.
    """

    max_steps: int = 100_000
    max_bytes: int = 256 * 2**20
    max_ndim: int = 8
    max_arrays: int = 64
    max_str_len: int = 1024
    max_info_depth: int = 4
    max_info_entries: int = 1024


_DEFAULT_LIMITS = Limits()

_zstd_c: Any = None
_zstd_d: Any = None


def _zstd():
    global _zstd_c, _zstd_d
    if _zstd_c is None:
        import zstandard

        _zstd_c, _zstd_d = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    return _zstd_c, _zstd_d


# ---- the schema: one set of functions for both directions -------------------------------


def _int64(field: str, v: Any) -> int:
    if type(v) is not int:
        if isinstance(v, np.integer) or (isinstance(v, int) and not isinstance(v, bool)):
            v = int(v)
        else:
            raise RecordError(field, "schema", f"expected an int, got {type(v).__name__}")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise RecordError(field, "schema", f"int {v} does not fit int64")
    return v


def _str(field: str, v: Any, limits: Limits) -> str:
    if type(v) is not str:
        raise RecordError(field, "schema", f"expected a str, got {type(v).__name__}")
    if len(v) > limits.max_str_len:
        raise RecordError(field, "oversize", f"{len(v)} characters > max {limits.max_str_len}")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RecordError(field, "schema", f"not encodable as UTF-8: {e}") from e
    return v


def _info_value(path: str, v: Any, depth: int, budget: list[int], limits: Limits) -> Any:
    t = type(v)
    if v is None or t is bool:
        return v
    if t is int or isinstance(v, (int, np.integer)):
        return _int64("meta.info", v)
    if t is float or isinstance(v, np.floating):
        f = float(v)
        if not math.isfinite(f):
            raise RecordError("meta.info", "nonfinite", f"{path} is {f}")
        return f
    if t is str or isinstance(v, np.str_):
        return _str("meta.info", str(v), limits)
    if isinstance(v, np.bool_):
        return bool(v)
    if t is dict or t is list or t is tuple:
        if depth >= limits.max_info_depth:
            raise RecordError(
                "meta.info", "schema", f"{path} nests deeper than {limits.max_info_depth}"
            )
        return _info_container(path, v, depth + 1, budget, limits)
    raise RecordError("meta.info", "schema", f"{path}: unsupported type {t.__name__}")


def _info_container(path: str, v: Any, depth: int, budget: list[int], limits: Limits) -> Any:
    budget[0] -= len(v)
    if budget[0] < 0:
        raise RecordError(
            "meta.info", "oversize", f"more than {limits.max_info_entries} entries in all"
        )
    if type(v) is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise RecordError(
                    "meta.info", "schema", f"{path}: key {k!r} is a {type(k).__name__}, not str"
                )
            _str("meta.info", k, limits)
            out[k] = _info_value(f"{path}[{k!r}]", x, depth, budget, limits)
        return out
    return [_info_value(f"{path}[{i}]", x, depth, budget, limits) for i, x in enumerate(v)]


def _meta_doc(
    env_id: Any, actor_id: Any, policy_version: Any, starts: Any, info: Any, limits: Limits
) -> dict[str, Any]:
    """The metadata as plain msgpack-able values, or RecordError (strict types)."""
    if isinstance(starts, np.ndarray) and starts.ndim == 1 and starts.dtype.kind in "iu":
        starts = starts.tolist()
    if type(starts) is not list and type(starts) is not tuple:
        raise RecordError("meta.episode_starts", "schema", "must be a list of ints")
    if len(starts) > limits.max_steps:
        raise RecordError("meta.episode_starts", "oversize", f"{len(starts)} entries")
    if type(info) is not dict:
        raise RecordError("meta.info", "schema", f"must be a dict, got {type(info).__name__}")
    return {
        "env_id": _str("meta.env_id", env_id, limits),
        "actor_id": _int64("meta.actor_id", actor_id),
        "policy_version": _int64("meta.policy_version", policy_version),
        "episode_starts": [
            s if type(s) is int else _int64("meta.episode_starts", s) for s in starts
        ],
        "info": _info_container("info", info, 1, [limits.max_info_entries], limits) if info else {},
    }


_GOOD_NAMES: set[str] = set(CORE_KEYS)


def _check_name(name: Any) -> str:
    if name in _GOOD_NAMES:
        return name
    if type(name) is not str or not _NAME_RE.fullmatch(name):
        raise RecordError(
            str(name)[:80], "schema", "unknown array name (core key, obs/<name> or extras/<name>)"
        )
    if len(_GOOD_NAMES) < 4096:
        _GOOD_NAMES.add(name)
    return name


#: Layouts that passed :func:`_full_layout_check`: ((the limits it reads), ((name, dtype,
#: ndim, trailing dims...), ...)) -> bytes per timestep. A record of a known layout needs only its N-dependent checks.
_KNOWN_LAYOUTS: dict[tuple, int] = {}


def _check_layout(
    specs: dict[str, tuple[str | None, tuple[int, ...] | list[int]]],
    starts: list[int],
    limits: Limits,
    sizes: dict[str, int] | None = None,
) -> None:
    """Cross-array checks from names, dtype names and shapes only (no data touched).

    ``specs`` maps name -> (dtype name or None if not allowed, shape), in record order
    (obs, core, extras); every shape is already a sequence of non-negative ints. ``sizes``:
    each array's ``_nbytes`` if the caller computed them already (decode's headers).

    Fast path: a layout (names, dtypes, trailing dims) that passed the full check before
    (same limits) only needs what depends on N: every leading dim == N, 1 <= N <=
    max_steps (and <= max_bytes, a dim cap), the byte cap and the episode starts. Anything
    else, or any failure, goes through the full check (same errors, same order)."""
    try:
        lims = (limits.max_arrays, limits.max_steps, limits.max_ndim, limits.max_bytes)
        key = (lims, tuple([(k, d, len(s), *s[1:]) for k, (d, s) in specs.items()]))
        per_step = _KNOWN_LAYOUTS.get(key)
    except TypeError:  # unhashable parts: the full check names them
        key, per_step = None, None
    if per_step is not None:
        n = specs["prev_reward"][1][0]
        if (
            1 <= n <= limits.max_steps
            and n <= limits.max_bytes
            and n * per_step <= limits.max_bytes
            and all(s[0] == n for _, s in specs.values())
            and starts
            and starts[0] == 0
            and starts[-1] < n
            and all(b > a for a, b in zip(starts, starts[1:]))
        ):
            return
    _full_layout_check(specs, starts, limits, sizes)
    if key is not None and len(_KNOWN_LAYOUTS) < 1024:
        n = specs["prev_reward"][1][0]
        total = sum(sizes.values()) if sizes is not None else None
        if total is None:
            total = sum(_nbytes(k, d, s, limits) for k, (d, s) in specs.items())
        if total % n == 0:
            _KNOWN_LAYOUTS[key] = total // n


def _full_layout_check(
    specs: dict[str, tuple[str | None, tuple[int, ...] | list[int]]],
    starts: list[int],
    limits: Limits,
    sizes: dict[str, int] | None = None,
) -> None:
    if len(specs) > limits.max_arrays:
        raise RecordError("arrays", "oversize", f"{len(specs)} arrays > max {limits.max_arrays}")
    good = _GOOD_NAMES
    for k in specs:
        if k not in good:
            _check_name(k)
    if not _CORE <= specs.keys():
        for k in CORE_KEYS:
            if k not in specs:
                raise RecordError(k, "schema", "required array missing")
    if not any(k.startswith("obs/") for k in specs):
        raise RecordError("obs", "schema", "a trajectory needs at least one observation key")
    rs = specs["prev_reward"][1]
    n = rs[0] if len(rs) >= 1 else -1
    if n < 1:
        raise RecordError("prev_reward", "length", "needs shape (N,) with N >= 1")
    if n > limits.max_steps:
        raise RecordError("record", "oversize", f"{n} timesteps > max {limits.max_steps}")
    nbytes, max_bytes, max_ndim = 0, limits.max_bytes, limits.max_ndim
    for name, (dname, shape) in specs.items():
        if dname is None:
            raise RecordError(name, "dtype", "dtype not in the allowed set")
        nd = len(shape)
        if nd == 0 or shape[0] != n:
            raise RecordError(name, "length", f"leading dim {list(shape[:1])} != N={n}")
        if nd > max_ndim:
            raise RecordError(name, "shape", f"{nd} dims > max {max_ndim}")
        expected = _EXPECTED_DTYPES.get(name)
        if expected is not None and dname not in expected:
            raise RecordError(name, "dtype", f"dtype {dname} (expected {expected})")
        nbytes += sizes[name] if sizes is not None else _nbytes(name, dname, shape, limits)
        if nbytes > max_bytes:
            raise RecordError("record", "oversize", f"> {max_bytes} array bytes (at {name})")
    if len(specs["prev_action"][1]) != 2:
        raise RecordError("prev_action", "shape", "expected (N, action_dim)")
    for name in ("prev_reward", "time_idx", "terminated", "truncated"):
        if len(specs[name][1]) != 1:
            raise RecordError(name, "shape", "expected shape (N,)")
    if (
        not starts
        or starts[0] != 0
        or any(b <= a for a, b in zip(starts, starts[1:]))
        or starts[-1] >= n
    ):
        raise RecordError(
            "meta.episode_starts",
            "schema",
            f"must be strictly increasing, start at 0 and lie below N={n}: {starts[:16]}",
        )


def _nbytes(name: str, dname: str, shape: Any, limits: Limits) -> int:
    """prod(shape) * itemsize with Python ints, refusing early past the byte cap."""
    total = _DTYPE_OF[dname].itemsize
    if 0 in shape:
        total = 0
    for s in shape:
        if s > limits.max_bytes:  # also keeps zero-size arrays' dims numpy-sized
            raise RecordError(name, "shape", f"dimension {s} > max {limits.max_bytes}")
        total *= s
        if total > limits.max_bytes:
            raise RecordError(name, "oversize", f"> {limits.max_bytes} bytes, shape {shape}")
    return total


_F64 = np.dtype("float64")


def _all_finite(a: np.ndarray) -> bool:
    """True iff no element is NaN or inf; call under ``np.errstate(over=, invalid="ignore")``.

    A finite sum implies finite elements (NaN/inf propagate); only an overflowing sum of
    finite values needs the exact elementwise check. One pass over the data, no temporary."""
    if np.isfinite(a.sum(dtype=None if a.dtype == _F64 else _F64)):
        return True
    return bool(np.isfinite(a).all())


def _check_data(arrays: dict[str, np.ndarray]) -> None:
    """The checks that read array contents (after every shape/size check passed)."""
    with np.errstate(over="ignore", invalid="ignore"):  # once per record, not per array
        for name, a in arrays.items():
            if a.dtype.kind == "f" and a.size and not _all_finite(a):
                raise RecordError(name, "nonfinite", "contains NaN or inf")
    t = arrays["time_idx"]
    if t.size and t.min() < 0:
        raise RecordError("time_idx", "schema", "time_idx must be >= 0 (step index)")


def _traj_arrays(traj: Trajectory) -> dict[str, np.ndarray]:
    """``traj.arrays()`` after the container checks (``traj`` a Trajectory, obs/extras dicts
    with str keys)."""
    if not isinstance(traj, Trajectory):
        raise RecordError("record", "schema", f"expected a Trajectory, got {type(traj).__name__}")
    for part in ("obs", "extras"):
        d = getattr(traj, part)
        if not isinstance(d, dict):
            raise RecordError(part, "schema", f"must be a dict, got {type(d).__name__}")
        for k in d:
            if type(k) is not str:
                raise RecordError(part, "schema", f"key {k!r} is not a str")
    return traj.arrays()


def _array_specs(arrays: dict[str, Any]) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    specs: dict[str, tuple[str | None, tuple[int, ...]]] = {}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise RecordError(name, "schema", f"expected a numpy array, got {type(a).__name__}")
        specs[name] = (_NAME_OF.get(a.dtype), a.shape)
    return specs


def _validated_meta(
    traj: Trajectory, limits: Limits, arrays: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Run every check on ``traj`` (cheap ones first); the metadata ready to pack.
    ``arrays``: ``_traj_arrays(traj)`` if the caller has it already."""
    m = traj.meta
    if not isinstance(m, TrajectoryMeta):
        raise RecordError("meta", "schema", f"expected TrajectoryMeta, got {type(m).__name__}")
    meta = _meta_doc(m.env_id, m.actor_id, m.policy_version, m.episode_starts, m.info, limits)
    if arrays is None:
        arrays = _traj_arrays(traj)
    _check_layout(_array_specs(arrays), meta["episode_starts"], limits)
    _check_data(arrays)
    return meta


def validate(traj: Trajectory, limits: Limits | None = None) -> None:
    """Raise :class:`RecordError` (naming the field) unless ``traj`` is well-formed.

    Refuses exactly what :func:`decode` would refuse of ``encode(traj)`` (same schema)."""
    _validated_meta(traj, limits or _DEFAULT_LIMITS)


# ---- encode -----------------------------------------------------------------------------


def _encode_array(a: np.ndarray, compression: str, min_bytes: int) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    raw = a.data if a.nbytes else b""
    z = compression if compression and a.nbytes >= min_bytes else ""
    payload = _zstd()[0].compress(raw) if z == "zstd" else raw
    if z and len(payload) >= a.nbytes:  # incompressible: store raw
        z, payload = "", raw
    return {"d": _NAME_OF.get(a.dtype) or a.dtype.name, "s": list(a.shape), "z": z, "b": payload}


def encode(
    traj: Trajectory,
    compression: str = "",
    compress_min_bytes: int = 4096,
    check: bool = True,
    limits: Limits | None = None,
) -> bytes:
    """Serialise a trajectory. ``compression``: ``""`` or ``"zstd"`` (arrays >= min bytes).

    Raises :class:`RecordError` for anything :func:`decode` would refuse (``check=False``
    skips the array checks, for tests and benchmarks; metadata is always checked, since it
    must be packable)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    limits = limits or _DEFAULT_LIMITS
    if check:
        arrays = _traj_arrays(traj)
        meta = _validated_meta(traj, limits, arrays)
    else:
        arrays = traj.arrays()
        m = traj.meta
        meta = _meta_doc(m.env_id, m.actor_id, m.policy_version, m.episode_starts, m.info, limits)
    entries = {k: _encode_array(v, compression, compress_min_bytes) for k, v in arrays.items()}
    if sum(_size(e["b"]) for e in entries.values()) >= _PIECES_MIN_BYTES:
        return _pack_sealed_pieces(meta, entries)
    return pack_sealed({"v": FORMAT_VERSION, "meta": meta, "arrays": entries})


#: Records with at least this many payload bytes are packed by :func:`_pack_sealed_pieces`.
_PIECES_MIN_BYTES = 256 * 1024
_PIECE_MIN = 4096  # payloads below this go through the packer's buffer


def _size(b: bytes | memoryview) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


def _bin_header(n: int) -> bytes:
    """msgpack's bin8/16/32 header for ``n`` bytes (what ``Packer`` writes for them)."""
    if n < 256:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 65536:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _pack_sealed_pieces(meta: dict[str, Any], entries: dict[str, dict[str, Any]]) -> bytes:
    """The bytes ``pack_sealed({"v", "meta", "arrays": entries})`` gives (byte for byte),
    for big records: large payloads are hashed where they lie and copied once (the join),
    instead of into the packer's growing buffer, hashed there and copied out again."""
    p = msgpack.Packer(autoreset=False, use_bin_type=True)
    p.pack_map_header(4)
    p.pack("v")
    p.pack(FORMAT_VERSION)
    p.pack("meta")
    p.pack(meta)
    p.pack("arrays")
    p.pack_map_header(len(entries))
    pieces: list[Any] = []
    h = xxhash.xxh3_64()
    for k, e in entries.items():
        p.pack(k)
        p.pack_map_header(4)
        for f in ("d", "s", "z"):
            p.pack(f)
            p.pack(e[f])
        p.pack("b")
        b = e["b"]
        n = _size(b)
        if n < _PIECE_MIN:
            p.pack(b)
            continue
        head = p.bytes() + _bin_header(n)
        p.reset()
        h.update(head)
        h.update(b)
        pieces += (head, b)
    tail = p.bytes()
    h.update(tail)
    pieces += (tail, _TAIL_PREFIX, h.digest())
    return b"".join(pieces)


def pack_sealed(entries: dict[str, Any]) -> bytes:
    """A msgpack map of ``entries`` in order, then ``"c"``: the :func:`record_digest` of
    every byte before it (how every record ends)."""
    p = msgpack.Packer(autoreset=False, use_bin_type=True)
    p.pack_map_header(len(entries) + 1)
    for k, v in entries.items():
        p.pack(k)
        p.pack(v)
    with p.getbuffer() as mv:
        digest = record_digest(mv)
    p.pack("c")
    p.pack(digest)
    return p.bytes()


# ---- decode -----------------------------------------------------------------------------


def _dims_ok(shape: list) -> bool:
    for s in shape:  # (a loop: all() over a generator costs more than the checks)
        if type(s) is not int or s < 0:
            return False
    return True


def _array_header(name: str, d: Any, limits: Limits) -> tuple[str, list[int], str, bytes, int]:
    """(dtype name, shape, compression, payload, decoded bytes) of one entry; sizes checked."""
    if type(d) is not dict or d.keys() != _ENTRY_KEYS:
        raise RecordError(name, "schema", "array entry must be a map with keys d, s, z, b")
    dtype, shape, z, payload = d["d"], d["s"], d["z"], d["b"]
    if type(dtype) is not str or dtype not in ALLOWED_DTYPES:
        raise RecordError(name, "dtype", f"dtype {str(dtype)[:40]!r} not in the allowed set")
    if type(shape) is not list or not _dims_ok(shape):
        raise RecordError(
            name, "shape", f"shape must be a list of non-negative ints: {str(shape)[:80]}"
        )
    if len(shape) > limits.max_ndim:
        raise RecordError(name, "shape", f"{len(shape)} dims > max {limits.max_ndim}")
    if type(payload) is not bytes:
        raise RecordError(name, "schema", "payload must be msgpack bin")
    expected = _nbytes(name, dtype, shape, limits)
    if z == "":
        if len(payload) != expected:
            raise RecordError(
                name,
                "truncated",
                f"{len(payload)} payload bytes for shape {shape} {dtype} (expected {expected})",
            )
    elif z == "zstd":
        _zstd()
        try:
            size = _zstd_frame_size(payload)
        except Exception as e:  # zstandard.ZstdError
            raise RecordError(name, "compression", f"not a zstd frame: {e}") from e
        if size < 0:
            raise RecordError(name, "compression", "zstd frame does not declare its size")
        if size != expected:
            raise RecordError(
                name,
                "truncated",
                f"zstd frame holds {size} bytes for shape {shape} {dtype} (expected {expected})",
            )
    else:
        raise RecordError(name, "compression", f"unknown compression {str(z)[:40]!r}")
    return dtype, shape, z, payload, expected


def _zstd_frame_size(payload: bytes) -> int:
    import zstandard

    return zstandard.frame_content_size(payload)


def _decompress(name: str, payload: bytes, expected: int) -> bytes:
    try:
        out = _zstd_d.decompress(payload, max_output_size=expected, allow_extra_data=False)
    except Exception as e:  # zstandard.ZstdError
        raise RecordError(name, "compression", f"zstd payload does not decode: {e}") from e
    if len(out) != expected:
        raise RecordError(name, "truncated", f"zstd gave {len(out)} bytes, expected {expected}")
    return out


#: Name sequences already in :func:`_arrays_order` (what every encoded record holds).
_CANONICAL_ORDERS: set[tuple[str, ...]] = set()


def _arrays_order(names: Any) -> list[str]:
    """``names`` (checked array names) in the order of :meth:`Trajectory.arrays`."""
    return (
        [k for k in names if k.startswith("obs/")]
        + [k for k in CORE_KEYS if k in names]
        + [k for k in names if k.startswith("extras/")]
    )


class _TooManyObjects(Exception):
    pass


def _unpack(mv: memoryview, limits: Limits) -> Any:
    """msgpack.unpackb with every container and string bounded by ``limits``; the hooks
    stop the parse once more list/map entries were built than a valid record can hold."""
    budget = [limits.max_steps + limits.max_info_entries + 16 * limits.max_arrays + 64]

    def hook(x: Any) -> Any:
        budget[0] -= len(x) + 1
        if budget[0] < 0:
            raise _TooManyObjects
        return x

    # Every container and every entry takes at least one byte of the input, so the hooks'
    # count can only exceed the budget on an input longer than the budget: shorter ones
    # (most records) parse without the per-container callbacks.
    hooks = {"list_hook": hook, "object_hook": hook} if len(mv) > budget[0] else {}
    try:
        return msgpack.unpackb(
            mv,
            raw=False,
            strict_map_key=False,
            max_bin_len=limits.max_bytes,
            max_str_len=8 * limits.max_str_len + 64,  # loose backstops: our own checks
            max_array_len=max(limits.max_steps, 4 * limits.max_info_entries, 64),  # give
            max_map_len=max(4 * limits.max_info_entries, 4 * limits.max_arrays, 64),  # reasons
            max_ext_len=0,
            **hooks,
        )
    except _TooManyObjects:
        raise RecordError(
            "record", "oversize", "more msgpack entries than a record holds"
        ) from None
    except Exception as e:  # msgpack: ValueError, TypeError (unhashable key), Unpack*, ...
        if isinstance(e, ValueError) and "exceeds max" in str(e):
            raise RecordError("record", "oversize", f"msgpack bound: {e}") from e
        raise RecordError("record", "truncated", f"not a complete msgpack record: {e!r}") from e


def decode(buf: bytes | memoryview, limits: Limits | None = None, check: bool = True) -> Trajectory:
    """Parse and check an encoded trajectory; any problem raises :class:`RecordError` only.

    ``check=False`` skips the content scans (finiteness, ``time_idx >= 0``); every
    structural, size and checksum check always runs."""
    limits = limits or _DEFAULT_LIMITS
    try:
        mv = memoryview(buf).cast("B")
    except (TypeError, ValueError) as e:
        raise RecordError("record", "schema", f"expected bytes, got {type(buf).__name__}") from e
    if len(mv) > limits.max_bytes:
        raise RecordError("record", "oversize", f"{len(mv)} bytes > max {limits.max_bytes}")
    # The digest is computed now, while the bytes are hot in cache (unpacking copies every
    # payload), and compared where the contract puts the checksum check: after every
    # structural and size check (so the reasons are the same; hashing allocates nothing).
    digest = record_digest(mv[:-_TAIL_LEN]) if len(mv) >= _TAIL_LEN else None
    doc = _unpack(mv, limits)
    if type(doc) is not dict:
        raise RecordError("record", "schema", "top level must be a map")
    v = doc.get("v")
    if type(v) is not int or v != FORMAT_VERSION:
        raise RecordError(
            "v", "version", f"format version {str(v)[:20]}, this build reads {FORMAT_VERSION}"
        )
    if doc.keys() != _TOP_KEYS:
        if "c" not in doc and doc.keys() <= _TOP_KEYS:
            raise RecordError("c", "checksum", "record carries no checksum")
        raise RecordError(
            "record", "schema", f"top-level keys {sorted(map(str, doc))[:8]} != {sorted(_TOP_KEYS)}"
        )
    meta_d, arrays_d = doc["meta"], doc["arrays"]
    if type(meta_d) is not dict:
        raise RecordError("meta", "schema", "missing or not a map")
    if type(arrays_d) is not dict:
        raise RecordError("arrays", "schema", "missing or not a map")
    if meta_d.keys() != _META_KEYS:
        raise RecordError("meta", "schema", f"keys must be {sorted(_META_KEYS)}")
    meta = _meta_doc(
        meta_d["env_id"],
        meta_d["actor_id"],
        meta_d["policy_version"],
        meta_d["episode_starts"],
        meta_d["info"],
        limits,
    )
    if len(arrays_d) > limits.max_arrays:
        raise RecordError("arrays", "oversize", f"{len(arrays_d)} arrays > max {limits.max_arrays}")
    headers = {}
    good = _GOOD_NAMES
    for k, d in arrays_d.items():
        headers[k if k in good else _check_name(k)] = _array_header(k, d, limits)
    # record order of Trajectory.arrays(): obs, core, extras (what encode writes: then the
    # record's own order already is that one)
    names = tuple(headers)
    if names not in _CANONICAL_ORDERS:
        order = _arrays_order(headers)
        if list(names) != order:
            headers = {k: headers[k] for k in order}
        elif len(_CANONICAL_ORDERS) < 1024:
            _CANONICAL_ORDERS.add(names)
    _check_layout(
        {k: (h[0], h[1]) for k, h in headers.items()},
        meta["episode_starts"],
        limits,
        {k: h[4] for k, h in headers.items()},
    )
    c = doc["c"]
    if (
        type(c) is not bytes
        or len(c) != DIGEST_LEN
        or mv[-_TAIL_LEN:-DIGEST_LEN] != _TAIL_PREFIX
        or digest != c
    ):
        raise RecordError("c", "checksum", "record bytes do not match their checksum")
    arrays = {}
    for k, (dtype, shape, z, payload, expected) in headers.items():
        if z == "zstd":
            payload = _decompress(k, payload, expected)
        arrays[k] = np.frombuffer(payload, dtype=_DTYPE_OF[dtype]).reshape(shape)
    if check:
        _check_data(arrays)
    return Trajectory.from_arrays(
        arrays,
        TrajectoryMeta(
            env_id=meta["env_id"],
            actor_id=meta["actor_id"],
            policy_version=meta["policy_version"],
            episode_starts=meta["episode_starts"],
            info=meta["info"],
        ),
    )
