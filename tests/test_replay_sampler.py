"""Replay sampler: windows, masks and padding, sampling frequencies, relabeling, corrupt blobs,
and the rate limiter end to end (fakeredis and an embedded Valkey server)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import numpy as np
import pytest

from common.records import Trajectory
from replay_service import (
    LimiterState,
    RateLimitConfig,
    RateLimits,
    RateLimitTimeout,
    RedisConfig,
    ReplayConfig,
    ReplayStore,
    Sampler,
    SampleShape,
    register_relabeler,
)

# Chi-square critical value for 2 degrees of freedom at p = 0.001.
CHI2_DF2_P001 = 13.82

#: What the learner samples in most tests: 24 windows of at most 4 timesteps.
W4 = SampleShape(batch_size=24, max_seq_len=4)


@pytest.fixture
def make_cfg(redis_backend, client):
    """``make_cfg(**fields)`` -> a ReplayConfig on a fresh namespace (deleted afterwards)."""
    made: list[ReplayConfig] = []

    def make(**kw) -> ReplayConfig:
        ns = f"t{uuid.uuid4().hex[:12]}"
        cfg = ReplayConfig(redis=RedisConfig(url=redis_backend.url, namespace=ns), **kw)
        made.append(cfg)
        return cfg

    yield make
    for cfg in made:  # clearing a namespace needs only its server (no limiter, no shape)
        ReplayStore(client, ReplayConfig(redis=cfg.redis)).clear()


# -- windows, masks, padding -------------------------------------------------------------


@pytest.mark.parametrize("pad, cache_mb", [(True, 0), (False, 0), (True, 64)])
def test_windows_stay_inside_trajectories_and_masks_match(
    client, make_cfg, make_trajectory, pad, cache_mb
):
    L = 8
    cfg = make_cfg(max_traj_steps=50, pad_to_max_seq_len=pad, sample_cache_mb=cache_mb)
    lengths = {1: 1, 2: 3, 3: 8, 4: 12, 5: 20}  # tag -> length; some shorter than L
    store = ReplayStore(client, cfg)
    for tag, n in lengths.items():
        store.insert(make_trajectory(n, tag=tag))
    sampler = Sampler(client, cfg, SampleShape(batch_size=24, max_seq_len=L), seed=1)
    starts: dict[int, set[int]] = {tag: set() for tag in lengths}
    for _ in range(60):
        b = sampler.sample(12, timeout_s=1)
        width = L if pad else int(b.mask.sum(1).max())
        assert b.shape == (12, width)
        assert b.obs["observation"].dtype == np.float32
        assert b.obs["observation"].shape == (12, width, 3)
        assert b.prev_action.dtype == np.float32 and b.prev_action.shape == (12, width, 2)
        assert b.time_idx.dtype == np.int64 and b.policy_version.dtype == np.int64
        assert b.mask.dtype == b.terminated.dtype == b.truncated.dtype == np.bool_
        for row in range(12):
            tag = int(b.policy_version[row])
            n = lengths[tag]
            w = min(n, L)
            m = b.mask[row]
            assert m[:w].all() and not m[w:].any()  # real prefix, then padding
            start = int(b.time_idx[row, 0])
            assert 0 <= start <= n - w  # never runs past the end
            starts[tag].add(start)
            t = np.arange(start, start + w)
            np.testing.assert_array_equal(b.time_idx[row, :w], t)
            np.testing.assert_array_equal(b.obs["observation"][row, :w, 0], tag * 1000 + t)
            np.testing.assert_array_equal(b.prev_reward[row, :w], t)
            np.testing.assert_array_equal(b.terminated[row, :w], t == n - 1)
            for arr in (
                b.obs["observation"],
                b.prev_action,
                b.prev_reward,
                b.time_idx,
                b.terminated,
            ):
                assert not arr[row, w:].any()  # padding is zeros
    assert starts[1] == starts[2] == starts[3] == {0}  # shorter than L: whole trajectory
    assert starts[5] == set(range(20 - L + 1))  # every full-length start occurs
    assert starts[4] == set(range(12 - L + 1))


def _frequencies(client, cfg, lengths, draws: int) -> np.ndarray:
    sampler = Sampler(client, cfg, W4, seed=7)
    counts = np.zeros(len(lengths))
    for _ in range(draws // 24):
        for v in sampler.sample(24, timeout_s=1).policy_version:
            counts[v] += 1
    return counts


@pytest.mark.parametrize("mode", ["uniform", "length"])
def test_sampling_frequencies(client, make_cfg, make_trajectory, mode):
    lengths = [5, 20, 50]
    cfg = make_cfg(sampling=mode)
    store = ReplayStore(client, cfg)
    for tag, n in enumerate(lengths):
        store.insert(make_trajectory(n, tag=tag))
    counts = _frequencies(client, cfg, lengths, draws=2400)
    p = np.full(3, 1 / 3) if mode == "uniform" else np.array(lengths) / sum(lengths)
    expected = p * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_DF2_P001, (counts, expected)
    # and the other hypothesis is clearly rejected
    q = np.array(lengths) / sum(lengths) if mode == "uniform" else np.full(3, 1 / 3)
    other = q * counts.sum()
    assert float(((counts - other) ** 2 / other).sum()) > 10 * CHI2_DF2_P001


def test_sampler_sees_new_data_and_evictions(client, make_cfg, make_trajectory):
    cfg = make_cfg(max_steps=40, max_traj_steps=10)
    store = ReplayStore(client, cfg)
    sampler = Sampler(client, cfg, W4)
    for tag in range(4):
        store.insert(make_trajectory(10, tag=tag))
    assert set(sampler.sample(48, timeout_s=1).policy_version.tolist()) == {0, 1, 2, 3}
    for tag in range(4, 8):
        store.insert(make_trajectory(10, tag=tag))
    assert set(sampler.sample(48, timeout_s=1).policy_version.tolist()) == {4, 5, 6, 7}
    store.clear()
    store.insert(make_trajectory(10, tag=9))  # ids restart at 0 under a new epoch
    assert set(sampler.sample(8, timeout_s=1).policy_version.tolist()) == {9}


# -- relabeling --------------------------------------------------------------------------


@register_relabeler("test_whole_trajectory_marker")
def _make_marker(bonus: float = 0.0):
    """Writes facts only the WHOLE trajectory knows into every step: its length and end tag."""

    def relabel(traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        assert isinstance(rng, np.random.Generator)
        n = len(traj)
        out = traj.window(0, n)
        out.prev_reward = np.full(n, n + bonus, np.float32)
        out.obs = {"observation": np.repeat(traj.obs["observation"][-1:], n, axis=0)}
        return out

    return relabel


def test_relabel_sees_the_whole_trajectory_before_windowing(client, make_cfg, make_trajectory):
    cfg = make_cfg(relabel="test_whole_trajectory_marker", relabel_kwargs={"bonus": 0.5})
    shape = SampleShape(batch_size=24, max_seq_len=5)
    store = ReplayStore(client, cfg)
    for tag, n in [(1, 30), (2, 17)]:
        store.insert(make_trajectory(n, tag=tag))
    b = Sampler(client, cfg, shape, seed=0).sample(16, timeout_s=1)
    for row in range(16):
        tag = int(b.policy_version[row])
        n = {1: 30, 2: 17}[tag]
        np.testing.assert_array_equal(b.prev_reward[row], n + 0.5)  # the full length, not 5
        np.testing.assert_array_equal(b.obs["observation"][row, :, 0], tag * 1000 + n - 1)
    # the stored data is untouched: the identity relabeler gives the raw rewards back
    raw = Sampler(
        client, dataclasses.replace(cfg, relabel="none", relabel_kwargs={}), shape, seed=0
    ).sample(4, timeout_s=1)
    assert (raw.prev_reward == raw.time_idx).all()


# -- corrupt blobs -----------------------------------------------------------------------


def test_corrupt_blobs_are_skipped_dropped_and_counted(client, make_cfg, make_trajectory):
    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    for tag in range(6):
        store.insert(make_trajectory(10, tag=tag))
    client.set(store.keys.blob(2), b"\x93garbage")  # truncated msgpack
    good = client.get(store.keys.blob(4))
    client.set(store.keys.blob(4), good[:-3])  # cut payload
    sampler = Sampler(client, cfg, W4, seed=0)
    seen: set[int] = set()
    for _ in range(10):
        b = sampler.sample(12, timeout_s=1)
        assert b.shape == (12, 4) and b.mask.all()
        seen |= set(b.policy_version.tolist())
    assert seen == {0, 1, 3, 5}
    s = store.stats()
    assert s.trajectories == 4 and s.dropped_trajectories == 2
    assert sum(s.corrupt.values()) == 2 and set(s.corrupt) <= {"truncated", "schema"}
    assert s.sampled_windows == 120 and s.sampled_timesteps == 480  # refunds were exact


def test_records_of_another_layout_are_skipped_not_dropped(client, make_cfg, make_trajectory):
    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    store.insert(make_trajectory(10, tag=1))
    sampler = Sampler(client, cfg, W4)
    sampler.sample(2, timeout_s=1)  # the first row fixes the layout: obs (3,), action (2,)
    store.insert(make_trajectory(10, tag=2, obs_dim=5))
    versions = set()
    for _ in range(10):
        b = sampler.sample(4, timeout_s=1)
        assert b.obs["observation"].shape == (4, 4, 3)
        versions |= set(b.policy_version.tolist())
    assert versions == {1}
    s = store.stats()
    assert s.corrupt == {"layout": 1} and s.trajectories == 2 and s.dropped_trajectories == 0


# -- rate limiter end to end -------------------------------------------------------------


#: What the learner samples in the rate-limiter tests: 2 windows of at most 5 timesteps.
LIMITED = SampleShape(batch_size=2, max_seq_len=5)


def _limited_cfg(make_cfg, spi: float, min_size: int, eb: float = -1.0, **kw) -> ReplayConfig:
    return make_cfg(
        max_traj_steps=10,
        rate_limit=RateLimitConfig(
            samples_per_insert=spi, min_size_steps=min_size, error_buffer=eb
        ),
        **kw,
    )


def test_rate_limiter_matches_the_reference_rules(client, make_cfg, make_trajectory):
    """A random interleaving of insert batches and samples, each either allowed or refused at
    once (timeout 0), must follow the pure Reverb-style rules step by step, FIFO eviction
    (capacity 60 timesteps) included."""
    cfg = _limited_cfg(make_cfg, spi=2.0, min_size=20, eb=15.0, max_steps=60)
    limits = RateLimits.from_config(cfg, LIMITED)
    store, sampler = ReplayStore(client, cfg, LIMITED), Sampler(client, cfg, LIMITED)
    rng = np.random.default_rng(0)
    n = k = 10  # every trajectory is 10 long; a sample is 2 windows of 5
    state = LimiterState()
    outcomes = {"insert": [0, 0], "sample": [0, 0]}  # [allowed, refused]
    for step in range(150):
        if rng.random() < 0.45:
            batch = int(rng.integers(1, 4))
            expected = 0  # records the rules let in, in order, before the first refusal
            while expected < batch and limits.can_insert(state, n):
                evict = n if (state.size + n) > 60 else 0
                state = LimiterState(
                    state.inserted + n, state.deleted + evict, state.sampled, state.count
                )
                expected += 1
            before = store.stats().inserted_trajectories
            try:
                store.insert_many([make_trajectory(n) for _ in range(batch)], timeout_s=0)
                refused = False
            except RateLimitTimeout:
                refused = True
            assert refused == (expected < batch), (step, "insert", state)
            assert store.stats().inserted_trajectories - before == expected
            outcomes["insert"][1 if refused else 0] += 1
        else:
            allowed = limits.can_sample(
                LimiterState(state.inserted, state.deleted, state.sampled, 1), k
            )
            try:
                sampler.sample(2, timeout_s=0)
                ok = True
            except RateLimitTimeout:
                ok = False
            assert ok == allowed, (step, "sample", state)
            if ok:
                state = LimiterState(state.inserted, state.deleted, state.sampled + k, 1)
            outcomes["sample"][0 if ok else 1] += 1
        s = store.stats()
        assert (s.inserted_timesteps, s.sampled_timesteps) == (state.inserted, state.sampled)
        assert s.timesteps == state.size <= 60
    assert min(min(v) for v in outcomes.values()) > 5, outcomes  # every branch exercised
    assert s.evicted_trajectories > 0
    assert abs(state.inserted * 2.0 - state.sampled - 40) <= 15 + 20  # ratio kept


def test_sample_blocks_until_min_size_then_unblocks(client, make_cfg, make_trajectory):
    cfg = _limited_cfg(make_cfg, spi=1.0, min_size=30)
    store, sampler = ReplayStore(client, cfg, LIMITED), Sampler(client, cfg, LIMITED)
    with pytest.raises(RateLimitTimeout, match="empty"):
        sampler.sample(2, timeout_s=0.05)
    store.insert(make_trajectory(10))
    with pytest.raises(RateLimitTimeout, match="min_size_steps"):
        sampler.sample(2, timeout_s=0.05)
    result: list = []
    th = threading.Thread(target=lambda: result.append(sampler.sample(2, timeout_s=10)))
    th.start()
    time.sleep(0.1)
    assert th.is_alive()  # still waiting: 10 < 30 timesteps
    store.insert(make_trajectory(10))
    store.insert(make_trajectory(10))
    th.join(timeout=10)
    assert not th.is_alive() and result[0].shape == (2, 5)
    assert store.stats().sampled_timesteps == 10  # the timeouts counted nothing


def test_insert_blocks_while_samples_lag_then_unblocks(client, make_cfg, make_trajectory):
    cfg = _limited_cfg(make_cfg, spi=1.0, min_size=10)  # auto buffer (10 + 10) / 2 = 10
    store, sampler = ReplayStore(client, cfg, LIMITED), Sampler(client, cfg, LIMITED)
    store.insert(make_trajectory(10))  # free: below min size
    store.insert(make_trajectory(10))  # (10 + 10) * 1 - 0 = 20 <= max_diff 20: allowed
    with pytest.raises(RateLimitTimeout, match="sampling lags"):  # 30 - 0 > 20
        store.insert(make_trajectory(10), timeout_s=0.05)
    done = threading.Event()
    th = threading.Thread(
        target=lambda: (store.insert(make_trajectory(10), timeout_s=10), done.set())
    )
    th.start()
    time.sleep(0.1)
    assert not done.is_set()
    sampler.sample(2, timeout_s=1)  # takes 10 sampled timesteps
    th.join(timeout=10)
    assert done.is_set()
    s = store.stats()
    assert (s.inserted_timesteps, s.sampled_timesteps) == (30, 10)


def test_sample_blocks_when_the_ratio_is_used_up_and_large_ratios_work(
    client, make_cfg, make_trajectory
):
    spi = 250.0  # AMAGO-like: 250 sampled sequence-timesteps per collected timestep
    cfg = _limited_cfg(make_cfg, spi=spi, min_size=10)
    limits = RateLimits.from_config(cfg, LIMITED)
    store, sampler = ReplayStore(client, cfg, LIMITED), Sampler(client, cfg, LIMITED)
    store.insert(make_trajectory(10))
    # expected number of 10-step samples before the ratio is used up, from the pure rules
    state, expected = LimiterState(10, 0, 0, 1), 0
    while limits.can_sample(state, 10):
        state = LimiterState(10, 0, state.sampled + 10, 1)
        expected += 1
    assert expected > 100
    for _ in range(expected):
        sampler.sample(2, timeout_s=0)
    with pytest.raises(RateLimitTimeout, match="ratio"):
        sampler.sample(2, timeout_s=0.02)
    store.insert(make_trajectory(10), timeout_s=0)  # unblocks ~250 more samples
    for _ in range(200):
        sampler.sample(2, timeout_s=0)
    s = store.stats()
    assert s.sampled_timesteps == 10 * (expected + 200)
    assert s.samples_per_insert == pytest.approx(s.sampled_timesteps / 20)


def test_large_batches_are_reserved_in_chunks(client, make_cfg, make_trajectory):
    cfg = _limited_cfg(make_cfg, spi=20.0, min_size=10)  # buffer (200 + 10) / 2 = 105
    store, sampler = ReplayStore(client, cfg, LIMITED), Sampler(client, cfg, LIMITED)
    store.insert(make_trajectory(10), timeout_s=0)
    b = sampler.sample(7, timeout_s=0)  # 7 windows > batch_size 2: reserved 2 + 2 + 2 + 1
    assert b.shape == (7, 5)
    assert store.stats().sampled_timesteps == 35


# -- records that break relabeling, windowing or collation; the env spec -------------------


@register_relabeler("test_faulty")
def _make_faulty():
    """Identity, except for the records whose actor_id names a failure."""

    def relabel(traj: Trajectory, rng: np.random.Generator) -> Trajectory:
        tag = traj.meta.actor_id
        if tag == 101:
            raise KeyError("no such reward function")
        out = traj.window(0, len(traj))
        if tag == 102:
            out.meta.policy_version = 2**63  # does not fit the int64 version column
        elif tag == 103:
            out.prev_reward = out.prev_reward[:-1]  # shorter than the other arrays
        elif tag == 104:
            out = traj.window(0, 0)  # no timesteps
        elif tag == 105:
            return "not a trajectory"  # type: ignore[return-value]
        return out

    return relabel


def _namespace_totals(client, keys) -> tuple[int, int, int]:
    """(count, steps, bytes) summed straight from the info hash."""
    from replay_service.lua import parse_info

    vals = [parse_info(v) for v in client.hgetall(keys.info).values()]
    return len(vals), sum(v[0] for v in vals), sum(v[1] for v in vals)


def _assert_totals(client, store) -> None:
    s = store.stats()
    assert (s.trajectories, s.timesteps, s.bytes) == _namespace_totals(client, store.keys)


def test_records_that_break_relabel_or_collate_are_skipped_then_dropped(
    client, make_cfg, make_trajectory
):
    cfg = make_cfg(relabel="test_faulty")
    store = ReplayStore(client, cfg)
    for tag in [0, 101, 1, 102, 2, 103, 3, 104, 105]:
        store.insert(make_trajectory(10, tag=tag))
    sampler = Sampler(client, cfg, W4, seed=0)
    rows = 0
    for _ in range(40):
        b = sampler.sample(6, timeout_s=1)  # never raises
        assert b.shape == (6, 4) and b.mask.all()
        assert set(b.policy_version.tolist()) <= {0, 1, 2, 3}
        rows += 6
    s = store.stats()
    assert (s.trajectories, s.timesteps, s.dropped_trajectories) == (4, 40, 5)
    # each bad record failed twice (counted twice), the second time it was dropped
    assert s.corrupt == {"relabel": 2, "collate": 8}
    assert (s.sampled_windows, s.sampled_timesteps) == (rows, 4 * rows)  # refunds exact
    _assert_totals(client, store)


def test_a_collation_failure_is_isolated_to_its_record(
    client, make_cfg, make_trajectory, monkeypatch
):
    import replay_service.sampler as sampler_module

    real = sampler_module.collate

    def picky(windows, length):
        if any(t.meta.actor_id == 7 for t, _, _ in windows):
            raise RuntimeError("cannot collate this one")
        return real(windows, length)

    monkeypatch.setattr(sampler_module, "collate", picky)
    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    for tag in (1, 7, 2):
        store.insert(make_trajectory(10, tag=tag))
    sampler = Sampler(client, cfg, W4, seed=0)
    for _ in range(20):
        assert set(sampler.sample(4, timeout_s=1).policy_version.tolist()) <= {1, 2}
    s = store.stats()
    assert s.trajectories == 2 and s.dropped_trajectories == 1 and s.corrupt == {"collate": 2}
    _assert_totals(client, store)


def test_a_version_beyond_int64_never_crashes_the_sampler(client, make_cfg, make_trajectory):
    import msgpack

    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    for tag in range(3):
        store.insert(make_trajectory(10, tag=tag))
    doc = msgpack.unpackb(client.get(store.keys.blob(1)), raw=False)
    doc["meta"]["policy_version"] = 2**63  # valid msgpack (uint64); the codec may refuse it
    client.set(store.keys.blob(1), msgpack.packb(doc, use_bin_type=True))
    sampler = Sampler(client, cfg, W4, seed=0)
    for _ in range(20):
        assert set(sampler.sample(4, timeout_s=1).policy_version.tolist()) <= {0, 2}
    s = store.stats()
    assert s.trajectories == 2 and s.dropped_trajectories == 1
    assert set(s.corrupt) <= {"collate", "schema"}  # refused at batching, or by the codec


def _spec(obs_dim: int = 3, action_dim: int = 2, extras=None):
    from common.spec import ArraySpec, EnvSpec

    return EnvSpec(
        obs={"observation": ArraySpec((obs_dim,), "float32")},
        action_dim=action_dim,
        discrete=True,
        max_episode_steps=100,
        extras=extras or {},
    )


def test_the_env_spec_fixes_the_layout_not_the_first_row(client, make_cfg, make_trajectory):
    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    store.insert(make_trajectory(10, tag=9, obs_dim=5))  # odd record, drawn first
    sampler = Sampler(client, cfg, W4, seed=0, spec=_spec())
    store.insert(make_trajectory(10, tag=1))
    store.insert(make_trajectory(10, tag=2, action_dim=3))  # odd action size
    versions = set()
    for _ in range(20):
        b = sampler.sample(4, timeout_s=1)
        assert b.obs["observation"].shape == (4, 4, 3) and b.prev_action.shape == (4, 4, 2)
        versions |= set(b.policy_version.tolist())
    assert versions == {1}
    s = store.stats()
    assert s.corrupt == {"schema": 4} and s.trajectories == 1 and s.dropped_trajectories == 2
    _assert_totals(client, store)


def test_the_env_spec_checks_extras(client, make_cfg, make_trajectory):
    from common.spec import ArraySpec

    cfg = make_cfg()
    store = ReplayStore(client, cfg)
    good = make_trajectory(10, tag=1)
    good.extras = {"achieved": np.zeros((10, 1, 2), np.float32)}
    store.insert(good)
    zero_width = make_trajectory(10, tag=2)
    zero_width.extras = {"achieved": np.zeros((10, 1, 0), np.float32)}
    store.insert(zero_width)
    store.insert(make_trajectory(10, tag=3))  # no extras at all
    spec = _spec(extras={"achieved": ArraySpec((1, 2), "float32")})
    sampler = Sampler(client, cfg, W4, seed=0, spec=spec)
    for _ in range(20):
        assert set(sampler.sample(4, timeout_s=1).policy_version.tolist()) == {1}
    s = store.stats()
    assert s.corrupt == {"schema": 4} and s.trajectories == 1


# -- vanished blobs, server rewinds ----------------------------------------------------------


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_index_entries_without_their_blob_are_removed_and_totals_repaired(
    client, make_cfg, make_trajectory, cache_mb
):
    cfg = make_cfg(sample_cache_mb=cache_mb)
    store = ReplayStore(client, cfg)
    for tag in range(6):
        store.insert(make_trajectory(10 + tag, tag=tag))
    client.delete(store.keys.blob(2), store.keys.blob(4))  # e.g. an evicting external server
    sampler = Sampler(client, cfg, W4, seed=0)
    for _ in range(20):
        assert set(sampler.sample(6, timeout_s=1).policy_version.tolist()) <= {0, 1, 3, 5}
    s = store.stats()
    assert (s.trajectories, s.timesteps) == (4, 10 + 11 + 13 + 15)
    assert s.dropped_trajectories == 2 and s.corrupt == {"missing": 2}
    assert s.evicted_trajectories == 0
    assert sorted(int(k) for k in client.hkeys(store.keys.info)) == [0, 1, 3, 5]
    _assert_totals(client, store)
    # the insert tokens of the removed records stay known (a retry is still a duplicate)
    assert client.hlen(store.keys.tokens) == 4


def _snapshot(client, prefix: str) -> dict:
    """Every key of a namespace (strings and hashes) as it is now."""
    out = {}
    for key in client.scan_iter(match=prefix + "*"):
        if client.type(key) == b"hash":
            out[key] = ("hash", client.hgetall(key))
        else:
            out[key] = ("string", client.get(key), client.pttl(key))
    return out


def _rewind(client, prefix: str, snap: dict) -> None:
    """Put the namespace back into the snapshot's state (a restart from an older AOF/RDB)."""
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    for key, (kind, value, *rest) in snap.items():
        if kind == "hash":
            client.hset(key, mapping=value)
        else:
            ttl = rest[0]
            client.set(key, value, px=ttl if ttl and ttl > 0 else None)


@pytest.mark.parametrize("reinsert", [0, 3, 6])
def test_a_rewind_to_older_data_invalidates_the_sampler_cache(
    client, make_cfg, make_trajectory, reinsert
):
    cfg = make_cfg(sample_cache_mb=64)
    store = ReplayStore(client, cfg)
    for tag in range(5):
        store.insert(make_trajectory(10, tag=tag))
    snap = _snapshot(client, store.keys.prefix)
    for tag in range(5, 8):
        store.insert(make_trajectory(10, tag=tag))
    sampler = Sampler(client, cfg, W4, seed=0)
    assert set(sampler.sample(96, timeout_s=1).policy_version.tolist()) == set(range(8))
    assert all(i in sampler._cache for i in range(8))  # everything cached
    store.insert(make_trajectory(10, tag=8))  # a normal insert keeps the cache
    assert set(sampler.sample(96, timeout_s=1).policy_version.tolist()) == set(range(9))
    assert all(i in sampler._cache for i in range(9))
    _rewind(client, store.keys.prefix, snap)  # same epoch, next id back at 5
    new = list(range(100, 100 + reinsert))
    for tag in new:  # reuse ids 5.. (with 3: the id counter is back where it was)
        store.insert(make_trajectory(10, tag=tag))
    seen = set()
    for _ in range(6):
        seen |= set(sampler.sample(64, timeout_s=1).policy_version.tolist())
    assert seen == set(range(5)) | set(new)  # never the lost records 5..8
    assert store.stats().corrupt == {}
