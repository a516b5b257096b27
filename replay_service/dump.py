"""Replay dumps: a replay namespace's trajectories on disk, as the records the service stores.

A dump is a directory::

    <dump>/manifest.json      {"format": "amago-replay-dump", "version": 1, "records",
                               "timesteps", "bytes", "layout", "spec" (or null), "source",
                               "created", "shards": [{"file", "records", "bytes"}, ...]}
    <dump>/shard-00000.amr    b"AMGRDMP1", then frames: <u64 little-endian length> <record>
    ...

Each record is the exact encoded bytes of ``common.codec`` (format version, bounds, xxh3
checksum): nothing is re-serialised, and reading goes through :func:`common.codec.decode`.
The manifest is written last (atomically), so an interrupted dump has none and is refused.
``layout`` is what every record of the dump looks like (observation keys with shapes and
dtypes, action size, extras); ``spec`` the env spec when the writer knew it.

Reading is for untrusted files: the manifest is size-bounded and strictly typed (a bad one is
:class:`DumpError`, one line), shard names must be ``shard-NNNNN.amr`` inside the dump, every
frame length is checked against the record cap before anything is read, and every record is
decoded with the caller's :class:`~common.codec.Limits`. A record that fails is skipped and
counted by reason (the codec's reasons, ``layout`` for a record shaped unlike the dump,
``missing``/``truncated`` for absent or cut shards); nothing a file holds can crash the reader.

Written by ``python -m deploy.tools.replay_dump`` (a live or finished run's replay), by
``run.dump_replay_on_exit`` and by :func:`write_dump` (any trajectories, e.g. scripted data);
read by the prefill partition (``replay_service.prefill``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from common.codec import Limits, RecordError, decode, encode
from common.records import Trajectory
from common.spec import ArraySpec, EnvSpec
from common.spec import spec_from_dict as common_spec_from_dict
from replay_service.lua import Keys

DUMP_FORMAT = "amago-replay-dump"
DUMP_VERSION = 1
MANIFEST = "manifest.json"
#: Where a run directory keeps its dump (``run.dump_replay_on_exit``).
RUN_DUMP_DIR = "replay_dump"
SHARD_MAGIC = b"AMGRDMP1"
_FRAME = struct.Struct("<Q")
_SHARD_RE = re.compile(r"shard-\d{5}\.amr")
MAX_MANIFEST_BYTES = 4 * 2**20
_MAX_SHARDS = 100_000
#: Bytes per shard before the writer starts the next one.
SHARD_BYTES = 256 * 2**20


class DumpError(ValueError):
    """A dump that cannot be used at all (no or malformed manifest); one-line message."""


# -- layout and spec ----------------------------------------------------------------------
def _arrays_doc(items: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    return {k: {"shape": [int(x) for x in s], "dtype": d} for k, (s, d) in sorted(items.items())}


def trajectory_layout(t: Trajectory) -> dict[str, Any]:
    """What a record looks like (JSON-ready): obs keys/shapes/dtypes, action size, extras."""
    return {
        "obs": _arrays_doc({k: (v.shape[1:], v.dtype.name) for k, v in t.obs.items()}),
        "action_dim": int(t.prev_action.shape[1]) if t.prev_action.ndim == 2 else -1,
        "extras": _arrays_doc({k: (v.shape[1:], v.dtype.name) for k, v in t.extras.items()}),
    }


def spec_layout(spec: EnvSpec) -> dict[str, Any]:
    """The layout every record of an env with ``spec`` has."""

    def items(d: Mapping[str, ArraySpec]) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(a.shape), np.dtype(a.dtype).name) for k, a in d.items()}

    return {
        "obs": _arrays_doc(items(spec.obs)),
        "action_dim": int(spec.action_dim),
        "extras": _arrays_doc(items(spec.extras)),
    }


def spec_to_dict(spec: EnvSpec) -> dict[str, Any]:
    """JSON-ready spec (the layout of ``learner.checkpoint.spec_to_dict``)."""
    d = dataclasses.asdict(spec)
    return json.loads(json.dumps(d))  # tuples -> lists


def spec_from_dict(d: Any) -> EnvSpec:
    """Inverse of :func:`spec_to_dict`; ``DumpError`` for anything malformed."""
    try:
        return common_spec_from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DumpError(f"malformed spec in manifest: {e!r}") from None


def layout_str(layout: Mapping[str, Any]) -> str:
    obs = ", ".join(f"{k}: {v['shape']} {v['dtype']}" for k, v in layout["obs"].items())
    s = f"obs {{{obs}}}, action_dim {layout['action_dim']}"
    if layout.get("extras"):
        ex = ", ".join(f"{k}: {v['shape']} {v['dtype']}" for k, v in layout["extras"].items())
        s += f", extras {{{ex}}}"
    return s


def spec_problems(manifest: Manifest, spec: EnvSpec) -> list[str]:
    """How a dump's data differs from what an env with ``spec`` produces (empty: usable)."""
    out = []
    want = spec_layout(spec)
    if manifest.layout != want:
        out.append(f"records have {layout_str(manifest.layout)}, the env {layout_str(want)}")
    if manifest.spec is not None and manifest.spec.discrete != spec.discrete:
        kind = lambda d: "discrete" if d else "continuous"  # noqa: E731
        out.append(f"actions are {kind(manifest.spec.discrete)}, the env's {kind(spec.discrete)}")
    return out


# -- writing ------------------------------------------------------------------------------
@dataclass
class DumpSummary:
    """What a dump holds (its manifest), or what a reader got out of one."""

    path: str
    records: int = 0
    timesteps: int = 0
    bytes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # skipped records by reason

    def count(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n


class DumpWriter:
    """Writes encoded records into a new dump directory; :meth:`close` writes the manifest.

    Every record must share one layout (the first record's, or ``spec``'s when given):
    :meth:`add` returns False (and counts ``layout``) for one that does not.
    """

    def __init__(
        self,
        path: str | Path,
        spec: EnvSpec | None = None,
        source: Mapping[str, Any] | None = None,
        shard_bytes: int = SHARD_BYTES,
    ):
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise DumpError(f"{self.path}: exists and is not an empty directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.source = dict(source or {})
        self.layout = spec_layout(spec) if spec is not None else None
        self.shard_bytes = shard_bytes
        self.summary = DumpSummary(str(self.path))
        self._shards: list[dict[str, Any]] = []
        self._file = None

    def add(self, blob: bytes | memoryview, traj: Trajectory) -> bool:
        """Append one encoded record (``traj`` is its decoded form, for the bookkeeping)."""
        layout = trajectory_layout(traj)
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            self.summary.count("layout")
            return False
        if self._file is None or self._shards[-1]["bytes"] >= self.shard_bytes:
            self._next_shard()
        self._file.write(_FRAME.pack(len(blob)))
        self._file.write(blob)
        shard = self._shards[-1]
        shard["records"] += 1
        shard["bytes"] += len(blob)
        s = self.summary
        s.records, s.timesteps, s.bytes = (
            s.records + 1,
            s.timesteps + len(traj),
            s.bytes + len(blob),
        )
        return True

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"shard-{len(self._shards):05d}.amr"
        self._file = (self.path / name).open("wb")
        self._file.write(SHARD_MAGIC)
        self._shards.append({"file": name, "records": 0, "bytes": 0})

    def close(self) -> DumpSummary:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        s = self.summary
        doc = {
            "format": DUMP_FORMAT,
            "version": DUMP_VERSION,
            "records": s.records,
            "timesteps": s.timesteps,
            "bytes": s.bytes,
            "layout": self.layout,
            "spec": spec_to_dict(self.spec) if self.spec is not None else None,
            "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rejected": s.rejected,
            "shards": self._shards,
        }
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.path / MANIFEST)
        return s

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._file is not None:
            self._file.close()


def write_dump(
    trajs: Iterable[Trajectory],
    path: str | Path,
    spec: EnvSpec | None = None,
    compression: str = "",
    source: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> DumpSummary:
    """Encode (validating: ``RecordError`` for a malformed one) and dump ``trajs``."""
    with DumpWriter(path, spec, source) as w:
        for t in trajs:
            w.add(encode(t, compression, limits=limits), t)
    return w.summary


def dump_namespace(
    client: redis.Redis,
    namespace: str,
    path: str | Path,
    spec: EnvSpec | None = None,
    limits: Limits | None = None,
    source: Mapping[str, Any] | None = None,
    chunk: int = 256,
) -> DumpSummary:
    """Export the trajectories a replay namespace holds now (oldest first) into a new dump.

    Safe against a live run: records evicted while the export runs are skipped; every blob
    is decoded (validated) before it is written, corrupt ones are skipped and counted."""
    keys = Keys(namespace)
    ids = sorted(int(k) for k in client.hkeys(keys.info))
    src = {"namespace": namespace, **(source or {})}
    with DumpWriter(path, spec, src) as w:
        for i in range(0, len(ids), chunk):
            part = ids[i : i + chunk]
            for blob in client.mget([keys.blob(j) for j in part]):
                if blob is None:  # evicted since the listing
                    continue
                try:
                    traj = decode(blob, limits)
                except RecordError as e:
                    w.summary.count(e.reason)
                    continue
                w.add(blob, traj)
    return w.summary


# -- reading ------------------------------------------------------------------------------
@dataclass
class Manifest:
    """A dump's manifest, checked."""

    path: Path  # the dump directory
    records: int
    timesteps: int
    bytes: int
    layout: dict[str, Any]
    spec: EnvSpec | None
    shards: list[str]
    source: dict[str, Any]


def resolve_dump(path: str | Path) -> Path:
    """The dump directory ``path`` names: a dump directory, its manifest, or a run directory
    holding one (``replay_dump/``, what ``run.dump_replay_on_exit`` writes)."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        return p.parent
    if (p / MANIFEST).is_file():
        return p
    if (p / RUN_DUMP_DIR / MANIFEST).is_file():
        return p / RUN_DUMP_DIR
    if not p.exists():
        raise DumpError(f"{path}: no such file or directory")
    raise DumpError(
        f"{path}: not a replay dump (no {MANIFEST}, nor {RUN_DUMP_DIR}/{MANIFEST} of a run "
        "directory; an interrupted dump has none)"
    )


def _int(doc: Mapping[str, Any], key: str) -> int:
    v = doc.get(key)
    if type(v) is not int or v < 0:
        raise DumpError(f"manifest field {key!r} must be an integer >= 0, got {str(v)[:40]}")
    return v


def _layout_doc(v: Any) -> dict[str, Any]:
    def arrays(m: Any, what: str) -> dict[str, Any]:
        if not isinstance(m, dict):
            raise DumpError(f"manifest layout.{what} must be a map")
        out = {}
        for k, a in m.items():
            if (
                not isinstance(a, dict)
                or not isinstance(a.get("shape"), list)
                or not all(type(x) is int and x >= 0 for x in a["shape"])
                or not isinstance(a.get("dtype"), str)
            ):
                raise DumpError(f"manifest layout.{what}.{str(k)[:40]} malformed")
            out[str(k)] = {"shape": list(a["shape"]), "dtype": a["dtype"]}
        return dict(sorted(out.items()))

    if not isinstance(v, dict) or type(v.get("action_dim")) is not int:
        raise DumpError("manifest layout missing or malformed")
    return {
        "obs": arrays(v.get("obs"), "obs"),
        "action_dim": v["action_dim"],
        "extras": arrays(v.get("extras", {}), "extras"),
    }


def read_manifest(path: str | Path) -> Manifest:
    """The checked manifest of the dump ``path`` names (see :func:`resolve_dump`)."""
    d = resolve_dump(path)
    mpath = d / MANIFEST
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise DumpError(f"{mpath}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(mpath.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise DumpError(f"{mpath}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != DUMP_FORMAT:
        raise DumpError(f"{mpath}: not an {DUMP_FORMAT} manifest")
    if doc.get("version") != DUMP_VERSION:
        raise DumpError(
            f"{mpath}: dump format version {str(doc.get('version'))[:20]}, this build reads "
            f"{DUMP_VERSION}"
        )
    shards = doc.get("shards")
    if not isinstance(shards, list) or len(shards) > _MAX_SHARDS:
        raise DumpError(f"{mpath}: shards must be a list")
    names = []
    for s in shards:
        name = s.get("file") if isinstance(s, dict) else None
        if not isinstance(name, str) or not _SHARD_RE.fullmatch(name):
            raise DumpError(f"{mpath}: shard file names must be shard-NNNNN.amr")
        names.append(name)
    spec_doc = doc.get("spec")
    try:
        return Manifest(
            path=d,
            records=_int(doc, "records"),
            timesteps=_int(doc, "timesteps"),
            bytes=_int(doc, "bytes"),
            layout=_layout_doc(doc.get("layout")),
            spec=None if spec_doc is None else spec_from_dict(spec_doc),
            shards=names,
            source=doc.get("source") if isinstance(doc.get("source"), dict) else {},
        )
    except DumpError as e:
        raise DumpError(f"{mpath}: {e}") from None


def iter_records(
    manifest: Manifest,
    limits: Limits,
    max_record_bytes: int,
    summary: DumpSummary,
) -> Iterator[tuple[bytes, Trajectory]]:
    """The usable records of a dump, decoded with ``limits``, as (encoded bytes, trajectory).

    Records that fail (codec reasons), are shaped unlike the manifest's layout (``layout``),
    or sit in absent (``missing``) or cut (``truncated``) shards are counted in ``summary``
    and skipped. A frame longer than ``max_record_bytes`` ends its shard (``oversize``): past
    it the file cannot be trusted to resynchronise."""
    for name in manifest.shards:
        path = manifest.path / name
        try:
            f = path.open("rb")
        except OSError:
            summary.count("missing")
            continue
        with f:
            if f.read(len(SHARD_MAGIC)) != SHARD_MAGIC:
                summary.count("schema")
                continue
            while True:
                head = f.read(_FRAME.size)
                if not head:
                    break
                if len(head) < _FRAME.size:
                    summary.count("truncated")
                    break
                (n,) = _FRAME.unpack(head)
                if n > max_record_bytes:
                    summary.count("oversize")
                    break
                blob = f.read(n)
                if len(blob) < n:
                    summary.count("truncated")
                    break
                try:
                    traj = decode(blob, limits)
                except RecordError as e:
                    summary.count(e.reason)
                    continue
                if trajectory_layout(traj) != manifest.layout:
                    summary.count("layout")
                    continue
                summary.records += 1
                summary.timesteps += len(traj)
                summary.bytes += n
                yield blob, traj


def read_dump(
    path: str | Path, limits: Limits | None = None, max_record_bytes: int = 256 * 2**20
) -> tuple[list[Trajectory], DumpSummary]:
    """Every usable trajectory of a dump, and what was read and skipped (small dumps, tests)."""
    m = read_manifest(path)
    summary = DumpSummary(str(m.path))
    trajs = [t for _, t in iter_records(m, limits or Limits(), max_record_bytes, summary)]
    return trajs, summary
