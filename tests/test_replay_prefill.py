"""Offline data: replay dumps (write, export, read back through the codec, hostile files
skipped and counted) and the prefill partition (loaded at start-up, left alone by FIFO
eviction and the rate limiter, mixed into batches at the configured share). fakeredis only."""

from __future__ import annotations

import json
import struct
import uuid

import fakeredis
import numpy as np
import pytest

from common.config_utils import ConfigError
from common.records import Trajectory
from common.spec import ArraySpec, EnvSpec
from replay_service import (
    RateLimitConfig,
    RedisConfig,
    ReplayConfig,
    ReplayStore,
    Sampler,
    SampleShape,
)
from replay_service.config import PrefillConfig
from replay_service.dump import (
    MANIFEST,
    RUN_DUMP_DIR,
    DumpError,
    dump_namespace,
    read_dump,
    read_manifest,
    write_dump,
)
from replay_service.prefill import (
    MixedSampler,
    check_dumps,
    concat_batches,
    fresh_rate_limit,
    load_prefill,
    make_mixed_sampler,
    partition_config,
)

SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 2, True, 20)
PREFILL_VERSION = 1000  # policy_version of prefilled records: tells their rows apart


@pytest.fixture
def client():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


#: What the learner samples: 8 windows of at most 8 timesteps.
SHAPE = SampleShape(batch_size=8, max_seq_len=8)


def make_cfg(paths=(), mix=0.0, **kw) -> ReplayConfig:
    kw.setdefault("max_traj_steps", 50)
    ns = f"t{uuid.uuid4().hex[:8]}"
    return ReplayConfig(
        redis=RedisConfig(url="redis://127.0.0.1:1", namespace=ns),
        prefill=PrefillConfig(paths=[str(p) for p in paths], mix=mix),
        **kw,
    )


def prefill_data(make_trajectory, n=20) -> list[Trajectory]:
    return [make_trajectory(5 + i % 7, tag=i, version=PREFILL_VERSION) for i in range(n)]


def same(a: Trajectory, b: Trajectory) -> bool:
    aa, bb = a.arrays(), b.arrays()
    return (
        aa.keys() == bb.keys()
        and all(np.array_equal(aa[k], bb[k]) for k in aa)
        and (a.meta == b.meta)
    )


# -- dump files ---------------------------------------------------------------------------


def test_dump_round_trip(tmp_path, make_trajectory):
    trajs = prefill_data(make_trajectory)
    s = write_dump(trajs, tmp_path / "d", spec=SPEC, compression="zstd")
    assert (s.records, s.timesteps) == (20, sum(len(t) for t in trajs))
    m = read_manifest(tmp_path / "d")
    assert m.spec == SPEC and m.records == 20
    back, summary = read_dump(tmp_path / "d")
    assert summary.rejected == {} and len(back) == 20
    assert all(same(a, b) for a, b in zip(trajs, back))


def test_dump_refuses_a_layout_unlike_the_first_record(tmp_path, make_trajectory):
    trajs = [make_trajectory(5), make_trajectory(5, obs_dim=4), make_trajectory(6)]
    s = write_dump(trajs, tmp_path / "d")
    assert s.records == 2 and s.rejected == {"layout": 1}
    with pytest.raises(DumpError, match="not an empty directory"):
        write_dump(trajs, tmp_path / "d")


def _frames(path):
    """(offset, length) of each record frame of a shard."""
    data = path.read_bytes()
    out, off = [], 8
    while off < len(data):
        (n,) = struct.unpack_from("<Q", data, off)
        out.append((off + 8, n))
        off += 8 + n
    return out


def test_corrupted_dump_records_are_skipped_and_counted(tmp_path, make_trajectory):
    trajs = prefill_data(make_trajectory, 6)
    write_dump(trajs, tmp_path / "d", spec=SPEC)
    shard = tmp_path / "d" / "shard-00000.amr"
    frames = _frames(shard)
    data = bytearray(shard.read_bytes())
    off, n = frames[1]
    data[off + n // 2] ^= 0xFF  # a flipped bit inside record 1: checksum
    off, _ = frames[3]
    data[off : off + 3] = b"\xc1\xc1\xc1"  # garbage at the start of record 3
    shard.write_bytes(bytes(data[: frames[5][0] + 10]))  # record 5 cut short
    back, summary = read_dump(tmp_path / "d")
    assert [t.meta.actor_id for t in back] == [0, 2, 4]
    assert summary.rejected.get("checksum", 0) >= 1
    assert sum(summary.rejected.values()) == 3
    assert summary.rejected.get("truncated", 0) >= 1  # the cut record 5


def test_hostile_frame_length_is_bounded_before_reading(tmp_path, make_trajectory):
    write_dump(prefill_data(make_trajectory, 2), tmp_path / "d", spec=SPEC)
    shard = tmp_path / "d" / "shard-00000.amr"
    data = bytearray(shard.read_bytes())
    data[8:16] = struct.pack("<Q", 2**62)
    shard.write_bytes(bytes(data))
    back, summary = read_dump(tmp_path / "d", max_record_bytes=2**20)
    assert back == [] and summary.rejected == {"oversize": 1}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(format="zip"), "not an amago-replay-dump manifest"),
        (lambda d: d.update(version=99), "format version 99"),
        (lambda d: d["shards"][0].update(file="../../etc/passwd"), "shard-NNNNN.amr"),
        (lambda d: d.update(records=-1), "'records' must be an integer"),
        (lambda d: d["layout"].update(obs=[1]), "layout.obs must be a map"),
        (lambda d: d.update(spec={"obs": 3}), "malformed spec"),
    ],
)
def test_hostile_manifests_are_refused_in_one_line(tmp_path, make_trajectory, mutate, match):
    write_dump(prefill_data(make_trajectory, 2), tmp_path / "d", spec=SPEC)
    path = tmp_path / "d" / MANIFEST
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DumpError, match=match) as e:
        read_manifest(tmp_path / "d")
    assert "\n" not in str(e.value)


def test_not_a_dump(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DumpError, match="not a replay dump"):
        read_manifest(tmp_path / "x")
    (tmp_path / "x" / MANIFEST).write_text("{not json")
    with pytest.raises(DumpError, match="not JSON"):
        read_manifest(tmp_path / "x")
    with pytest.raises(DumpError, match="no such file"):
        read_manifest(tmp_path / "nope")


def test_missing_shard_is_counted(tmp_path, make_trajectory):
    write_dump(prefill_data(make_trajectory, 2), tmp_path / "d", spec=SPEC)
    (tmp_path / "d" / "shard-00000.amr").unlink()
    back, summary = read_dump(tmp_path / "d")
    assert back == [] and summary.rejected == {"missing": 1}


def test_export_live_namespace_then_reload(tmp_path, client, make_trajectory):
    cfg = make_cfg(max_steps=60)
    store = ReplayStore(client, cfg)
    for i in range(12):  # 12 x 8 steps > 60: the oldest are evicted
        store.insert(make_trajectory(8, tag=i))
    client.set(cfg.redis.namespace and store.keys.blob(11), b"garbage")  # a rotten blob
    s = dump_namespace(client, cfg.redis.namespace, tmp_path / "run" / RUN_DUMP_DIR, spec=SPEC)
    assert s.records == 6 and sum(s.rejected.values()) == 1  # ids 5..10 kept, 11 garbage
    back, _ = read_dump(tmp_path / "run")  # a run directory holding the dump
    assert [t.meta.actor_id for t in back] == list(range(5, 11))


# -- config and start-up checks -------------------------------------------------------------


def test_prefill_config_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"'prefill\.mix': must be a number in \[0, 1\]"):
        make_cfg(["x"], mix=1.5).validate()
    with pytest.raises(ConfigError, match=r"'prefill\.paths': empty, but mix=0.25"):
        make_cfg([], mix=0.25).validate()
    make_cfg([], mix=0.0).validate()
    make_cfg(["x"], mix=0.0).validate()  # off: the paths are not read


def test_spec_mismatch_is_refused_at_start_up_in_one_line(tmp_path, make_trajectory):
    write_dump([make_trajectory(5, obs_dim=4)], tmp_path / "d")
    cfg = make_cfg([tmp_path / "d"], mix=0.5)
    with pytest.raises(ConfigError) as e:
        check_dumps(cfg, SPEC)
    msg = str(e.value)
    assert msg.startswith("config field 'replay.prefill.paths[0]': ") and "\n" not in msg
    assert "[4] float32" in msg and "[3] float32" in msg
    cont = EnvSpec(SPEC.obs, 2, False, 20)
    write_dump([make_trajectory(5)], tmp_path / "e", spec=SPEC)
    with pytest.raises(ConfigError, match="actions are discrete, the env's continuous"):
        check_dumps(make_cfg([tmp_path / "e"], mix=0.5), cont)
    with pytest.raises(ConfigError, match=r"paths\[0\]': .*no such file"):
        check_dumps(make_cfg([tmp_path / "nope"], mix=0.5), SPEC)


def test_mix_one_turns_the_fresh_limiter_off():
    cfg = make_cfg(["x"], mix=1.0, rate_limit=RateLimitConfig(samples_per_insert=8.0))
    out, why = fresh_rate_limit(cfg)
    assert out.rate_limit.samples_per_insert == 0 and "unsampled" in why
    cfg = make_cfg(["x"], mix=0.5, rate_limit=RateLimitConfig(samples_per_insert=8.0))
    assert fresh_rate_limit(cfg) == (cfg, None)


# -- the prefill partition ------------------------------------------------------------------


def test_load_skips_bad_records_keeps_repeats(tmp_path, client, make_trajectory):
    trajs = prefill_data(make_trajectory, 10)
    write_dump(trajs, tmp_path / "a", spec=SPEC)
    twice = [trajs[0], trajs[0], trajs[1]]  # identical rollouts weigh as often as they occur
    write_dump(twice + [make_trajectory(80, tag=99)], tmp_path / "b", spec=SPEC)
    shard = tmp_path / "a" / "shard-00000.amr"
    data = bytearray(shard.read_bytes())
    off, n = _frames(shard)[0]
    data[off + n - 1] ^= 1  # record 0 of dump a: checksum
    shard.write_bytes(bytes(data))
    cfg = make_cfg([tmp_path / "a", tmp_path / "b"], mix=0.5)
    report = load_prefill(client, cfg, SPEC)
    assert report.trajectories == 9 + 3, report  # a: 9 usable; b: 3 (+ 1 too long)
    assert report.rejected == {"checksum": 1, "oversize": 1}
    pstore = ReplayStore(client, partition_config(cfg))
    assert pstore.stats().rejected == {"checksum": 1, "oversize": 1}
    again = load_prefill(client, cfg, SPEC)  # start-up again (a resumed run): reloaded
    assert again.trajectories == 12


def test_fifo_eviction_and_the_rate_limiter_leave_the_prefill_alone(
    tmp_path, client, make_trajectory
):
    write_dump(prefill_data(make_trajectory), tmp_path / "d", spec=SPEC)
    cfg = make_cfg(
        [tmp_path / "d"],
        mix=0.5,
        max_steps=60,  # far less than the prefill holds (~160 steps)
        rate_limit=RateLimitConfig(samples_per_insert=1.0, min_size_steps=10),
        sample_timeout_s=0.2,
    )
    report = load_prefill(client, cfg, SPEC)
    store = ReplayStore(client, cfg, SHAPE)
    for i in range(30):  # fresh inserts run FIFO eviction on the fresh partition
        store.insert(make_trajectory(8, tag=500 + i, version=0), timeout_s=0)
        if store.stats().timesteps >= 50:
            break
    pstats = ReplayStore(client, partition_config(cfg)).stats()
    assert (pstats.trajectories, pstats.evicted_trajectories) == (report.trajectories, 0)
    sampler = make_mixed_sampler(cfg, SHAPE, client, seed=0, spec=SPEC)
    # the prefill sampler alone never waits: its partition has no limiter
    for _ in range(50):
        b = sampler.prefill.sample(8, timeout_s=0)
        assert (b.policy_version == PREFILL_VERSION).all()
    # mixed batches stop when the FRESH ratio is used up (fresh sampled <= spi * inserted)
    with pytest.raises(Exception, match="ratio is used up|waited"):
        for _ in range(100):
            sampler.sample(8, timeout_s=0.05)
    fresh = store.stats()
    assert fresh.sampled_timesteps <= 1.0 * fresh.inserted_timesteps + cfg.effective_error_buffer(
        SHAPE
    )


def test_mix_one_samples_prefill_only_with_no_fresh_data(tmp_path, client, make_trajectory):
    write_dump(prefill_data(make_trajectory), tmp_path / "d", spec=SPEC)
    cfg = make_cfg([tmp_path / "d"], mix=1.0, rate_limit=RateLimitConfig(samples_per_insert=4.0))
    load_prefill(client, cfg, SPEC)
    sampler = make_mixed_sampler(cfg, SHAPE, client, seed=0, spec=SPEC)
    for _ in range(20):  # the fresh partition is empty: nothing may wait for it
        b = sampler.sample(8, timeout_s=0)
        assert b.shape == (8, 8) and (b.policy_version == PREFILL_VERSION).all()
    assert sampler.rows == {"prefill": 160, "fresh": 0}


@pytest.mark.parametrize("mix", [0.25, 0.3])
def test_batches_hold_the_configured_mix(tmp_path, client, make_trajectory, mix):
    write_dump(prefill_data(make_trajectory), tmp_path / "d", spec=SPEC)
    cfg = make_cfg([tmp_path / "d"], mix=mix)
    load_prefill(client, cfg, SPEC)
    store = ReplayStore(client, cfg)
    for i in range(10):
        store.insert(make_trajectory(6 + i, tag=100 + i, version=0))
    sampler = make_mixed_sampler(cfg, SHAPE, client, seed=1, spec=SPEC)
    B, n = 10, 400
    counts = []
    for _ in range(n):
        b = sampler.sample(B)
        k = int((b.policy_version == PREFILL_VERSION).sum())
        assert (b.policy_version[:k] == PREFILL_VERSION).all()  # prefill rows first
        counts.append(k)
    assert set(counts) <= {int(np.floor(mix * B)), int(np.ceil(mix * B))}
    share = np.mean(counts) / B
    assert abs(share - mix) < 0.02, share


def test_concat_pads_to_the_longest(client, make_trajectory, tmp_path):
    from common.records import collate

    a = collate([(make_trajectory(5), 0, 5)], 5)
    b = collate([(make_trajectory(8), 0, 8), (make_trajectory(3), 0, 3)], 8)
    c = concat_batches([a, b])
    assert c.shape == (3, 8)
    assert c.mask.sum(1).tolist() == [5, 8, 3]
    assert (c.obs["observation"][0, 5:] == 0).all()


def test_mixed_sampler_stats_are_the_fresh_partitions(tmp_path, client, make_trajectory):
    write_dump(prefill_data(make_trajectory), tmp_path / "d", spec=SPEC)
    cfg = make_cfg([tmp_path / "d"], mix=0.5)
    load_prefill(client, cfg, SPEC)
    store = ReplayStore(client, cfg)
    store.insert(make_trajectory(6, tag=1, version=0))
    fresh = Sampler(client, cfg, SHAPE, spec=SPEC)
    prefill = Sampler(client, partition_config(cfg), SHAPE, spec=SPEC)
    s = MixedSampler(fresh, prefill, 0.5)
    s.sample(4)
    st = s.stats()
    assert st.trajectories == 1 and s.prefill_stats().trajectories == 20
