"""Wire codec: round trips (property-based) and the bad-input table."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from benchmarks.fuzz_campaign import seal
from common.codec import REASONS, Limits, RecordError, decode, encode, validate
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
    """Re-seal a mutated document (correct checksum), so the check under test is reached."""
    return seal(doc)


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
        decode(encode(traj, check=False), limits)
    assert (e.value.field, e.value.reason) == (field, reason)
    with pytest.raises(RecordError) as e:  # and the encoder refuses it the same way
        encode(traj, limits=limits)
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


# ---- audit findings: each case failed (wrong exception, accepted, or no bound) before ------


def _with(path: tuple, value=None, rename: str | None = None) -> bytes:
    """A sealed good record with the value at ``path`` replaced (or its key renamed)."""
    d = _doc()
    x = d
    for p in path[:-1]:
        x = x[p]
    if rename is not None:
        x[rename] = x.pop(path[-1])
    else:
        x[path[-1]] = value
    return _pack(d)


def _deep_list(depth: int):
    x: object = 1
    for _ in range(depth):
        x = [x]
    return x


def _audit_docs():
    dt, shape, meta = ("arrays", "prev_reward", "d"), ("arrays", "obs/observation", "s"), "meta"
    yield "list dtype", _with(dt, ["float32"]), "prev_reward", "dtype"
    yield "dict dtype", _with(dt, {"float32": 1}), "prev_reward", "dtype"
    yield "inf actor_id", _with((meta, "actor_id"), float("inf")), "meta.actor_id", "schema"
    yield (
        "-inf version",
        _with((meta, "policy_version"), -float("inf")),
        "meta.policy_version",
        "schema",
    )
    yield "65 dims", _with(shape, [6] + [1] * 64), "obs/observation", "shape"
    yield "9 dims", _with(shape, [6] + [1] * 8), "obs/observation", "shape"
    yield "zero next to 2**63", _with(shape, [6, 0, 2**63]), "obs/observation", "shape"
    yield "version 2**63", _with((meta, "policy_version"), 2**63), "meta.policy_version", "schema"
    yield "actor_id str", _with((meta, "actor_id"), "7"), "meta.actor_id", "schema"
    yield "actor_id float", _with((meta, "actor_id"), 1.5), "meta.actor_id", "schema"
    yield "actor_id bool", _with((meta, "actor_id"), True), "meta.actor_id", "schema"
    yield "env_id int", _with((meta, "env_id"), 7), "meta.env_id", "schema"
    yield "starts bool", _with((meta, "episode_starts"), [False]), "meta.episode_starts", "schema"
    yield "shape bool", _with(shape, [6, True]), "obs/observation", "shape"
    yield "info int key", _with((meta, "info"), {1: "x"}), "meta.info", "schema"
    yield "info 5 deep", _with((meta, "info"), {"a": [[[[1]]]]}), "meta.info", "schema"
    yield "info 200 deep", _with((meta, "info"), {"a": _deep_list(200)}), "meta.info", "schema"
    many = {str(i): i for i in range(2000)}
    yield "info 2000 entries", _with((meta, "info"), many), "meta.info", "oversize"
    yield "info inf", _with((meta, "info"), {"x": float("inf")}), "meta.info", "nonfinite"
    yield "info bytes", _with((meta, "info"), {"x": b"raw"}), "meta.info", "schema"
    yield "info long str", _with((meta, "info"), {"x": "y" * 5000}), "meta.info", "oversize"
    yield "info not a map", _with((meta, "info"), [1]), "meta.info", "schema"
    yield (
        "dotdot key",
        _with(("arrays", "obs/observation"), rename="obs/../../etc"),
        "obs/../../etc",
        "schema",
    )
    yield "nul key", _with(("arrays", "obs/observation"), rename="obs/\x00"), "obs/\x00", "schema"
    yield "newline key", _with(("arrays", "obs/observation"), rename="obs/x\n"), "obs/x\n", "schema"
    yield "empty obs name", _with(("arrays", "obs/observation"), rename="obs/"), "obs/", "schema"
    d = _doc()
    d["arrays"]["time_idx"]["b"] = np.full(6, -1, np.int32).tobytes()
    yield "negative time_idx", _pack(d), "time_idx", "schema"
    d = _doc()
    d["extra"] = 1
    yield "unknown top key", _pack(d), "record", "schema"
    d = _doc()
    d.pop("c")
    yield "no checksum", msgpack.packb(d, use_bin_type=True), "c", "checksum"
    buf = bytearray(encode(make_traj()))
    i = buf.index(np.float32(make_traj().prev_reward[3]).tobytes())
    buf[i] ^= 0x10  # one bit of a reward
    yield "bit flip in a payload", bytes(buf), "c", "checksum"
    buf = bytearray(encode(make_traj()))
    buf[buf.index(b"TMaze")] ^= 0x01  # one bit of env_id
    yield "bit flip in metadata", bytes(buf), "c", "checksum"


AUDIT_DOCS = list(_audit_docs())


@pytest.mark.parametrize("case,buf,field,reason", AUDIT_DOCS, ids=[c[0] for c in AUDIT_DOCS])
def test_audit_bad_bytes_rejected(case, buf, field, reason) -> None:
    with pytest.raises(RecordError) as e:
        decode(buf)
    assert (e.value.field, e.value.reason) == (field, reason), str(e.value)


def _meta_traj(**meta) -> Trajectory:
    t = make_traj()
    for k, v in meta.items():
        setattr(t.meta, k, v)
    return t


def _audit_trajs():
    yield "version 2**63", _meta_traj(policy_version=2**63), "meta.policy_version", "schema"
    yield "actor_id -2**63-1", _meta_traj(actor_id=-(2**63) - 1), "meta.actor_id", "schema"
    yield "actor_id str", _meta_traj(actor_id="7"), "meta.actor_id", "schema"
    yield "actor_id float", _meta_traj(actor_id=1.5), "meta.actor_id", "schema"
    yield "actor_id bool", _meta_traj(actor_id=True), "meta.actor_id", "schema"
    yield "actor_id np.bool_", _meta_traj(actor_id=np.bool_(True)), "meta.actor_id", "schema"
    yield "env_id bytes", _meta_traj(env_id=b"x"), "meta.env_id", "schema"
    yield "env_id surrogate", _meta_traj(env_id="\ud800"), "meta.env_id", "schema"
    yield "info int key", _meta_traj(info={1: "x"}), "meta.info", "schema"
    yield "info 1000 deep", _meta_traj(info={"a": _deep_list(1000)}), "meta.info", "schema"
    big = {str(i): i for i in range(500_000)}
    yield "info 500k entries", _meta_traj(info=big), "meta.info", "oversize"
    yield "info ndarray", _meta_traj(info={"a": np.zeros(3)}), "meta.info", "schema"
    yield "info object", _meta_traj(info={"a": object()}), "meta.info", "schema"
    yield "info nan", _meta_traj(info={"a": np.float32("nan")}), "meta.info", "nonfinite"
    yield "info 2**64", _meta_traj(info={"a": 2**64}), "meta.info", "schema"
    t = make_traj()
    t.obs = {"../../etc": t.obs["observation"]}
    yield "dotdot obs key", t, "obs/../../etc", "schema"
    t = make_traj()
    t.extras = {"\x00": t.obs["observation"]}
    yield "nul extras key", t, "extras/\x00", "schema"
    t = make_traj()
    t.time_idx = t.time_idx - 3
    yield "negative time_idx", t, "time_idx", "schema"


AUDIT_TRAJS = list(_audit_trajs())


@pytest.mark.parametrize("case,traj,field,reason", AUDIT_TRAJS, ids=[c[0] for c in AUDIT_TRAJS])
def test_audit_bad_trajectory_refused_on_both_sides(case, traj, field, reason) -> None:
    with pytest.raises(RecordError) as e:
        validate(traj)
    assert (e.value.field, e.value.reason) == (field, reason), str(e.value)
    with pytest.raises(RecordError) as e:  # the encoder never raises anything else
        encode(traj)
    assert (e.value.field, e.value.reason) == (field, reason), str(e.value)


def test_numpy_scalars_in_metadata_are_converted() -> None:
    t = _meta_traj(
        actor_id=np.int64(3),
        policy_version=np.uint32(9),
        episode_starts=np.array([0, 2]),
        info={
            "f": np.float32(1.5),
            "i": np.int16(-4),
            "b": np.bool_(True),
            "s": np.str_("x"),
            "l": (1, np.float64(2.0)),
            "d": {"n": None},
        },
    )
    validate(t)
    out = decode(encode(t))
    m = out.meta
    assert (m.actor_id, m.policy_version, m.episode_starts) == (3, 9, [0, 2])
    assert m.info == {"f": 1.5, "i": -4, "b": True, "s": "x", "l": [1, 2.0], "d": {"n": None}}
    assert type(m.info["f"]) is float and type(m.info["i"]) is int and type(m.info["b"]) is bool


def test_int64_bounds_are_accepted() -> None:
    t = _meta_traj(actor_id=-(2**63), policy_version=2**63 - 1, info={"x": 2**63 - 1})
    assert decode(encode(t)).meta == t.meta


def test_broadcast_array_refused_from_its_shape_without_scanning() -> None:
    import time

    t = make_traj()
    t.obs["huge"] = np.broadcast_to(np.float32(np.nan), (6, 2**33))  # 200 GiB, never scanned
    t0 = time.perf_counter()
    with pytest.raises(RecordError) as e:
        validate(t)
    assert e.value.reason in ("oversize", "shape")
    with pytest.raises(RecordError):
        encode(t)
    assert time.perf_counter() - t0 < 1.0


def _zstd_frame(n_zero_bytes: int, declare_size: bool) -> bytes:
    import zstandard

    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=n_zero_bytes if declare_size else -1)
    chunk = bytes(2**20)
    parts = [cobj.compress(chunk) for _ in range(n_zero_bytes // 2**20)]
    return b"".join(parts) + cobj.flush()


@pytest.mark.parametrize("declare_size", [True, False])
def test_zstd_bomb_is_refused_before_decompressing(declare_size) -> None:
    import tracemalloc

    frame = _zstd_frame(256 * 2**20, declare_size)  # a few KB that inflate to 256 MiB
    assert len(frame) < 100_000
    d = _doc()
    d["arrays"]["obs/observation"].update(z="zstd", b=frame)
    buf = _pack(d)
    tracemalloc.start()
    try:
        with pytest.raises(RecordError) as e:
            decode(buf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    want = ("obs/observation", "truncated" if declare_size else "compression")
    assert (e.value.field, e.value.reason) == want, str(e.value)
    assert peak < 8 * 2**20, f"decoding a bomb allocated {peak / 2**20:.0f} MiB"


def test_zstd_frame_with_trailing_data_refused() -> None:
    t = make_traj(64, image=True)
    t.obs["pixels"][:] = 3
    d = msgpack.unpackb(encode(t, compression="zstd"), raw=False)
    assert d["arrays"]["obs/pixels"]["z"] == "zstd"
    d["arrays"]["obs/pixels"]["b"] += b"junk"
    with pytest.raises(RecordError) as e:
        decode(_pack(d))
    assert (e.value.field, e.value.reason) == ("obs/pixels", "compression")


def test_shape_bytes_are_capped_before_decompression() -> None:
    frame = _zstd_frame(64 * 2**20, True)
    d = _doc()
    d["arrays"]["obs/observation"].update(z="zstd", b=frame, s=[6, 64 * 2**20 // 24])
    with pytest.raises(RecordError) as e:
        decode(_pack(d), Limits(max_bytes=16 * 2**20))
    assert (e.value.field, e.value.reason) == ("obs/observation", "oversize")


def test_checksum_reason_is_registered_and_record_ends_with_it() -> None:
    from common.codec import record_digest

    assert "checksum" in REASONS
    buf = encode(make_traj())
    assert buf[-12:-8] == b"\xa1c\xc4\x08"
    assert record_digest(buf[:-12]) == buf[-8:]


def test_decode_raises_only_record_error_on_non_bytes() -> None:
    for bad in (None, 7, "text", [1, 2], np.zeros((2, 2), np.int32)[:, 0]):
        with pytest.raises(RecordError):
            decode(bad)  # type: ignore[arg-type]


def test_info_four_levels_deep_is_accepted() -> None:
    t = _meta_traj(info={"a": [[[1, "x", None]]], "b": {"c": {"d": 1.5}}})
    assert decode(encode(t)).meta == t.meta


@pytest.mark.parametrize("compression", ["", "zstd"])
@pytest.mark.parametrize("shapes", [[(64, 64, 3)], [(64, 64, 3), (5,), (300, 40)], [(70000,)]])
def test_big_records_pack_byte_for_byte_like_small_ones(monkeypatch, compression, shapes) -> None:
    """Records past codec._PIECES_MIN_BYTES are assembled from pieces (payloads hashed in
    place, copied once): the bytes are exactly those of the packer path."""
    import common.codec as codec

    n = 80
    rng = np.random.default_rng(0)
    t = make_traj(n)
    for i, s in enumerate(shapes):
        blocks = rng.integers(0, 4, size=(n, *s), dtype=np.uint8)  # compressible
        t.obs[f"o{i}"] = blocks
    t.extras["big"] = rng.normal(size=(n, 1000)).astype(np.float32)
    assert sum(a.nbytes for a in t.arrays().values()) >= codec._PIECES_MIN_BYTES
    pieces = encode(t, compression)
    monkeypatch.setattr(codec, "_PIECES_MIN_BYTES", 2**62)
    assert encode(t, compression) == pieces
    assert_same(decode(pieces), t)


def test_small_records_parse_without_hooks_and_big_ones_keep_the_entry_budget() -> None:
    """Inputs shorter than the hooks' entry budget cannot exceed it (every entry takes a
    byte), so they skip the hooks; longer ones are still bounded by it."""
    limits = Limits(max_steps=10, max_info_entries=8, max_arrays=8)
    budget = limits.max_steps + limits.max_info_entries + 16 * limits.max_arrays + 64
    many = msgpack.packb([[0]] * (budget + 1))  # more entries than the budget, 1-2 bytes each
    assert len(many) > budget
    with pytest.raises(RecordError) as e:
        decode(many, limits)
    assert e.value.reason == "oversize"
    few = msgpack.packb([[0]] * 30)
    assert len(few) <= budget
    with pytest.raises(RecordError) as e:
        decode(few, limits)
    assert e.value.reason == "schema"  # parsed, then refused as not a record


def test_known_layouts_still_get_every_n_dependent_check() -> None:
    """A layout seen before skips the N-independent checks only: every N-dependent failure
    is refused with the full check's field and reason."""
    import common.codec as codec

    limits = Limits(max_steps=50, max_bytes=1000)  # 30 bytes per step
    good = make_traj(6)
    validate(good, limits)
    decode(encode(good, limits=limits), limits)  # the layout is known now

    def full(t: Trajectory) -> tuple[str, str]:
        with pytest.raises(RecordError) as e:
            arrays = t.arrays()
            codec._full_layout_check(
                codec._array_specs(arrays), list(t.meta.episode_starts), limits
            )
        return e.value.field, e.value.reason

    def leading(t: Trajectory) -> Trajectory:
        t.time_idx = t.time_idx[:-1]
        return t

    def starts(t: Trajectory) -> Trajectory:
        t.meta.episode_starts = [0, 7, 3]
        return t

    cases = {
        "leading dim": leading(make_traj(6)),
        "too many steps": make_traj(51),
        "too many bytes": make_traj(40),
        "episode starts": starts(make_traj(8)),
    }
    for name, t in cases.items():
        want = full(t)
        with pytest.raises(RecordError) as e:
            validate(t, limits)
        assert (e.value.field, e.value.reason) == want, name
        blob = encode(t, check=False, limits=Limits(max_steps=100, max_bytes=2**20))
        with pytest.raises(RecordError) as e:
            decode(blob, limits)
        assert (e.value.field, e.value.reason) == want, name
    other = make_traj(9)  # same layout, another N: accepted through the fast path
    validate(other, limits)
    assert_same(decode(encode(other, limits=limits), limits), other)
