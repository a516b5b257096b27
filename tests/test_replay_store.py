"""Replay store: concurrent writers, FIFO capacity, ingest validation, namespaces, stats,
out-of-memory backpressure and server restarts (fakeredis and an embedded Valkey server)."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import uuid

import msgpack
import numpy as np
import pytest
import redis

from common.codec import RecordError, decode, encode
from replay_service import (
    EmbeddedServer,
    RateLimitConfig,
    RateLimitTimeout,
    RedisConfig,
    ReplayBackpressure,
    ReplayConfig,
    ReplayStore,
    ReplayUnavailable,
    Sampler,
    SampleShape,
    connect,
)
from replay_service.lua import Keys, parse_info

#: The learner's batches: 24 windows of at most 8 (W8) or 64 timesteps (W64).
W8 = SampleShape(batch_size=24, max_seq_len=8)
W64 = SampleShape(batch_size=24, max_seq_len=64)


def _cfg(url: str = "", namespace: str | None = None, **kw) -> ReplayConfig:
    redis_cfg = RedisConfig(url=url, namespace=namespace or f"t{uuid.uuid4().hex[:12]}", retries=1)
    return ReplayConfig(redis=redis_cfg, **kw)


@pytest.fixture
def cfg(redis_backend, client):
    """A fresh namespace per test, deleted afterwards."""
    c = _cfg(redis_backend.url, max_steps=10_000, max_traj_steps=1000)  # sampled as W8
    yield c
    ReplayStore(client, c).clear()


def _contents(client: redis.Redis, keys: Keys) -> dict:
    """What the namespace really holds, straight from Redis."""
    blob_keys = sorted(
        int(k.decode().rsplit(":", 1)[1]) for k in client.scan_iter(match=keys.blob_prefix + "*")
    )
    info = {int(k): parse_info(v) for k, v in client.hgetall(keys.info).items()}
    lens = {i: steps for i, (steps, _, _) in info.items()}
    sizes = {i: nbytes for i, (_, nbytes, _) in info.items()}
    tokens = {t: i for i, (_, _, t) in info.items()}
    assert tokens == {k.decode(): int(v) for k, v in client.hgetall(keys.tokens).items()}
    meta = {k.decode(): int(v) for k, v in client.hgetall(keys.meta).items() if k != b"epoch"}
    return {"ids": blob_keys, "lens": lens, "sizes": sizes, "meta": meta}


def _assert_consistent(client: redis.Redis, keys: Keys) -> dict:
    c = _contents(client, keys)
    assert c["ids"] == sorted(c["lens"]) == sorted(c["sizes"])
    m = c["meta"]
    assert m.get("count", 0) == len(c["ids"])
    assert m.get("steps", 0) == sum(c["lens"].values())
    assert m.get("bytes", 0) == sum(c["sizes"].values())
    for i in c["ids"]:
        assert c["sizes"][i] == client.strlen(keys.blob(i))
    return c


# -- concurrent writers ------------------------------------------------------------------


def _writer(url: str, namespace: str, blobs: list[bytes]) -> None:
    store = ReplayStore(connect(RedisConfig(url=url, namespace=namespace)), _cfg(url, namespace))
    for b in blobs:
        store.insert(b)


def test_concurrent_writer_processes_lose_and_duplicate_nothing(
    redis_backend, client, make_trajectory
):
    procs, per_proc = 4, 50
    cfg = _cfg(redis_backend.url)
    blobs = [
        [
            encode(make_trajectory(5 + (w * per_proc + i) % 17, tag=w * per_proc + i))
            for i in range(per_proc)
        ]
        for w in range(procs)
    ]
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(target=_writer, args=(redis_backend.url, cfg.redis.namespace, blobs[w]))
        for w in range(procs)
    ]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    assert [p.exitcode for p in workers] == [0] * procs
    store = ReplayStore(client, cfg)
    try:
        c = _assert_consistent(client, store.keys)
        assert c["ids"] == list(range(procs * per_proc))  # ids unique and gap-free
        tags = sorted(decode(client.get(store.keys.blob(i))).meta.actor_id for i in c["ids"])
        assert tags == list(range(procs * per_proc))  # every record exactly once
        for i in c["ids"][:20]:
            t = decode(client.get(store.keys.blob(i)))
            assert c["lens"][i] == len(t)
            np.testing.assert_array_equal(
                t.obs["observation"][:, 0], t.meta.actor_id * 1000 + np.arange(len(t))
            )
        s = store.stats()
        assert (s.trajectories, s.inserted_trajectories) == (200, 200)
    finally:
        store.clear()


def test_insert_token_is_idempotent(client, cfg, make_trajectory):
    store = ReplayStore(client, cfg)
    t = make_trajectory(10)
    a = store.insert(t, token="retry-me")
    b = store.insert(t, token="retry-me")
    c = store.insert(t)
    assert a == b != c
    assert store.stats().trajectories == 2


def test_insert_many_is_pipelined_ordered_and_idempotent(client, cfg, make_trajectory):
    store = ReplayStore(client, cfg)
    trajs = [make_trajectory(5 + i, tag=i) for i in range(6)]
    tokens = [f"batch-{i}" for i in range(6)]
    assert store.insert_many(trajs[:3], tokens=tokens[:3]) == [0, 1, 2]
    # a retry of the whole batch after a partial failure stores each record once
    assert store.insert_many(trajs, tokens=tokens) == [0, 1, 2, 3, 4, 5]
    c = _assert_consistent(client, store.keys)
    assert c["ids"] == list(range(6))
    assert [c["lens"][i] for i in range(6)] == [5, 6, 7, 8, 9, 10]
    assert not list(client.scan_iter(match=store.keys.prefix + "p:*"))  # no uploads left over
    # validation is all-or-nothing
    bad = make_trajectory(5)
    bad.prev_reward = bad.prev_reward[:3]
    with pytest.raises(RecordError):
        store.insert_many([make_trajectory(5), bad])
    assert _assert_consistent(client, store.keys)["ids"] == list(range(6))
    with pytest.raises(ValueError, match="tokens"):
        store.insert_many(trajs[:2], tokens=["same", "same"])


def test_insert_many_waits_for_the_rate_limiter_in_order(client, redis_backend, make_trajectory):
    cfg = _cfg(
        redis_backend.url,
        max_traj_steps=10,
        rate_limit=RateLimitConfig(samples_per_insert=1.0, min_size_steps=10),
    )
    store = ReplayStore(client, cfg, SampleShape(batch_size=2, max_seq_len=5))
    try:
        # free below min size, then (20 - 0) <= max_diff 20 allowed, then 30 > 20 refused
        with pytest.raises(RateLimitTimeout):
            store.insert_many([make_trajectory(10, tag=i) for i in range(3)], timeout_s=0.05)
        c = _assert_consistent(client, store.keys)
        assert c["ids"] == [0, 1]  # the first two went in; the refused one left nothing behind
        assert not list(client.scan_iter(match=store.keys.prefix + "p:*"))
    finally:
        store.clear()


def test_an_automatic_error_buffer_needs_the_learners_sample_shape(client, redis_backend):
    """The insert side of the limiter sizes its automatic tolerance by the largest sample
    reservation (learner.batch_size * learner.max_seq_len): no shape, no store."""
    limited = _cfg(redis_backend.url, rate_limit=RateLimitConfig(samples_per_insert=1.0))
    with pytest.raises(ValueError, match="SampleShape"):
        ReplayStore(client, limited)
    ReplayStore(client, limited, W8)
    explicit = dataclasses.replace(
        limited, rate_limit=RateLimitConfig(samples_per_insert=1.0, error_buffer=1e9)
    )
    ReplayStore(client, explicit)  # an explicit tolerance, or the ratio off: none needed
    ReplayStore(client, _cfg(redis_backend.url))


# -- FIFO capacity -----------------------------------------------------------------------


def test_fifo_steps_cap_keeps_the_newest(client, redis_backend, make_trajectory):
    cfg = _cfg(redis_backend.url, max_steps=100, max_traj_steps=30)
    store = ReplayStore(client, cfg)
    try:
        lengths = [7, 30, 12, 25, 9, 18, 30, 3, 21, 14, 11, 27]
        for i, n in enumerate(lengths):
            assert store.insert(make_trajectory(n, tag=i)) == i
            c = _assert_consistent(client, store.keys)
            assert c["meta"]["steps"] <= 100
            # the kept ids are exactly the longest suffix that fits
            keep, total = [], 0
            for j in range(i, -1, -1):
                if total + lengths[j] > 100:
                    break
                keep.insert(0, j)
                total += lengths[j]
            assert c["ids"] == keep
        s = store.stats()
        assert s.evicted_trajectories == len(lengths) - s.trajectories
        assert s.inserted_timesteps == sum(lengths)
    finally:
        store.clear()


def test_fifo_bytes_cap_keeps_the_newest(client, redis_backend, make_trajectory):
    sizes = [len(encode(make_trajectory(n))) for n in (10, 40)]
    cap = 3 * sizes[1]
    cfg = _cfg(redis_backend.url, max_bytes=cap, max_record_bytes=sizes[1])
    store = ReplayStore(client, cfg)
    try:
        for i in range(12):
            store.insert(make_trajectory(10 if i % 2 else 40, tag=i))
            c = _assert_consistent(client, store.keys)
            assert c["meta"]["bytes"] <= cap
            assert c["ids"][-1] == i  # the newest is never evicted
            # one more older record would not have fit
            if c["ids"][0] > 0:
                older = sizes[0] if (c["ids"][0] - 1) % 2 else sizes[1]
                assert c["meta"]["bytes"] + older > cap
            assert c["ids"] == list(range(c["ids"][0], i + 1))  # contiguous newest suffix
    finally:
        store.clear()


def test_evict_removes_the_oldest(client, cfg, make_trajectory):
    store = ReplayStore(client, cfg)
    for i in range(5):
        store.insert(make_trajectory(4, tag=i))
    assert store.evict(2) == 2
    assert _assert_consistent(client, store.keys)["ids"] == [2, 3, 4]
    assert store.evict(10) == 3
    assert _assert_consistent(client, store.keys)["ids"] == []
    assert store.insert(make_trajectory(4)) == 5


# -- ingest validation -------------------------------------------------------------------


def _mutate(blob: bytes, fn) -> bytes:
    doc = msgpack.unpackb(blob, raw=False)
    fn(doc)
    return msgpack.packb(doc, use_bin_type=True)


def _bad_cases(make_trajectory):
    good = encode(make_trajectory(6))

    def traj_with(**changes):
        t = make_trajectory(6)
        for k, v in changes.items():
            setattr(t, k, v)
        return t

    nan_reward = np.zeros(6, np.float32)
    nan_reward[3] = np.nan
    return [
        ("version", _mutate(good, lambda d: d.update(v=99)), "v", "version"),
        (
            "dtype",
            _mutate(good, lambda d: d["arrays"]["prev_reward"].update(d="complex64")),
            "prev_reward",
            "dtype",
        ),
        (
            "dtype_object",
            traj_with(obs={"observation": np.array([None] * 6, dtype=object)[:, None]}),
            "obs/observation",
            "dtype",
        ),
        ("length", traj_with(prev_reward=np.zeros(7, np.float32)), "obs/observation", "length"),
        ("nonfinite", traj_with(prev_reward=nan_reward), "prev_reward", "nonfinite"),
        ("oversize_steps", make_trajectory(1001), "record", "oversize"),
        ("oversize_bytes", encode(make_trajectory(900, obs_dim=400)), "record", "oversize"),
        ("truncated", good[:-7], "record", "truncated"),
        (
            "payload",
            _mutate(good, lambda d: d["arrays"]["time_idx"].update(b=b"\0" * 3)),
            "time_idx",
            "truncated",
        ),
        (
            "compression",
            _mutate(good, lambda d: d["arrays"]["time_idx"].update(z="lz4")),
            "time_idx",
            "compression",
        ),
        (
            "missing",
            _mutate(good, lambda d: d["arrays"].pop("prev_action")),
            "prev_action",
            "schema",
        ),
        (
            "episode_starts",
            _mutate(good, lambda d: d["meta"].update(episode_starts=[0, 9])),
            "meta.episode_starts",
            "schema",
        ),
        ("action_dtype", traj_with(prev_action=np.zeros((6, 2))), "prev_action", "dtype"),
        ("not_msgpack", b"\xc1\xc1garbage", "record", "truncated"),
    ]


def test_malformed_records_are_rejected_counted_and_change_nothing(
    client, redis_backend, make_trajectory
):
    cfg = _cfg(redis_backend.url, max_traj_steps=1000, max_record_bytes=1_000_000)
    store = ReplayStore(client, cfg)
    try:
        store.insert(make_trajectory(5))
        before = _contents(client, store.keys)
        expected: dict[str, int] = {}
        for name, record, field, reason in _bad_cases(make_trajectory):
            with pytest.raises(RecordError) as e:
                store.insert(record)
            assert (e.value.field, e.value.reason) == (field, reason), name
            expected[reason] = expected.get(reason, 0) + 1
            assert _contents(client, store.keys) == before, name
            assert store.stats().rejected == expected, name
        assert store.insert(make_trajectory(5)) == 1  # still works
    finally:
        store.clear()


# -- namespaces and stats ---------------------------------------------------------------


def test_namespaces_isolate_two_stores(client, redis_backend, make_trajectory):
    a = ReplayStore(client, _cfg(redis_backend.url, namespace="runA" + uuid.uuid4().hex[:6]))
    b = ReplayStore(client, _cfg(redis_backend.url, namespace="runB" + uuid.uuid4().hex[:6]))
    try:
        for i in range(3):
            a.insert(make_trajectory(5, tag=i))
        b.insert(make_trajectory(9, tag=7))
        assert (a.stats().trajectories, b.stats().trajectories) == (3, 1)
        batch = Sampler(client, b.config, W64).sample(4, timeout_s=1)
        assert set(batch.policy_version.tolist()) == {7}
        a.clear()
        assert a.stats().trajectories == 0
        assert b.stats().trajectories == 1
        assert _assert_consistent(client, b.keys)["ids"] == [0]
    finally:
        a.clear()
        b.clear()


def test_stats_counts_and_rates(client, cfg, make_trajectory):
    store = ReplayStore(client, cfg)
    first = store.stats()
    assert first.insert_rate == 0.0 and first.trajectories == 0
    for i in range(4):
        store.insert(make_trajectory(10, tag=i))
    Sampler(client, cfg, W8).sample(3, timeout_s=1)
    s = store.stats()
    assert (s.trajectories, s.timesteps, s.inserted_timesteps) == (4, 40, 40)
    assert s.bytes == s.inserted_bytes > 0
    assert (s.sampled_windows, s.sampled_timesteps) == (3, 24)
    assert s.insert_rate > 0 and s.sample_step_rate > 0
    assert s.samples_per_insert == pytest.approx(24 / 40)


def test_compressed_records_round_trip(client, redis_backend):
    cfg = _cfg(redis_backend.url, compression="zstd")
    store = ReplayStore(client, cfg)
    try:
        n = 40
        img = np.zeros((n, 16, 16, 3), np.uint8)
        img[:, 4:8] = np.arange(n, dtype=np.uint8)[:, None, None, None]
        from common.records import Trajectory

        t = Trajectory(
            obs={"image": img},
            prev_action=np.zeros((n, 1), np.float32),
            prev_reward=np.zeros(n, np.float32),
            time_idx=np.arange(n, dtype=np.int64),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
        )
        store.insert(t)
        assert store.stats().bytes < img.nbytes / 4  # stored compressed
        batch = Sampler(client, cfg, SampleShape(batch_size=24, max_seq_len=16)).sample(
            2, timeout_s=1
        )
        assert batch.obs["image"].dtype == np.uint8 and batch.obs["image"].shape == (
            2,
            16,
            16,
            16,
            3,
        )
        for b in range(2):
            start = int(batch.time_idx[b, 0])
            np.testing.assert_array_equal(batch.obs["image"][b], img[start : start + 16])
    finally:
        store.clear()


# -- real server only: maxmemory backpressure, restarts, persistence ----------------------


def _image_traj(make_trajectory, n=64):
    return make_trajectory(n, obs_dim=1000)  # ~260 KB


def test_maxmemory_is_backpressure_and_the_store_stays_consistent(make_trajectory):
    with EmbeddedServer(maxmemory_bytes=6 * 2**20, password="s3cret") as server:
        cfg = ReplayConfig(redis=server.redis_config(namespace="oom", retries=0))
        client = connect(cfg.redis)
        store = ReplayStore(client, cfg)
        inserted = 0
        with pytest.raises(ReplayBackpressure, match="out of memory"):
            for _ in range(200):
                store.insert(_image_traj(make_trajectory))
                inserted += 1
        assert 5 < inserted < 200
        c = _assert_consistent(client, store.keys)
        assert c["ids"] == list(range(inserted))  # nothing half-written
        with pytest.raises(ReplayBackpressure):
            store.insert(_image_traj(make_trajectory))
        s = store.stats()
        assert (s.trajectories, s.backpressure_events) == (inserted, 2)
        # sampling still works while full
        assert Sampler(client, cfg, W64).sample(4, timeout_s=1).shape == (4, 64)
        # evicting the oldest makes room again
        assert store.evict(4) == 4
        assert store.insert(_image_traj(make_trajectory)) == inserted
        _assert_consistent(client, store.keys)
        # as does clearing
        with pytest.raises(ReplayBackpressure):
            for _ in range(200):
                store.insert(_image_traj(make_trajectory))
        store.clear()
        assert store.insert(_image_traj(make_trajectory)) == 0
        # the password is enforced
        with pytest.raises(ReplayUnavailable):
            ReplayStore(connect(RedisConfig(url=server.url, retries=0)), cfg).stats()
        client.close()


def test_restart_without_persistence_recovers_empty(make_trajectory):
    with EmbeddedServer() as server:
        cfg = ReplayConfig(
            redis=server.redis_config(namespace="restart", retries=1),
            rate_limit=RateLimitConfig(min_size_steps=1000),
        )
        client = connect(cfg.redis)
        store, sampler = ReplayStore(client, cfg), Sampler(client, cfg, W8)
        for i in range(3):
            store.insert(make_trajectory(10, tag=i))
        # an in-flight call (a sample waiting for min size) sees the server go away
        errors: list[BaseException] = []

        def blocked_sample():
            try:
                sampler.sample(2, timeout_s=20)
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                errors.append(e)

        th = threading.Thread(target=blocked_sample)
        th.start()
        server.kill()
        th.join(timeout=20)
        assert not th.is_alive() and len(errors) == 1
        assert isinstance(errors[0], ReplayUnavailable)
        with pytest.raises(ReplayUnavailable):
            store.insert(make_trajectory(10))
        server.start()  # same port, empty, scripts gone (NOSCRIPT -> reloaded)
        assert store.insert(make_trajectory(10, tag=9)) == 0
        assert store.stats().trajectories == 1
        no_min = dataclasses.replace(cfg, rate_limit=RateLimitConfig())
        batch = Sampler(client, no_min, W8).sample(2, timeout_s=2)
        assert set(batch.policy_version.tolist()) == {9}
        client.close()


def test_restart_with_persistence_resumes(tmp_path, make_trajectory):
    with EmbeddedServer(data_dir=tmp_path / "valkey") as server:
        cfg = ReplayConfig(redis=server.redis_config(namespace="persist", retries=1))
        client = connect(cfg.redis)
        store, sampler = ReplayStore(client, cfg), Sampler(client, cfg, W8)
        for i in range(5):
            store.insert(make_trajectory(10 + i, tag=i))
        sampler.sample(4, timeout_s=1)
        before = _contents(client, store.keys)
        server.stop()
        with pytest.raises(ReplayUnavailable):
            sampler.sample(4, timeout_s=1)
        server.start()
        assert _contents(client, store.keys) == before
        # a brand-new process's objects (no local state) read it back
        fresh = Sampler(connect(cfg.redis), cfg, W8, seed=3)
        assert set(fresh.sample(64, timeout_s=1).policy_version.tolist()) == set(range(5))
        assert sampler.sample(4, timeout_s=1).shape == (4, 8)  # the old one's cache is valid
        assert store.insert(make_trajectory(10, tag=5)) == 5
        assert store.stats().sampled_windows == 4 + 64 + 4
        client.close()


# -- exactly-once across eviction ----------------------------------------------------------


def test_a_retry_after_eviction_is_still_a_duplicate(client, redis_backend, make_trajectory):
    from replay_service.lua import TOKEN_GRACE_S

    cfg = _cfg(redis_backend.url, max_steps=30, max_traj_steps=10)
    store = ReplayStore(client, cfg)
    try:
        assert store.insert(make_trajectory(10, tag=0), token="first") == 0
        assert store.insert_many(
            [make_trajectory(10, tag=i) for i in (1, 2)], tokens=["second", "third"]
        ) == [1, 2]
        for i in range(3, 6):  # evicts 0, 1, 2 (FIFO)
            store.insert(make_trajectory(10, tag=i))
        assert _assert_consistent(client, store.keys)["ids"] == [3, 4, 5]
        before = store.stats()
        # the writer's retries (e.g. its first reply was lost) come back after the eviction
        assert store.insert(make_trajectory(10, tag=0), token="first") == 0
        assert store.insert_many(
            [make_trajectory(10, tag=i) for i in (1, 2, 6)], tokens=["second", "third", "new"]
        ) == [1, 2, 6]
        after = store.stats()
        assert after.inserted_trajectories == before.inserted_trajectories + 1  # only "new"
        c = _assert_consistent(client, store.keys)
        assert c["ids"] == [4, 5, 6]
        assert not list(client.scan_iter(match=store.keys.prefix + "p:*"))
        # removed records' tokens are kept for a bounded time (they expire)
        for token in ("first", "second", "third"):
            ttl = client.pttl(store.keys.token(token))
            assert 0 < ttl <= 1000 * TOKEN_GRACE_S
        # evict() and sample-time drops keep the tokens too
        token4 = c_token(client, store, 4)
        assert store.evict(1) == 1
        assert store.insert(make_trajectory(10, tag=4), token=token4) == 4
        assert store.stats().inserted_trajectories == after.inserted_trajectories
    finally:
        store.clear()
    assert not list(client.scan_iter(match=store.keys.prefix + "*"))  # clear() took all


def c_token(client, store, traj_id: int) -> str:
    """The insert token of a live trajectory, from the info hash."""
    return parse_info(client.hget(store.keys.info, str(traj_id)))[2]


def test_a_dropped_record_keeps_its_token(client, cfg, make_trajectory):
    store = ReplayStore(client, cfg)
    store.insert(make_trajectory(10, tag=0), token="a")
    store.insert(make_trajectory(10, tag=1), token="b")
    client.set(store.keys.blob(0), b"\x93garbage")
    sampler = Sampler(client, cfg, W8, seed=0)
    for _ in range(5):
        sampler.sample(4, timeout_s=1)
    assert store.stats().dropped_trajectories == 1
    assert store.insert(make_trajectory(10, tag=0), token="a") == 0  # not stored again
    assert _assert_consistent(client, store.keys)["ids"] == [1]


# -- start-up check of an external server's eviction policy ----------------------------------


def test_check_server_requires_noeviction():
    from common.config_utils import ConfigError
    from replay_service.client import check_server

    with EmbeddedServer() as server:
        client = connect(server.redis_config(retries=0))
        assert check_server(client) == "noeviction"
        client.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ConfigError, match="allkeys-lru.*noeviction"):
            check_server(client)
        client.config_set("maxmemory-policy", "volatile-ttl")  # evicts pending uploads, tokens
        with pytest.raises(ConfigError, match="volatile-ttl"):
            check_server(client)
        client.close()


def test_check_server_warns_when_the_server_will_not_say(redis_backend, client):
    from replay_service.client import check_server

    class Refusing:
        def config_get(self, *a):
            raise redis.exceptions.NoPermissionError("NOPERM this user has no permissions")

        def info(self, *a):
            raise redis.exceptions.ResponseError("unknown command 'INFO'")

    with pytest.warns(RuntimeWarning, match="maxmemory-policy"):
        assert check_server(Refusing()) is None

    class InfoOnly(Refusing):  # managed servers: CONFIG renamed away, INFO answers
        def info(self, *a):
            return {"maxmemory_policy": "allkeys-lfu"}

    from common.config_utils import ConfigError

    with pytest.raises(ConfigError, match="allkeys-lfu"):
        check_server(InfoOnly())
    # both backends: noeviction, or (fakeredis has no CONFIG GET) a warning
    if redis_backend.name == "valkey":
        assert check_server(client) == "noeviction"
    else:
        with pytest.warns(RuntimeWarning):
            assert check_server(client) is None
