"""Sharded replay (replay_service.shards): placement by token hash, idempotent retries, per-shard
capacity, sampling in proportion to content, the rate limiter across shards, and shard outages
(fakeredis servers for the routing logic; three embedded Valkey servers end to end, one of
them restarted mid-run)."""

from __future__ import annotations

import dataclasses
import time
import uuid
import zlib

import fakeredis
import numpy as np
import pytest

from common.config_utils import ConfigError
from replay_service import (
    EmbeddedServer,
    RateLimitConfig,
    RateLimitTimeout,
    RedisConfig,
    ReplayConfig,
    ReplayUnavailable,
    SampleShape,
    connect,
)
from replay_service.shards import ShardedSampler, ShardedStore, connect_shards, shard_of

K = 3
URLS = [f"redis://127.0.0.1:{6400 + k}" for k in range(K)]  # fakeredis tests: never dialled


def sharded_cfg(urls=URLS, **kw) -> ReplayConfig:
    ns = f"s{uuid.uuid4().hex[:10]}"
    base = RedisConfig(url=urls[0], shards=list(urls[1:]), namespace=ns, retries=0)
    if "redis" in kw:
        base = dataclasses.replace(base, **kw.pop("redis"))
    return ReplayConfig(redis=base, **kw)


@pytest.fixture
def fake():
    """K separate fakeredis servers and a client of each."""
    servers = [fakeredis.FakeServer() for _ in range(K)]
    return servers, [fakeredis.FakeRedis(server=s) for s in servers]


def shard_tokens(k: int, n: int, prefix: str = "tok") -> list[str]:
    """``n`` tokens that all hash to shard ``k`` of K."""
    out, i = [], 0
    while len(out) < n:
        t = f"{prefix}-{i}"
        if shard_of(t, K) == k:
            out.append(t)
        i += 1
    return out


# -- config ------------------------------------------------------------------------------


def test_shard_config_splits_capacity_and_keeps_the_limiter_tolerance():
    cfg = sharded_cfg(
        max_steps=30_000,
        max_bytes=3 * 2**20,
        max_traj_steps=100,
        max_record_bytes=2**20,
        rate_limit=RateLimitConfig(samples_per_insert=4.0, min_size_steps=100),
    )
    cfg.validate()
    assert cfg.num_shards == K and cfg.redis.urls == URLS
    s = cfg.shard(2)
    assert s.redis.url == URLS[2] and s.redis.shards == [] and s.num_shards == 1
    assert (s.max_steps, s.max_bytes, s.rate_limit.min_size_steps) == (10_000, 2**20, 34)
    assert s.sample_cache_mb == cfg.sample_cache_mb // K  # one cache per shard sampler
    shape = SampleShape(batch_size=24, max_seq_len=16)
    assert s.rate_limit.error_buffer == cfg.rate_limit.error_buffer  # as configured (auto)
    assert s.effective_error_buffer(shape) == cfg.effective_error_buffer(shape)  # the global one
    assert s.redis.namespace == cfg.redis.namespace
    assert "shards=['redis://127.0.0.1:6401'" in repr(cfg.redis)


@pytest.mark.parametrize(
    "redis_kw, other, field",
    [
        (dict(url="", shards=["redis://a:1"]), {}, "redis.shards"),
        (dict(url="redis://a:1", shards=["http://b:1"]), {}, "redis.shards[0]"),
        (dict(url="redis://a:1", shards=["redis://a:1"]), {}, "redis.shards"),
        (dict(url="redis://a:1", shards=["redis://b:1"]), {"max_steps": 15_000}, "max_traj_steps"),
        (dict(url="redis://a:1", shards=["redis://b:1"]), {"shard_backlog": -1}, "shard_backlog"),
    ],
)
def test_bad_shard_configs_fail_naming_the_field(redis_kw, other, field):
    cfg = ReplayConfig(redis=RedisConfig(**redis_kw), max_traj_steps=10_000, **other)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field
    assert "\n" not in str(e.value)


# -- placement, idempotency, capacity (fakeredis) ------------------------------------------


def test_inserts_spread_by_token_hash_and_retries_land_once(fake, make_trajectory):
    _, clients = fake
    cfg = sharded_cfg(max_traj_steps=100)
    store = ShardedStore(clients, cfg)
    tokens = [f"rollout-{i}" for i in range(300)]
    ids = store.insert_many([make_trajectory(5, tag=i) for i in range(300)], tokens=tokens)
    assert shard_of("rollout-7", K) == zlib.crc32(b"rollout-7") % K  # stable, not hash()
    assert [i % K for i in ids] == [shard_of(t, K) for t in tokens]
    counts = [s.stats().trajectories for s in store.stores]
    assert sum(counts) == 300 and min(counts) >= 70, counts  # ~100 each
    # a retry (same token) returns the same id and stores nothing
    again = store.insert(make_trajectory(5, tag=7), token="rollout-7")
    assert again == ids[7]
    st = store.stats()
    assert st.trajectories == st.inserted_trajectories == 300
    assert st.shard_timesteps == [5 * c for c in counts]


def test_each_shard_evicts_fifo_at_its_share_of_capacity(fake, make_trajectory):
    _, clients = fake
    cfg = sharded_cfg(max_steps=300, max_traj_steps=10)
    store = ShardedStore(clients, cfg)
    for i in range(200):
        store.insert(make_trajectory(10, tag=i), token=f"t{i}")
    per = [s.stats() for s in store.stores]
    assert all(p.timesteps <= 100 for p in per), [p.timesteps for p in per]
    assert all(p.timesteps >= 90 and p.evicted_trajectories > 0 for p in per)
    # what is left on each shard is its newest inserts (FIFO)
    for k, s in enumerate(store.stores):
        mine = [i for i in range(200) if shard_of(f"t{i}", K) == k]
        assert s.stats().trajectories == 10
        assert len(mine) - s.stats().evicted_trajectories == 10


# -- sampling (fakeredis) -------------------------------------------------------------------


def test_samples_come_from_shards_in_proportion_to_their_content(fake, make_trajectory):
    _, clients = fake
    cfg = sharded_cfg(max_traj_steps=50)
    store = ShardedStore(clients, cfg)
    sizes = [10, 20, 40]  # trajectories per shard
    for k, n in enumerate(sizes):
        toks = shard_tokens(k, n, prefix=f"p{k}")
        store.insert_many([make_trajectory(8, tag=k) for _ in toks], tokens=toks)
    sampler = ShardedSampler(clients, cfg, SampleShape(batch_size=30, max_seq_len=4), seed=1)
    seen = np.zeros(K)
    for _ in range(60):
        batch = sampler.sample(30)
        assert batch.obs["observation"].shape[:2] == (30, 4)
        tags = batch.obs["observation"][:, 0, 0] // 1000  # obs = tag * 1000 + t
        seen += np.bincount(tags.astype(int), minlength=K)
    share = seen / seen.sum()
    assert np.allclose(share, np.array(sizes) / sum(sizes), atol=0.04), share
    assert sampler.rows == seen.astype(int).tolist()
    st = sampler.stats()
    assert st.sampled_windows == 60 * 30 and st.shard_outages == 0


def test_a_refusing_shard_is_left_out_and_its_rows_drawn_elsewhere(fake, make_trajectory):
    _, clients = fake
    cfg = sharded_cfg(max_traj_steps=50)
    shape = SampleShape(batch_size=12, max_seq_len=4)
    store = ShardedStore(clients, cfg)
    for k in (0, 1):  # shard 2 stays empty
        toks = shard_tokens(k, 5, prefix=f"r{k}")
        store.insert_many([make_trajectory(6, tag=k) for _ in toks], tokens=toks)
    sampler = ShardedSampler(clients, cfg, shape, seed=0)
    for _ in range(5):
        assert len(sampler.sample(12, timeout_s=0).mask) == 12
    assert sampler.rows[2] == 0 and sum(sampler.rows) == 60
    empty = ShardedSampler(
        [fakeredis.FakeRedis(server=fakeredis.FakeServer()) for _ in range(K)], cfg, shape
    )
    with pytest.raises(RateLimitTimeout):
        empty.sample(4, timeout_s=0.05)


def test_rate_limiter_holds_globally_and_never_deadlocks(fake, make_trajectory):
    """Each shard limits its own I/S with the same spi; proportional sampling keeps the
    shards' ratios equal, so the global sampled/inserted ratio tracks spi within K error
    buffers, and a writer refused by its shard's limiter is always unblocked by sampling."""
    _, clients = fake
    spi, L, n = 2.0, 4, 8
    cfg = sharded_cfg(
        max_traj_steps=n,
        rate_limit=RateLimitConfig(samples_per_insert=spi, min_size_steps=3 * n),
    )
    shape = SampleShape(batch_size=6, max_seq_len=L)
    eb = cfg.effective_error_buffer(shape)
    store = ShardedStore(clients, cfg, shape)
    sampler = ShardedSampler(clients, cfg, shape, seed=3)
    blocked_writes = 0
    for i in range(250):
        try:
            store.insert(make_trajectory(n, tag=i % 7), timeout_s=0, token=f"rl{i}")
        except RateLimitTimeout:
            blocked_writes += 1
            for _ in range(50):  # the writer's shard accepts samples: sampling never refuses
                sampler.sample(6, timeout_s=0)
                try:
                    store.insert(make_trajectory(n, tag=i % 7), timeout_s=0, token=f"rl{i}")
                    break
                except RateLimitTimeout:
                    continue
            else:
                raise AssertionError("the writer stayed blocked")
        if i % 3 == 0:
            try:
                sampler.sample(6, timeout_s=0)
            except RateLimitTimeout:
                pass
    assert blocked_writes > 0  # the limiter did bite
    st = store.stats()
    diff = st.inserted_timesteps * spi - st.sampled_timesteps
    target = spi * sum(s.config.rate_limit.min_size_steps for s in store.stores)
    assert abs(diff - target) <= K * eb + spi * n + 6 * L, (diff, target, eb)
    per = [s.stats() for s in store.stores]
    ratios = [p.sampled_timesteps / p.inserted_timesteps for p in per]
    assert max(ratios) - min(ratios) < 0.3, ratios
    assert abs(st.samples_per_insert - spi) < 0.3


# -- outages (fakeredis: a server that refuses connections) ------------------------------


def test_a_down_shard_parks_its_inserts_and_sampling_goes_on(fake, make_trajectory):
    servers, clients = fake
    t = [0.0]
    cfg = sharded_cfg(max_traj_steps=50, shard_backlog=50)
    shape = SampleShape(batch_size=9, max_seq_len=4)
    store = ShardedStore(clients, cfg, clock=lambda: t[0])
    sampler = ShardedSampler(clients, cfg, shape, seed=0, clock=lambda: t[0])
    store.insert_many(
        [make_trajectory(6, tag=1) for _ in range(30)], tokens=[f"a{i}" for i in range(30)]
    )
    sampler.sample(9)
    servers[1].connected = False  # shard 1 goes down
    tokens = [f"b{i}" for i in range(30)]
    ids = store.insert_many([make_trajectory(6, tag=2) for _ in range(30)], tokens=tokens)
    on1 = [i for i, tok in enumerate(tokens) if shard_of(tok, K) == 1]
    assert on1 and all(ids[i] == -1 for i in on1)
    assert all(ids[i] >= 0 for i in range(30) if i not in on1)
    assert store.parked == len(on1) and store.health.outages == 1
    for _ in range(5):  # sampling continues from shards 0 and 2
        assert len(sampler.sample(9).mask) == 9
    assert sampler.health.is_down(1) and sampler.stats().shard_outages >= 1
    servers[1].connected = True
    t[0] += 1.0  # past the retry time
    store.insert(make_trajectory(6, tag=3), token="c0")  # flushes the backlog first
    assert store.parked == 0
    st = store.stats()
    assert st.trajectories == st.inserted_trajectories == 61
    # a full backlog while other shards are up: the oldest parked rollout makes room
    servers[2].connected = False
    small = ShardedStore(clients, dataclasses.replace(cfg, shard_backlog=2), clock=lambda: t[0])
    tok2 = shard_tokens(2, 3, prefix="d")
    assert small.insert_many([make_trajectory(6) for _ in tok2], tokens=tok2) == [-1] * 3
    assert small.shed == 1 and [tok for _, tok in small.backlog[2]] == tok2[1:]
    assert small.insert(make_trajectory(6), token=shard_tokens(0, 1, "e")[0]) >= 0  # live
    # every shard down and the backlog full: ReplayUnavailable, as with one server
    for srv in servers:
        srv.connected = False
    with pytest.raises(ReplayUnavailable):
        small.insert_many(
            [make_trajectory(6) for _ in range(9)], tokens=[f"g{i}" for i in range(9)]
        )
    for srv in servers:
        srv.connected = True
    servers[2].connected = True
    t[0] += 10.0
    for _ in range(3):  # the sampler retries shard 1 and 2 and finds them back
        sampler.sample(9)
    assert not sampler.health.down()


# -- three embedded Valkey servers ---------------------------------------------------------


@pytest.fixture(scope="module")
def valkeys(tmp_path_factory):
    """Three embedded servers sharing one password; shard 1 persists (it gets restarted)."""
    pw = "shard-test-password"
    data = tmp_path_factory.mktemp("shard1")
    servers = [
        EmbeddedServer(password=pw, data_dir=data if k == 1 else None).start() for k in range(K)
    ]
    yield servers
    for s in servers:
        s.stop()


def valkey_cfg(servers, **kw) -> ReplayConfig:
    urls = [s.url for s in servers]
    return sharded_cfg(urls, redis={"password": servers[0].password}, **kw)


def test_three_valkeys_end_to_end(valkeys, make_trajectory):
    cfg = valkey_cfg(valkeys, max_steps=1_500, max_traj_steps=20)
    shape = SampleShape(batch_size=24, max_seq_len=8)
    clients = connect_shards(cfg)
    store, sampler = ShardedStore(clients, cfg), ShardedSampler(clients, cfg, shape, seed=0)
    tokens = [f"v{i}" for i in range(150)]
    ids = store.insert_many([make_trajectory(20, tag=i % 9) for i in range(150)], tokens=tokens)
    assert store.insert(make_trajectory(20), token="v3") == ids[3]  # idempotent retry
    per = [s.stats() for s in store.stores]
    assert all(p.timesteps <= 500 and p.evicted_trajectories > 0 for p in per)  # 1/3 each
    for k in range(K):  # every shard's data really is on its own server
        own = connect(cfg.redis.shard(k))
        assert int(own.hget(store.stores[k].keys.meta, "count")) == per[k].trajectories
    for _ in range(20):
        b = sampler.sample(24)
        assert b.mask.shape == (24, 8) and b.mask.all()
    assert all(r > 60 for r in sampler.rows), sampler.rows
    st = sampler.stats()
    assert st.sampled_windows == 480 and st.trajectories == sum(p.trajectories for p in per)


def test_one_shard_restarted_mid_run_costs_only_its_inserts(valkeys, make_trajectory):
    """Shard 1 stops while a writer inserts and a sampler samples: only shard 1's inserts
    wait (parked, then stored exactly once when it is back), sampling goes on from shards 0
    and 2, and nothing stored anywhere is lost (shard 1 persists)."""
    cfg = valkey_cfg(valkeys, max_traj_steps=20)
    shape = SampleShape(batch_size=12, max_seq_len=8)
    clients = connect_shards(cfg)
    store = ShardedStore(clients, cfg, retry_s=0.05, max_retry_s=0.2)
    sampler = ShardedSampler(clients, cfg, shape, seed=0, retry_s=0.05, max_retry_s=0.2)
    tokens = [f"f{i}" for i in range(240)]
    for i in range(80):
        store.insert(make_trajectory(10, tag=i % 9), token=tokens[i])
    sampler.sample(12)
    valkeys[1].stop()
    rows_before = list(sampler.rows)
    for i in range(80, 160):
        store.insert(make_trajectory(10, tag=i % 9), token=tokens[i])
        if i % 8 == 0:
            assert len(sampler.sample(12).mask) == 12  # from the live shards
    parked = store.parked
    assert parked == sum(1 for t in tokens[80:160] if shard_of(t, K) == 1) and parked > 0
    assert store.health.outages >= 1 and sampler.health.outages >= 1
    assert sampler.rows[1] == rows_before[1]  # nothing drawn from the dead shard
    valkeys[1].start()
    for i in range(160, 240):
        store.insert(make_trajectory(10, tag=i % 9), token=tokens[i])
        if i % 8 == 0:
            sampler.sample(12)
    deadline = time.monotonic() + 5  # the backlog is retried when due (backoff <= 0.2 s)
    while store.parked and time.monotonic() < deadline:
        time.sleep(0.05)
        store.flush()
    assert store.parked == 0
    st = store.stats()
    assert st.trajectories == st.inserted_trajectories == 240  # each exactly once
    # a retry of everything stores nothing new
    store.insert_many([make_trajectory(10) for _ in tokens], tokens=tokens)
    assert store.stats().inserted_trajectories == 240
    assert sampler.rows[1] > rows_before[1]  # shard 1 is sampled again


def test_prefill_partition_on_shard_0_mixes_with_sharded_fresh_data(valkeys, make_trajectory):
    from replay_service import ReplayStore
    from replay_service.config import PrefillConfig
    from replay_service.prefill import make_mixed_sampler, partition_config

    cfg = valkey_cfg(
        valkeys,
        max_traj_steps=20,
        prefill=PrefillConfig(paths=["unused"], mix=0.5),
    )
    clients = connect_shards(cfg)
    pre = partition_config(cfg)
    assert pre.redis.shards == [] and pre.redis.url == cfg.redis.url  # on shard 0 only
    ReplayStore(clients[0], pre).insert_many([make_trajectory(10, tag=7) for _ in range(5)])
    ShardedStore(clients, cfg).insert_many([make_trajectory(10, tag=1) for _ in range(30)])
    mixed = make_mixed_sampler(cfg, SampleShape(batch_size=20, max_seq_len=8), clients[0], seed=0)
    assert isinstance(mixed.fresh, ShardedSampler)
    tags = mixed.sample(20).obs["observation"][:, 0, 0] // 1000
    assert sorted(set(tags.tolist())) == [1, 7] and (tags == 7).sum() == 10
    for _ in range(4):
        mixed.sample(20)
    assert sum(mixed.fresh.rows) == 50 and all(r > 0 for r in mixed.fresh.rows)


# -- the run's wiring: K embedded servers, sharded writers and samplers ---------------------


def test_a_run_with_embedded_shards_gets_sharded_workers(make_trajectory):
    from deploy.config import compose
    from deploy.run.builder import make_sampler, make_writer, sample_shape
    from deploy.run.endpoint import replay_endpoint

    cfg = compose(["experiment=bandit", "deploy.embedded_shards=3", "replay.redis.namespace=k3"])
    cfg.validate()
    with replay_endpoint(cfg) as run_cfg:
        r = run_cfg.replay
        assert r.num_shards == 3 and len(set(r.redis.urls)) == 3 and r.redis.password
        shape = sample_shape(run_cfg.learner)
        writer, sampler = make_writer(r, shape), make_sampler(r, shape, seed=0)
        assert isinstance(writer, ShardedStore) and isinstance(sampler, ShardedSampler)
        assert sampler.shape == SampleShape(cfg.learner.batch_size, cfg.learner.max_seq_len)
        spi_free = dataclasses.replace(r, rate_limit=RateLimitConfig(min_size_steps=1))
        writer, sampler = make_writer(spi_free, shape), make_sampler(spi_free, shape, seed=0)
        writer.insert_many([make_trajectory(6) for _ in range(30)])
        assert all(s.stats().trajectories > 0 for s in writer.stores)
        assert len(sampler.sample(4).mask) == 4
    # one server (the default) builds exactly today's classes
    with replay_endpoint(compose(["experiment=bandit"])) as one:
        from replay_service import ReplayStore, Sampler

        assert one.replay.num_shards == 1
        shape = sample_shape(one.learner)
        assert type(make_writer(one.replay, shape)) is ReplayStore
        assert type(make_sampler(one.replay, shape, seed=0)) is Sampler


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["deploy.embedded_shards=0"], "deploy.embedded_shards"),
        (["deploy.embedded_shards=2", "replay.redis.url=redis://a:1"], "deploy.embedded_shards"),
        (["deploy.embedded_shards=4", "replay.max_steps=30000"], "replay.max_traj_steps"),
        (["deploy.embedded_shards=2", "run.dump_replay_on_exit=true"], "run.dump_replay_on_exit"),
    ],
)
def test_bad_embedded_shard_settings_fail_at_start_up(overrides, field):
    from deploy.config import compose

    cfg = compose(["experiment=bandit", *overrides])
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_training_run_over_three_shards_survives_one_restarted(tmp_path):
    """The distributed path (Ray rollout actors -> 3 Valkey shards -> Ray learner) while
    shard 1 is stopped for 3 s mid-run and started again (it persists): the run finishes
    with no actor or learner restart, the learner counted the outage, every rollout the
    actors reported is stored exactly once, and shard 1 kept its data and took new inserts."""
    import threading

    import torch

    from deploy.config import compose
    from deploy.run.scrape import read_dump
    from deploy.train import run_training
    from replay_service.lua import Keys
    from replay_service.stats import read_stats

    torch.set_num_threads(1)
    pw = "shard-run-password"
    servers = [
        EmbeddedServer(password=pw, data_dir=tmp_path / "v1" if k == 1 else None).start()
        for k in range(K)
    ]
    ns, keys = "shardrun", Keys("shardrun")
    urls = ",".join(f"'{s.url}'" for s in servers[1:])
    cfg = compose(
        [
            "experiment=tmaze",
            "run.max_env_steps=0",
            # long enough to outlast the 3 s outage with time to spare at ~70 updates/s
            "run.max_updates=600",
            "run.max_seconds=120",
            "run.updates_per_call=10",
            "run.eval_every_s=1000",
            "run.eval_episodes=4",
            "run.final_eval_episodes=4",
            "run.plot=false",
            "actors.num_actors=2",
            "deploy.num_cpus=2",
            "replay.rate_limit.min_size_steps=300",
            f"replay.redis.url={servers[0].url}",
            f"replay.redis.shards=[{urls}]",
            f"replay.redis.password={pw}",
            f"replay.redis.namespace={ns}",
            "replay.shard_backlog=512",  # this run's actors write fast: park all of shard 1's
        ]
    )
    clients = [connect(RedisConfig(url=s.url, password=pw, retries=0)) for s in servers]
    seen: dict[str, int] = {}

    def outage() -> None:
        t_end = time.monotonic() + 90
        while time.monotonic() < t_end and read_stats(clients[1], keys).trajectories < 10:
            time.sleep(0.1)
        seen["before"] = read_stats(clients[1], keys).inserted_trajectories
        servers[1].stop()
        time.sleep(3.0)
        servers[1].start()
        seen["restarted"] = 1

    fault = threading.Thread(target=outage, daemon=True)
    fault.start()
    try:
        summary = run_training(cfg, tmp_path / "run")
        fault.join(timeout=30)
        per = [read_stats(c, keys) for c in clients]
    finally:
        for s in servers:
            s.stop()
    assert seen.get("restarted") == 1, seen
    assert summary["updates"] >= 150 and summary["actor_restarts"] == 0
    assert summary["learner_restarts"] == 0
    assert per[1].inserted_trajectories > seen["before"] > 0  # kept its data, took new ones
    assert all(p.trajectories == p.inserted_trajectories > 0 for p in per)  # nothing evicted
    assert all(p.sampled_windows > 0 for p in per)
    stored = sum(p.trajectories for p in per)
    assert stored >= summary["actor_policy_lag"]["rollouts"]  # every rollout reported stored
    dump = read_dump(tmp_path / "run" / "metrics_final.prom")
    outages = [
        float(line.split()[-1])
        for text in dump.values()
        for line in text.splitlines()
        if line.startswith("amago_replay_shard_outages")
    ]
    assert outages and max(outages) >= 1, outages
