"""Wire codec: round trips (property-based) and the bad-input table."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.codec import Limits, RecordError, decode, encode, validate
from common.records import FORMAT_VERSION, Trajectory, TrajectoryMeta


def make_traj(n: int = 6, obs_dim: int = 3, act_dim: int = 2, image: bool = False) -> Trajectory:
    rng = np.random.default_rng(n)
    obs = {"observation": rng.normal(size=(n, obs_dim)).astype(np.float32)}
    if image:
        obs["pixels"] = rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)
    return Trajectory(
        obs=obs,
        prev_action=rng.normal(size=(n, act_dim)).astype(np.float32),
        prev_reward=rng.normal(size=n).astype(np.float32),
        time_idx=np.arange(n, dtype=np.int32),
        terminated=np.eye(1, n, n - 1, dtype=bool)[0],
        truncated=np.zeros(n, bool),
        meta=TrajectoryMeta(env_id="amago/TMaze-v0", actor_id=3, policy_version=7),
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert a.arrays().keys() == b.arrays().keys()
    for k, v in a.arrays().items():
        w = b.arrays()[k]
        assert v.dtype == w.dtype and v.shape == w.shape, k
        np.testing.assert_array_equal(v, w, err_msg=k)
    assert a.meta == b.meta


_dtypes = st.sampled_from(["uint8", "int32", "int64", "float32", "float16", "bool"])


@st.composite
def trajectories(draw):
    n = draw(st.integers(1, 40))
    nobs = draw(st.integers(1, 3))
    obs = {}
    for i in range(nobs):
        dt = draw(_dtypes)
        shape = (n, *draw(st.lists(st.integers(0, 5), max_size=3)))
        elems = None
        if dt.startswith("float"):
            elems = st.floats(-1e3, 1e3, width=16 if dt == "float16" else 32)
        obs[f"k{i}"] = draw(hnp.arrays(dt, shape, elements=elems))
    act_dim = draw(st.integers(1, 4))
    fin = st.floats(-1e6, 1e6, width=32)
    extras = {}
    if draw(st.booleans()):
        extras["achieved"] = draw(hnp.arrays("float32", (n, 2), elements=fin))
    starts = sorted({0, *draw(st.lists(st.integers(0, n - 1), max_size=3))})
    return Trajectory(
        obs=obs,
        prev_action=draw(hnp.arrays("float32", (n, act_dim), elements=fin)),
        prev_reward=draw(hnp.arrays("float32", (n,), elements=fin)),
        time_idx=draw(hnp.arrays("int32", (n,), elements=st.integers(0, 10**6))),
        terminated=draw(hnp.arrays("bool", (n,))),
        truncated=draw(hnp.arrays("bool", (n,))),
        extras=extras,
        meta=TrajectoryMeta(
            env_id=draw(st.text(max_size=20)),
            actor_id=draw(st.integers(0, 2**31)),
            policy_version=draw(st.integers(0, 2**40)),
            episode_starts=starts,
            info=draw(
                st.dictionaries(
                    st.text(max_size=5),
                    st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                    max_size=3,
                )
            ),
        ),
    )


@settings(max_examples=150, deadline=None)
@given(traj=trajectories(), compression=st.sampled_from(["", "zstd"]))
def test_round_trip(traj: Trajectory, compression: str) -> None:
    assert_same(traj, decode(encode(traj, compression=compression, compress_min_bytes=0)))


def test_decode_is_zero_copy_view() -> None:
    buf = encode(make_traj(32))
    out = decode(buf)
    a = out.obs["observation"]
    assert not a.flags.owndata and not a.flags.writeable  # a view on the payload, not a copy


def test_zstd_shrinks_compressible_images() -> None:
    t = make_traj(64, image=True)
    t.obs["pixels"][:] = 7  # flat image: compresses well
    raw, packed = encode(t), encode(t, compression="zstd")
    assert len(packed) < len(raw) / 4
    assert_same(t, decode(packed))


def test_incompressible_payload_is_stored_raw() -> None:
    t = make_traj(64, image=True)
    doc = msgpack.unpackb(encode(t, compression="zstd", compress_min_bytes=0))
    assert doc["arrays"]["obs/pixels"]["z"] == ""  # random bytes do not shrink


# ---- bad input: each case must raise RecordError naming the field and the reason ----------


def _doc(t: Trajectory | None = None) -> dict:
    return msgpack.unpackb(encode(t or make_traj()), raw=False)


def _pack(doc: dict) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _bad_docs():
    d = _doc()
    d["v"] = FORMAT_VERSION + 1
    yield "future version", _pack(d), "v", "version"
    d = _doc()
    d.pop("v")
    yield "missing version", _pack(d), "v", "version"
    d = _doc()
    d["arrays"]["prev_reward"]["d"] = "object"
    yield "object dtype", _pack(d), "prev_reward", "dtype"
    d = _doc()
    d["arrays"]["obs/observation"]["d"] = "complex128"
    yield "unknown dtype", _pack(d), "obs/observation", "dtype"
    d = _doc()
    d["arrays"]["prev_action"]["b"] = d["arrays"]["prev_action"]["b"][:-4]
    yield "short payload", _pack(d), "prev_action", "truncated"
    d = _doc()
    d["arrays"]["obs/observation"]["s"] = [-1, 3]
    yield "negative dim", _pack(d), "obs/observation", "shape"
    d = _doc()
    d["arrays"]["obs/observation"]["z"] = "lzma"
    yield "unknown compression", _pack(d), "obs/observation", "compression"
    d = _doc()
    d["arrays"].pop("terminated")
    yield "missing array", _pack(d), "terminated", "schema"
    d = _doc()
    d["arrays"]["bogus"] = d["arrays"]["prev_reward"]
    yield "unknown array", _pack(d), "bogus", "schema"
    d = _doc()
    d["meta"].pop("actor_id")
    yield "missing meta", _pack(d), "meta", "schema"
    yield "truncated bytes", encode(make_traj())[:-10], "record", "truncated"
    yield "garbage", b"\x00\x01garbage", "record", "truncated"
    yield "not a map", msgpack.packb([1, 2, 3]), "record", "schema"


def _bad_trajs():
    t = make_traj()
    t.prev_reward = t.prev_reward.copy()
    t.prev_reward[2] = np.nan
    yield "nan reward", t, "prev_reward", "nonfinite"
    t = make_traj()
    t.prev_reward = t.prev_reward.copy()
    t.prev_reward[0] = np.inf
    yield "inf reward", t, "prev_reward", "nonfinite"
    t = make_traj()
    t.obs["observation"] = t.obs["observation"][:-1]
    yield "obs shorter", t, "obs/observation", "length"
    t = make_traj()
    t.time_idx = t.time_idx.astype(np.float32)
    yield "float time", t, "time_idx", "dtype"
    t = make_traj()
    t.prev_action = t.prev_action[:, 0]
    yield "action rank", t, "prev_action", "shape"
    t = make_traj()
    t.meta.episode_starts = [0, 3, 2]
    yield "unsorted starts", t, "meta.episode_starts", "schema"
    t = make_traj()
    t.meta.episode_starts = [0, 99]
    yield "start past end", t, "meta.episode_starts", "schema"
    t = make_traj(n=50)
    yield "too many steps", t, "record", "oversize"


BAD_DOCS = list(_bad_docs())
BAD_TRAJS = list(_bad_trajs())


@pytest.mark.parametrize("case,buf,field,reason", BAD_DOCS, ids=[c[0] for c in BAD_DOCS])
def test_bad_bytes_rejected(case, buf, field, reason) -> None:
    with pytest.raises(RecordError) as e:
        decode(buf)
    assert (e.value.field, e.value.reason) == (field, reason), str(e.value)
    assert field in str(e.value)


@pytest.mark.parametrize("case,traj,field,reason", BAD_TRAJS, ids=[c[0] for c in BAD_TRAJS])
def test_bad_trajectory_rejected(case, traj, field, reason) -> None:
    limits = Limits(max_steps=40)
    with pytest.raises(RecordError) as e:
        validate(traj, limits)
    assert (e.value.field, e.value.reason) == (field, reason), str(e.value)
    # the same check runs when the bytes arrive at the service
    with pytest.raises(RecordError) as e:
        decode(encode(traj), limits)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_oversize_bytes_rejected_before_parsing() -> None:
    buf = encode(make_traj(200))
    with pytest.raises(RecordError) as e:
        decode(buf, Limits(max_bytes=len(buf) - 1))
    assert (e.value.field, e.value.reason) == ("record", "oversize")


def test_never_unpickles() -> None:
    import pickle

    d = _doc()
    d["arrays"]["prev_reward"]["b"] = pickle.dumps(object())
    with pytest.raises(RecordError):
        decode(_pack(d))
