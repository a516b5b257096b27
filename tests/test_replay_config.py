"""Replay config validation, connection options, relabel registry, and the pure limiter rules."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from common.config_utils import ConfigError
from replay_service import (
    LimiterState,
    RateLimitConfig,
    RateLimits,
    RedisConfig,
    ReplayConfig,
    SampleShape,
    connect,
    get_relabeler,
    register_relabeler,
    relabeler_names,
)
from replay_service.config import min_safe_error_buffer


def test_defaults_validate():
    ReplayConfig().validate()


@pytest.mark.parametrize(
    "cfg, field",
    [
        (ReplayConfig(max_steps=0), "max_steps"),
        (ReplayConfig(max_traj_steps=2_000_000), "max_traj_steps"),
        (ReplayConfig(max_bytes=100, max_record_bytes=200), "max_record_bytes"),
        (ReplayConfig(sampling="prioritized"), "sampling"),
        (ReplayConfig(compression="lz4"), "compression"),
        (ReplayConfig(insert_timeout_s=-1), "insert_timeout_s"),
        (ReplayConfig(redis=RedisConfig(namespace="a b")), "redis.namespace"),
        (ReplayConfig(redis=RedisConfig(namespace="a*")), "redis.namespace"),
        (ReplayConfig(redis=RedisConfig(url="http://x")), "redis.url"),
        (ReplayConfig(redis=RedisConfig(retries=-1)), "redis.retries"),
        (ReplayConfig(redis=RedisConfig(tls_ca_file="ca.pem")), "redis.tls_ca_file"),
        (
            ReplayConfig(rate_limit=RateLimitConfig(samples_per_insert=-1)),
            "rate_limit.samples_per_insert",
        ),
        (ReplayConfig(rate_limit=RateLimitConfig(min_size_steps=0)), "rate_limit.min_size_steps"),
        (
            ReplayConfig(max_steps=100, max_traj_steps=10, rate_limit=RateLimitConfig(1.0, 95)),
            "rate_limit.min_size_steps",
        ),
    ],
)
def test_invalid_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field


@pytest.mark.parametrize("batch_size, max_seq_len", [(0, 8), (8, 0), (-1, 8), (8, 1.5)])
def test_invalid_sample_shapes_are_refused(batch_size, max_seq_len):
    with pytest.raises(ValueError, match="SampleShape"):
        SampleShape(batch_size=batch_size, max_seq_len=max_seq_len)


def test_error_buffer_that_could_block_both_sides_is_refused():
    # inserts of up to 100 steps at spi 4 move the diff by 400; samples take up to 8*16=128.
    base = dict(max_traj_steps=100)
    shape = SampleShape(batch_size=8, max_seq_len=16)
    assert shape.max_sample_steps == 128
    need = min_safe_error_buffer(4.0, 100, 128)
    assert need == (400 + 128) / 2
    with pytest.raises(ConfigError) as e:
        ReplayConfig(**base, rate_limit=RateLimitConfig(4.0, 10, need - 1)).validate(shape)
    assert e.value.field == "rate_limit.error_buffer"
    assert "learner.batch_size * learner.max_seq_len=128" in str(e.value)
    ReplayConfig(**base, rate_limit=RateLimitConfig(4.0, 10, need)).validate(shape)
    auto = ReplayConfig(**base, rate_limit=RateLimitConfig(4.0, 10, -1.0))
    auto.validate(shape)
    assert auto.effective_error_buffer(shape) == need
    with pytest.raises(ValueError, match="SampleShape"):  # the automatic one needs the shape
        auto.effective_error_buffer()
    # ratio off: any buffer is fine
    ReplayConfig(**base, rate_limit=RateLimitConfig(0.0, 10, 0.0)).validate(shape)


def _limits(spi: float, min_size: int, eb: float) -> RateLimits:
    return RateLimits(spi, min_size, spi * min_size - eb, spi * min_size + eb)


S = LimiterState


@pytest.mark.parametrize(
    "limits, state, n, k, can_insert, can_sample",
    [
        # below min size: inserts free, samples wait
        (_limits(2, 20, 15), S(0, 0, 0, 0), 10, 10, True, False),
        (_limits(2, 20, 15), S(10, 0, 0, 1), 10, 10, True, False),
        # the insert crossing min size is free even though (I+n)*spi - S > max_diff
        (_limits(2, 20, 15), S(19, 0, 0, 2), 10, 10, True, False),
        # at min size: diff 40; sample of 10 leaves 30 >= min_diff 25; insert -> 60 > 55
        (_limits(2, 20, 15), S(20, 0, 0, 2), 10, 10, False, True),
        (_limits(2, 20, 15), S(20, 0, 10, 2), 10, 10, True, False),  # 40-10-10 = 20 < 25
        (_limits(2, 20, 15), S(30, 0, 10, 3), 10, 10, False, True),  # insert: 80-10 > 55
        (_limits(2, 20, 15), S(30, 0, 30, 3), 10, 15, True, False),  # insert: 80-30 = 50
        # evictions lower the size only: below min size again -> samples wait, inserts free
        (_limits(2, 20, 15), S(30, 15, 0, 1), 10, 10, True, False),
        # empty store never samples (even with ratio off)
        (_limits(0, 1, 0), S(10, 10, 0, 0), 10, 1, True, False),
        (_limits(0, 1, 0), S(10, 0, 10**9, 1), 10**6, 10**6, True, True),
        # AMAGO-like ratio 250
        (_limits(250, 10, 1255), S(10, 0, 1240, 1), 10, 10, False, True),  # 5000-1240 > 3755
        (_limits(250, 10, 1255), S(10, 0, 1250, 1), 10, 10, True, False),  # 2500-1260 < 1245
        (_limits(250, 10, 1255), S(20, 0, 1250, 2), 10, 10, False, True),
    ],
)
def test_rate_limit_rules(limits, state, n, k, can_insert, can_sample):
    assert limits.can_insert(state, n) is can_insert
    assert limits.can_sample(state, k) is can_sample


def test_safe_buffer_never_blocks_both_sides():
    """Exhaustive check of the deadlock-freedom claim on a grid of reachable states."""
    spi, n_max, k_max, min_size = 3.0, 7, 5, 4
    eb = min_safe_error_buffer(spi, n_max, k_max)
    lim = _limits(spi, min_size, eb)
    for inserted in range(min_size, 60):
        for sampled in range(0, int(inserted * spi) + 40):
            st = S(inserted, 0, sampled, 1)
            assert lim.can_insert(st, n_max) or lim.can_sample(st, k_max), (inserted, sampled)
    tight = _limits(spi, min_size, eb - 1)
    blocked = [
        (i, s)
        for i in range(min_size, 60)
        for s in range(int(i * spi) + 40)
        if not tight.can_insert(S(i, 0, s, 1), n_max) and not tight.can_sample(S(i, 0, s, 1), k_max)
    ]
    assert blocked, "a smaller buffer must admit a state where both sides wait"


def test_from_config_offsets():
    cfg = ReplayConfig(
        max_traj_steps=10,
        rate_limit=RateLimitConfig(samples_per_insert=2.0, min_size_steps=20, error_buffer=15),
    )
    lim = RateLimits.from_config(cfg, SampleShape(batch_size=2, max_seq_len=5))
    assert (lim.min_diff, lim.max_diff, lim.min_size) == (25.0, 55.0, 20)


def test_connect_options():
    with pytest.raises(ConfigError) as e:
        connect(RedisConfig(url=""))
    assert e.value.field == "url"
    c = connect(RedisConfig(url="redis://127.0.0.1:1", tls=True, password="pw"))
    kw = c.connection_pool.connection_kwargs
    assert issubclass(c.connection_pool.connection_class, redis.SSLConnection)
    assert kw["password"] == "pw"
    plain = connect(RedisConfig(url="redis://127.0.0.1:1"))
    assert issubclass(plain.connection_pool.connection_class, redis.Connection)
    assert not issubclass(plain.connection_pool.connection_class, redis.SSLConnection)


def test_connect_password_sources_and_reprs():
    # The config's password wins over one in the URL; a URL's is used when the config has none.
    both = connect(RedisConfig(url="redis://:from-url@127.0.0.1:1", password="from-config"))
    assert both.connection_pool.connection_kwargs["password"] == "from-config"
    url_only = connect(RedisConfig(url="redis://:from-url@127.0.0.1:1"))
    assert url_only.connection_pool.connection_kwargs["password"] == "from-url"
    for c in (both, url_only):  # neither the client's repr nor the config's shows them
        assert "from-config" not in repr(c) and "from-url" not in repr(c)
    cfg = RedisConfig(url="redis://:from-url@127.0.0.1:1", password="from-config")
    assert "from-config" not in repr(cfg) and "from-url" not in repr(cfg)
    assert "from-config" not in repr(ReplayConfig(redis=cfg))


def test_redis_config_is_still_a_structured_config_schema():
    from omegaconf import OmegaConf

    node = OmegaConf.structured(RedisConfig(password="pw"))
    assert node.password == "pw"  # the schema keeps the field: only reprs hide it
    assert OmegaConf.to_object(node) == RedisConfig(password="pw")


def test_relabel_registry():
    assert "none" in relabeler_names()
    ident = get_relabeler("none")
    sentinel = object()
    assert ident(sentinel, np.random.default_rng(0)) is sentinel  # type: ignore[arg-type]

    @register_relabeler("test_config_scale")
    def make(scale: float = 1.0):
        return lambda traj, rng: scale

    assert get_relabeler("test_config_scale", scale=3.0)(None, None) == 3.0  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        register_relabeler("test_config_scale")(lambda: None)
    with pytest.raises(KeyError, match="unknown relabeler"):
        get_relabeler("no_such_strategy")


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (["replay.max_record_bytes=100"], "replay.max_record_bytes", "every rollout"),
        (
            ["replay.max_bytes=30000", "replay.max_record_bytes=4096"],
            "replay.max_bytes",
            "rate_limit.min_size_steps=1000: sampling could never start",
        ),
    ],
)
def test_replay_too_small_in_bytes_for_the_env_fails_at_startup(overrides, field, words):
    """Checked against the env's measured record size (T-Maze: 12-timestep rollouts of ~68
    bytes a timestep): a replay that would reject every rollout, or could never hold
    ``min_size_steps`` (a run that collects and never trains), stops before anything starts."""
    from deploy.config import compose, prepare

    with pytest.raises(ConfigError) as e:
        prepare(compose(["experiment=tmaze", *overrides]))
    assert e.value.field == field and words in str(e.value)
    prepare(
        compose(["experiment=tmaze", "replay.max_bytes=200000", "replay.max_record_bytes=4096"])
    )


def test_record_bytes_is_the_size_a_writer_inserts():
    from common.codec import encode
    from common.envs.tmaze import TMaze
    from common.records import Trajectory, TrajectoryMeta
    from common.spec import EnvSpec
    from replay_service.config import record_bytes

    env = TMaze(10)
    spec = EnvSpec.from_spaces(env.observation_space, env.action_space, env.max_steps)
    n = 12
    rng = np.random.default_rng(0)
    traj = Trajectory(
        obs={"observation": rng.normal(size=(n, *spec.obs["observation"].shape)).astype("f4")},
        prev_action=np.eye(spec.action_dim, dtype=np.float32)[
            rng.integers(spec.action_dim, size=n)
        ],
        prev_reward=rng.normal(size=n).astype(np.float32),
        time_idx=np.arange(n, dtype=np.int32),
        terminated=np.arange(n) == n - 1,
        truncated=np.zeros(n, bool),
        meta=TrajectoryMeta(env_id="amago/TMaze-v0", actor_id=3, policy_version=1200),
    )
    assert abs(record_bytes(spec, n) - len(encode(traj))) <= 64  # metadata only
