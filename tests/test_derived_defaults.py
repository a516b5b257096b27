"""Run-derived learner defaults (deploy.config.derive_defaults): the variant's BC weight and
two-hot bins that cover the task's return range."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from common.envs.config import EnvConfig
from common.envs.factory import reward_probe
from deploy.config import compose, prepare
from learner.agent import AmagoAgent
from learner.config import LearnerConfig
from learner.losses import symexp
from learner.synthetic import tiny_model
from learner.variants.amago2 import twohot_bound
from tests.test_learner_offline import tmaze_spec


def _prepared(*overrides: str):
    cfg, _spec, derived = prepare(OmegaConf.to_object(compose(list(overrides), resolved=False)))
    return cfg, {d.field: d for d in derived}


@pytest.mark.parametrize("variant, weight", [("amago", 0.1), ("amago2", 1.0)])
def test_bc_weight_is_the_variants_own_unless_set(variant, weight):
    cfg, derived = _prepared("experiment=tmaze", f"learner.variant={variant}")
    assert cfg.learner.bc_weight == weight and "learner.bc_weight" in derived
    cfg, derived = _prepared(
        "experiment=tmaze", f"learner.variant={variant}", "learner.bc_weight=0.3"
    )
    assert cfg.learner.bc_weight == 0.3 and "learner.bc_weight" not in derived
    assert LearnerConfig(variant=variant).bc_weight_value == weight  # direct use, no entrypoint


def test_twohot_bound_formula():
    assert twohot_bound(10.0, 1.0, 0.999, 11) == pytest.approx(
        2 * 10 * sum(0.999**t for t in range(11))
    )
    assert twohot_bound(1.0, 2.0, 0.5, 10_000) == pytest.approx(2 * 2 * 2)  # 1 / (1 - gamma)


def test_amago2_bins_cover_the_tasks_returns_tightly():
    """T-Maze H=10: returns are at most reward_scale x 1; the bins span +-2x the discounted
    horizon, so the return range [0, 10] covers far more bins than the old +-1e5 did."""
    cfg, derived = _prepared("experiment=tmaze", "learner.variant=amago2")
    lo, hi = cfg.learner.twohot_min, cfg.learner.twohot_max
    assert -hi == lo and 10.0 * 2 < hi < 10.0 * 2 * 12
    assert "learner.twohot_min/max" in derived

    def bins_in_return_range(learner: LearnerConfig) -> int:
        raw = symexp(AmagoAgent(tmaze_spec(), learner).bins)
        return int(((raw >= 0) & (raw <= 10.0)).sum())

    used = bins_in_return_range(cfg.learner)
    old = bins_in_return_range(LearnerConfig(variant="amago2", twohot_min=-1e5, twohot_max=1e5))
    assert used > 2 * old, (used, old)
    # explicit bounds are kept as given
    cfg, derived = _prepared(
        "experiment=tmaze",
        "learner.variant=amago2",
        "learner.twohot_min=-5",
        "learner.twohot_max=50",
    )
    assert (cfg.learner.twohot_min, cfg.learner.twohot_max) == (-5, 50)
    assert "learner.twohot_min/max" not in derived


def test_reward_probe_raises_the_bound_for_large_rewards():
    """Pendulum's rewards reach about -16 a step: the probe sees it and the bins widen."""
    big = reward_probe(EnvConfig(id="Pendulum-v1"), max_steps=400).largest
    assert 5.0 < big <= 16.3
    cfg, derived = _prepared("env.id=Pendulum-v1", "learner.variant=amago2")
    assert cfg.learner.reward_bound == pytest.approx(big, rel=0.5)
    lr = cfg.learner  # dense rewards: acting discount 0.99, scale 1 (derived too)
    assert (lr.gammas[-1], lr.reward_scale) == (0.99, 1.0)
    assert lr.twohot_max == pytest.approx(twohot_bound(1.0, lr.reward_bound, 0.99, 200))
    assert lr.twohot_max > 2 * 1 * 5 * (1 - 0.99**200) / 0.01
    # scalar critics do not widen bins (the probe still sets the discounts)
    cfg, derived = _prepared("env.id=Pendulum-v1")
    assert "learner.reward_bound" not in derived and cfg.learner.twohot_min is None
    assert "learner.gammas" in derived


def test_reward_probe_measures_density():
    """CartPole pays 1 every step; the goal grid pays only at a goal."""
    assert reward_probe(EnvConfig(id="CartPole-v1"), max_steps=200).rewarded == 1.0
    sparse = reward_probe(EnvConfig(id="amago/GoalGrid-v0"), max_steps=200)
    assert sparse.rewarded < 0.5 and not sparse.dense


def test_discounts_and_reward_scale_follow_the_env_rewards_unless_set():
    """Dense rewards: acting discount 0.99 and scale sigma / their size within [1, sigma],
    sigma = PopArt's initial scale sqrt(popart_init_nu) (10); sparse: AMAGO's 0.999 and 10;
    each value set explicitly is kept; every derived one is said."""
    cfg, derived = _prepared("env.id=CartPole-v1")  # 1 a step: scaled to 10
    assert cfg.learner.gammas == [0.1, 0.9, 0.95, 0.97, 0.99] and cfg.learner.reward_scale == 10
    assert "100% of steps" in derived["learner.gammas"].reason
    # dense but small (POPGym's +-1/episode length): the discounts of dense rewards, scale 10
    cfg, derived = _prepared("env=popgym", "env.id=popgym-RepeatPreviousEasy-v0")
    assert cfg.learner.gammas[-1] == 0.99 and cfg.learner.reward_scale == 10
    assert "|reward| <= 0.0" in derived["learner.reward_scale"].reason
    # the target follows PopArt's initial sigma: sqrt(4) = 2 for CartPole's 1 a step
    cfg, _ = _prepared("env.id=CartPole-v1", "learner.popart_init_nu=4")
    assert cfg.learner.reward_scale == 2
    cfg, derived = _prepared("env=goal_grid")
    assert cfg.learner.gammas[-1] == 0.999 and cfg.learner.reward_scale == 10
    assert "learner.reward_scale" in derived
    cfg, derived = _prepared("env.id=CartPole-v1", "learner.reward_scale=3")
    assert cfg.learner.reward_scale == 3 and "learner.reward_scale" not in derived
    assert cfg.learner.gammas[-1] == 0.99
    cfg, derived = _prepared("env.id=CartPole-v1", "learner.gammas=[0.5,0.999]")
    assert cfg.learner.gammas == [0.5, 0.999] and "learner.gammas" not in derived


@pytest.mark.parametrize("device, cap", [("cpu", 64), ("cuda", 256)])
def test_window_cap_follows_the_learner_device_unless_set(device, cap):
    cfg, derived = _prepared("env.id=CartPole-v1", f"learner.device={device}")
    assert cfg.learner.seq_len_cap == cfg.learner.max_seq_len == cap
    assert derived["learner.seq_len_cap"].value == cap
    cfg, derived = _prepared("env.id=CartPole-v1", "learner.seq_len_cap=100")
    assert cfg.learner.max_seq_len == 100 and "learner.seq_len_cap" not in derived
    cfg, derived = _prepared("env.id=CartPole-v1", "learner.max_seq_len=20")
    assert "learner.seq_len_cap" not in derived  # nothing derived: the window is set


def test_direct_learner_derives_bins_from_the_spec_horizon():
    cfg = LearnerConfig(model=tiny_model(32), variant="amago2", max_seq_len=12, device="cpu")
    agent = AmagoAgent(tmaze_spec(), cfg)
    hi = float(symexp(agent.bins[-1]))
    assert hi == pytest.approx(twohot_bound(10.0, 1.0, max(cfg.gammas), 11), rel=1e-4)
    assert math.isclose(float(symexp(agent.bins[0])), -hi, rel_tol=1e-4)
    assert torch.all(agent.bins[1:] > agent.bins[:-1])


def test_the_replay_limiter_is_checked_against_the_learners_batches():
    """The replay config does not repeat ``learner.batch_size`` / ``learner.max_seq_len``:
    nothing is derived for it, Hydra refuses the old fields, and the start-up check of an
    explicit ``replay.rate_limit.error_buffer`` uses the learner's (derived) window."""
    from hydra.errors import ConfigCompositionException

    from common.config_utils import ConfigError
    from deploy.run.builder import sample_shape

    cfg, derived = _prepared("experiment=tmaze", "learner.max_seq_len=0")
    assert not [f for f in derived if f.startswith("replay.")]
    shape = sample_shape(cfg.learner)
    assert (shape.batch_size, shape.max_seq_len) == (24, cfg.learner.max_seq_len)
    for field in ("replay.max_seq_len", "replay.batch_size"):
        with pytest.raises(ConfigCompositionException, match="Could not override"):
            compose(["experiment=tmaze", f"{field}=8"], resolved=False)
    with pytest.raises(ConfigError) as e:
        _prepared("experiment=tmaze", "learner.max_seq_len=0", "replay.rate_limit.error_buffer=1")
    assert e.value.field == "replay.rate_limit.error_buffer"
    steps = 24 * cfg.learner.max_seq_len
    assert f"learner.batch_size * learner.max_seq_len={steps}" in str(e.value)
    assert "\n" not in str(e.value)


def _image_spec(h: int, w: int):
    from common.spec import ArraySpec, EnvSpec

    obs = {"image": ArraySpec((h, w, 3), "uint8"), "direction": ArraySpec((4,), "float32")}
    return EnvSpec(obs=obs, action_dim=3, discrete=True, max_episode_steps=50)


def test_small_images_get_a_conv_trunk_they_fit_and_an_explicit_misfit_fails_in_one_line():
    """MiniGrid's 7x7 views are too small for the default (Nature-DQN) trunk: start-up derives
    the small one, which builds and encodes a 7x7 image; 84x84 frames keep the default; a
    trunk set by hand that an image cannot pass fails naming learner.model.cnn_kernels."""
    from common.config_utils import ConfigError
    from deploy.config import TrainConfig, derive_defaults
    from learner.config import SMALL_IMAGE_CNN
    from learner.model import CNN

    cfg, derived = derive_defaults(TrainConfig(), 50, None, _image_spec(7, 7))
    m = cfg.learner.model
    assert (m.cnn_channels, m.cnn_kernels, m.cnn_strides) == tuple(map(list, SMALL_IMAGE_CNN))
    assert any(d.field == "learner.model.cnn_channels/kernels/strides" for d in derived)
    assert CNN((7, 7, 3), m)(torch.zeros(2, 5, 7, 7, 3, dtype=torch.uint8)).shape == (2, 5, 256)
    cfg, derived = derive_defaults(TrainConfig(), 50, None, _image_spec(84, 84))
    assert cfg.learner.model.cnn_kernels == [8, 4, 3] and not any("cnn" in d.field for d in derived)
    by_hand = TrainConfig()
    by_hand.learner.model.cnn_kernels = [5, 3, 3]
    with pytest.raises(ConfigError) as e:
        derive_defaults(by_hand, 50, None, _image_spec(7, 7))
    assert e.value.field == "learner.model.cnn_kernels" and "(7, 7, 3)" in str(e.value)


def test_long_rollouts_stream_in_chunks_of_two_windows_unless_set():
    cfg, derived = _prepared("env.id=CartPole-v1", "learner.device=cpu")
    assert cfg.actors.chunk_steps == 128 and derived["actors.chunk_steps"].value == 128
    cfg, derived = _prepared("experiment=tmaze")  # a rollout fits the window: whole rollouts
    assert cfg.actors.chunk_steps == -1 and "actors.chunk_steps" not in derived
    cfg, derived = _prepared("env=goal_grid", "replay.relabel=hindsight", "learner.max_seq_len=8")
    assert cfg.actors.chunk_steps == -1  # relabeling reads whole rollouts
    cfg, derived = _prepared("env.id=CartPole-v1", "actors.chunk_steps=50")
    assert cfg.actors.chunk_steps == 50 and "actors.chunk_steps" not in derived
    from deploy.run.builder import rollout_chunks

    assert rollout_chunks(cfg) == (50, cfg.learner.max_seq_len - 1)
    assert rollout_chunks(_prepared("experiment=tmaze")[0]) is None
