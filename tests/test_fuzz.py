"""Fuzzing the codec and the replay service with hostile records (bounded: ~30 s, seeded).

(a) ``common.codec.decode``: hypothesis properties (any bytes, any structural edit of a valid
record; validate and decode agree) and mutational fuzzing from ``benchmarks.fuzz_campaign``;
(b) ``ReplayStore.insert`` of bytes and of Trajectory objects on fakeredis: only RecordError
escapes, every rejection is counted, the store stays consistent;
(c) the Sampler over corrupted blobs written straight into Redis: it never raises.
Memory stays bounded throughout (zstd bombs included).
"""

from __future__ import annotations

import resource
import tracemalloc
import uuid

import fakeredis
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from benchmarks.fuzz_campaign import (
    FUZZ_LIMITS,
    Tally,
    base_records,
    bomb,
    check_one,
    make_trajectory,
    mutate,
    mutate_structure,
    seal,
)
from common.codec import RecordError, decode, encode, validate
from common.records import Trajectory, TrajectoryMeta
from replay_service import RedisConfig, ReplayConfig, ReplayStore, Sampler, SampleShape
from replay_service.lua import parse_info

BASES = base_records()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- (a) decode ------------------------------------------------------------------------


@seed(1)
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_raises_only_record_error(buf: bytes) -> None:
    try:
        decode(buf, FUZZ_LIMITS)
    except RecordError:
        pass


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=12,
)


def _paths(x, path=()):
    out = [path]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, (*path, k))
    elif isinstance(x, list) and len(x) <= 8:
        for i, v in enumerate(x):
            out += _paths(v, (*path, i))
    return out


@seed(2)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), data=st.data(), value=_values, sealed=st.booleans())
def test_structural_edits_raise_only_record_error(base, data, value, sealed) -> None:
    doc = msgpack.unpackb(base, raw=False)
    paths = _paths(doc)
    path = paths[data.draw(st.integers(0, len(paths) - 1))]
    if path:
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        parent[path[-1]] = value
    else:
        doc = value
    try:
        buf = seal(doc) if sealed else msgpack.packb(doc, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return  # msgpack cannot pack it (ints past 64 bits)
    tally = Tally()
    check_one(buf, FUZZ_LIMITS, tally)  # accepted ones must also validate and re-encode
    assert not tally.crashes, tally.tracebacks


@st.composite
def maybe_bad_trajectories(draw):
    """Trajectories that are sometimes invalid in the ways a buggy actor could produce."""
    n = draw(st.integers(1, 8))
    dt = draw(st.sampled_from(["float32", "uint8", "int64", "float16", "bool"]))
    obs = np.zeros((draw(st.sampled_from([n, n, n - 1, n + 1])), 2), dt)
    if dt.startswith("float") and obs.size and draw(st.booleans()):
        obs[0, 0] = draw(st.sampled_from([np.nan, np.inf, 1.0]))
    name = draw(st.sampled_from(["o", "o.k-1", "../x", "a/b", "", "x\n", "_" * 64, "_" * 65]))
    time_idx = np.arange(n, dtype=draw(st.sampled_from(["int32", "int64", "float32"])))
    time_idx -= draw(st.sampled_from([0, 0, 1]))
    info = draw(st.sampled_from([{}, {"k": 1}, {1: 2}, {"k": np.int64(3)}, {"k": [[[[1]]]]}]))
    return Trajectory(
        obs={name: obs},
        prev_action=np.zeros(
            (n, draw(st.sampled_from([1, 2]))), draw(st.sampled_from(["float32", "float64"]))
        ),
        prev_reward=np.zeros(n, np.float32),
        time_idx=time_idx,
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        meta=TrajectoryMeta(
            env_id=draw(st.sampled_from(["e", 7, "\ud800"])),
            actor_id=draw(st.sampled_from([0, 2**63, True, "7", np.int32(4)])),
            episode_starts=draw(st.sampled_from([[0], [0, n], [1], []])),
            info=info,
        ),
    )


@seed(3)
@settings(max_examples=500, deadline=None)
@given(traj=maybe_bad_trajectories())
def test_validate_refuses_exactly_what_decode_refuses(traj: Trajectory) -> None:
    try:
        validate(traj, FUZZ_LIMITS)
        want = None
    except RecordError as e:
        want = (e.field, e.reason)
    try:
        buf = encode(traj, check=False)  # metadata is always checked (must be packable)
    except RecordError as e:
        assert want == (e.field, e.reason)
        return
    try:
        decode(buf, FUZZ_LIMITS)
        got = None
    except RecordError as e:
        got = (e.field, e.reason)
    assert got == want


def test_mutational_fuzzing_of_decode() -> None:
    rss0 = _rss_mb()
    tally = Tally()
    rng = np.random.default_rng(1234)
    for _ in range(50000):
        kind, buf = mutate(rng, BASES)
        tally.kinds[kind] += 1
        check_one(buf, FUZZ_LIMITS, tally)
    assert not tally.crashes, "\n".join(tally.tracebacks)
    assert sum(tally.rejected.values()) + tally.accepted == tally.tried == 50000
    assert {"checksum", "truncated", "schema"} <= set(tally.rejected)  # it reached them
    assert _rss_mb() - rss0 < 200


def test_decoding_bombs_stays_under_a_memory_cap() -> None:
    rng = np.random.default_rng(5)
    bombs = [bomb(rng, BASES[i % len(BASES)]) for i in range(24)]
    tracemalloc.start()
    try:
        for b in bombs:
            with pytest.raises(RecordError):
                decode(b, FUZZ_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"decoding bombs peaked at {peak / 2**20:.0f} MiB"


# ---- (b) ReplayStore.insert ------------------------------------------------------------


def _cfg(**kw) -> ReplayConfig:
    ns = f"fz{uuid.uuid4().hex[:10]}"
    return ReplayConfig(
        redis=RedisConfig(namespace=ns),
        max_traj_steps=FUZZ_LIMITS.max_steps,
        max_record_bytes=FUZZ_LIMITS.max_bytes,
        **kw,
    )


@pytest.fixture
def fake_client(fakeredis_tcp):
    c = fakeredis.FakeRedis(server=fakeredis_tcp.fake_server)
    yield c
    c.close()


def _assert_store_consistent(client, store: ReplayStore) -> dict:
    keys = store.keys
    blob_ids = sorted(
        int(k.decode().rsplit(":", 1)[1]) for k in client.scan_iter(match=keys.blob_prefix + "*")
    )
    info = {int(k): parse_info(v) for k, v in client.hgetall(keys.info).items()}
    s = store.stats()
    assert blob_ids == sorted(info)
    assert s.trajectories == len(blob_ids)
    assert s.timesteps == sum(n for n, _, _ in info.values())
    assert s.bytes == sum(b for _, b, _ in info.values())
    for i, (n, nbytes, _) in info.items():
        blob = client.get(keys.blob(i))
        assert len(blob) == nbytes and len(decode(blob, FUZZ_LIMITS)) == n
    return info


def test_store_insert_of_mutated_records(fake_client) -> None:
    store = ReplayStore(fake_client, _cfg())
    rng = np.random.default_rng(77)
    rejected: dict[str, int] = {}
    accepted = 0
    try:
        for i in range(5000):
            kind, buf = mutate(rng, BASES)
            record = memoryview(buf) if i % 5 == 0 else buf
            try:
                store.insert(record)
                accepted += 1
            except RecordError as e:
                rejected[e.reason] = rejected.get(e.reason, 0) + 1
        # Trajectory objects: hostile metadata and arrays, through validate + encode
        for i in range(400):
            t = make_trajectory(int(rng.integers(1, 12)), i)
            edit = i % 8
            if edit == 0:
                t.meta.policy_version = 2**63
            elif edit == 1:
                t.meta.info = {1: "int key"}
            elif edit == 2:
                t.meta.info = {"x": np.float32(2.5), "n": np.int64(1)}  # converted: accepted
            elif edit == 3:
                t.obs = {"../../etc": t.obs["observation"]}
            elif edit == 4:
                t.time_idx = t.time_idx - 1
            elif edit == 5:
                t.meta.actor_id = "7"
            elif edit == 6:
                t.prev_reward = t.prev_reward.copy()
                t.prev_reward[-1] = np.nan
            try:
                store.insert(t)
                accepted += 1
            except RecordError as e:
                rejected[e.reason] = rejected.get(e.reason, 0) + 1
        s = store.stats()
        assert s.rejected == rejected, "every rejection is counted by reason"
        assert s.inserted_trajectories == accepted
        info = _assert_store_consistent(fake_client, store)
        assert len(info) == accepted - s.evicted_trajectories
        assert rejected.get("checksum", 0) > 0 and accepted > 0
    finally:
        store.clear()


# ---- (c) Sampler over corrupted blobs ---------------------------------------------------


def test_sampler_survives_corrupted_blobs(fake_client) -> None:
    cfg = _cfg()
    store = ReplayStore(fake_client, cfg)
    rng = np.random.default_rng(99)
    try:
        n_traj = 40
        for tag in range(n_traj):
            store.insert(make_trajectory(8, tag))
        good = [fake_client.get(store.keys.blob(i)) for i in range(n_traj)]
        corrupted = set()
        for i in range(0, n_traj, 2):  # corrupt half of them, straight in Redis
            blob = good[i]
            kind = i % 6
            if kind == 0:
                b = bytearray(blob)
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
                bad = bytes(b)
            elif kind == 1:
                bad = blob[: int(rng.integers(len(blob)))]
            elif kind == 2:
                bad = seal(mutate_structure(rng, blob))
            elif kind == 3:
                bad = bomb(rng, blob)
            elif kind == 4:
                doc = msgpack.unpackb(blob, raw=False)
                doc["meta"]["policy_version"] = 2**64 - 1
                bad = seal(doc)
            else:
                doc = msgpack.unpackb(blob, raw=False)
                doc["arrays"]["prev_reward"]["d"] = ["float32"]
                bad = seal(doc)
            try:
                decode(bad, FUZZ_LIMITS)
                continue  # still a valid record (rare): leave it be
            except RecordError:
                pass
            fake_client.set(store.keys.blob(i), bad)
            corrupted.add(i)
        sampler = Sampler(fake_client, cfg, SampleShape(batch_size=24, max_seq_len=4), seed=0)
        tracemalloc.start()
        try:
            for _ in range(15):
                try:
                    b = sampler.sample(8, timeout_s=2)
                except Exception as e:  # noqa: BLE001
                    raise AssertionError(
                        f"Sampler.sample raised {type(e).__name__} on a corrupted blob "
                        f"(sampler hardening needed): {e}"
                    ) from e
                assert b.mask.any(axis=1).all()
                assert not (set(b.policy_version.tolist()) & {7 * i for i in corrupted})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, f"sampling over bombs peaked at {peak / 2**20:.0f} MiB"
        s = store.stats()
        assert s.dropped_trajectories == sum(s.corrupt.values()) <= len(corrupted)
        assert s.trajectories == n_traj - s.dropped_trajectories
        _assert_store_consistent_after_drops(fake_client, store, corrupted)
    finally:
        store.clear()


def _assert_store_consistent_after_drops(client, store: ReplayStore, corrupted: set) -> None:
    info = {int(k): parse_info(v) for k, v in client.hgetall(store.keys.info).items()}
    s = store.stats()
    assert s.trajectories == len(info)
    assert s.timesteps == sum(n for n, _, _ in info.values())
    live_bad = corrupted & set(info)  # not drawn yet: still there, still refused
    for i in set(info) - live_bad:
        decode(client.get(store.keys.blob(i)), FUZZ_LIMITS)
