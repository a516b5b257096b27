"""The AMAGO update: masking, time alignment, gradient routing, targets, config validation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from common.config_utils import ConfigError
from common.spec import ArraySpec, EnvSpec
from learner.amago import AmagoLearner
from learner.config import LearnerConfig, ModelConfig
from learner.synthetic import random_batch, tiny_model

torch.set_num_threads(1)


def small_cfg(**kw) -> LearnerConfig:
    model = tiny_model(**kw.pop("model", {}))
    base = dict(
        gammas=[0.9, 0.999], num_critics=3, device="cpu", max_seq_len=16, warmup_steps=0, lr=1e-3
    )
    base.update(kw)
    return LearnerConfig(model=model, **base)


def spec_for(discrete: bool) -> EnvSpec:
    return EnvSpec({"observation": ArraySpec((4,), "float32")}, 3, discrete, 50)


def losses_and_grads(learner: AmagoLearner, batch):
    """What train_step computes before the optimizer step."""
    t = learner._to_tensors(batch)
    with learner._own_rng():
        learner._update_obs_stats(t)
        out = learner.compute_losses(t)
        learner.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in learner.agent.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in out.items()}, grads


def scramble_padding(batch, rng):
    """A copy of ``batch`` with random garbage wherever mask is False."""
    b = copy.deepcopy(batch)
    pad = ~b.mask
    for k in b.obs:
        b.obs[k][pad] = rng.standard_normal(b.obs[k][pad].shape) * 100
    b.prev_action[pad] = rng.standard_normal(b.prev_action[pad].shape) * 100
    b.prev_reward[pad] = rng.standard_normal(pad.sum()) * 100
    b.time_idx[pad] = rng.integers(0, 1000, pad.sum())
    b.terminated[pad] = True
    return b


@pytest.mark.parametrize(
    "discrete,variant,encoder,labels",
    [
        (True, "amago", "transformer", "hlgauss"),
        (False, "amago", "transformer", "hlgauss"),
        (True, "amago2", "gru", "twohot"),
        (True, "amago2", "transformer", "hlgauss"),
        (False, "amago2", "mlp", "hlgauss"),
    ],
)
def test_padding_changes_nothing(discrete, variant, encoder, labels):
    spec = spec_for(discrete)
    cfg = small_cfg(variant=variant, num_bins=17, critic_labels=labels, model={"encoder": encoder})
    rng = np.random.default_rng(0)
    batch = random_batch(spec, 5, 10, rng, min_len=3)
    assert (~batch.mask).sum() > 5
    other = scramble_padding(batch, rng)
    l1, l2 = AmagoLearner(spec, cfg), AmagoLearner(spec, cfg)
    out1, g1 = losses_and_grads(l1, batch)
    out2, g2 = losses_and_grads(l2, other)
    for k in out1:
        assert out1[k] == pytest.approx(out2[k], rel=1e-5, abs=1e-6), k
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n
    norm1, norm2 = l1.agent.policy.tstep.norm, l2.agent.policy.tstep.norm
    assert torch.equal(norm1.mean, norm2.mean) and torch.equal(norm1.var, norm2.var)
    assert torch.equal(l1.agent.popart.mu, l2.agent.popart.mu)


@pytest.mark.parametrize("discrete", [True, False])
def test_online_actor_term_leaves_critics_alone(discrete):
    spec = spec_for(discrete)
    learner = AmagoLearner(spec, small_cfg())
    batch = random_batch(spec, 4, 8, np.random.default_rng(1), min_len=4)
    t = learner._to_tensors(batch)
    out = learner.compute_losses(t)
    out["online_loss"].backward()
    ag = learner.agent
    for n, p in ag.critics.named_parameters():
        assert p.grad is None or not p.grad.any(), n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ag.policy.actor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ag.policy.traj.parameters())
    # and the critic loss does train the critics
    learner.optimizer.zero_grad()
    out = learner.compute_losses(t)
    out["critic_loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ag.critics.parameters())
    assert all(p.grad is None for p in ag.target_critics.parameters())


def test_transition_alignment_and_masked_rows():
    """The transition at t uses r = prev_reward[t+1], done = terminated[t+1], mask[t+1]."""
    spec = spec_for(True)
    learner = AmagoLearner(spec, small_cfg(reward_scale=10.0))
    batch = random_batch(spec, 2, 2, np.random.default_rng(2))
    batch.prev_reward[:] = [[0.0, 0.5], [0.0, 100.0]]
    batch.terminated[:] = [[False, True], [False, False]]
    batch.mask[:] = [[True, True], [True, False]]  # row 1 holds no transition
    m = learner.train_step(batch)
    assert m["td_target_mean"] == pytest.approx(5.0)  # c_r * r, no bootstrap after terminal
    assert m["reward_mean"] == pytest.approx(0.5)
    assert m["valid_timesteps"] == 3 and m["seq_timesteps"] == 4
    batch.terminated[0, 1] = False  # truncated instead: bootstraps from the next state
    m2 = learner.train_step(batch)
    assert m2["td_target_mean"] != pytest.approx(5.0, abs=1e-3)


def test_obs_normaliser_uses_valid_rows_only():
    spec = spec_for(True)
    learner = AmagoLearner(spec, small_cfg())
    batch = random_batch(spec, 4, 6, np.random.default_rng(3), min_len=2)
    learner.train_step(batch)
    rows = batch.obs["observation"][batch.mask]  # (N, 4)
    norm = learner.agent.policy.tstep.norm
    assert np.allclose(norm.mean.numpy(), rows.mean(0), atol=1e-6)
    assert np.allclose(norm.var.numpy(), rows.var(0), atol=1e-5)
    assert norm.count.item() == batch.mask.sum()
    weights = learner.policy_weights()
    assert torch.equal(weights["tstep.norm.mean"], norm.mean)  # shipped to actors


def test_ema_targets_and_counters():
    spec = spec_for(False)
    cfg = small_cfg(tau=0.25)
    learner = AmagoLearner(spec, cfg)
    ag = learner.agent
    before = [p.clone() for p in ag.target_critics.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, ag.critics.parameters()))  # hard copy
    m = learner.train_step(random_batch(spec, 3, 6, np.random.default_rng(4)))
    for old, tgt, onl in zip(before, ag.target_critics.parameters(), ag.critics.parameters()):
        assert torch.allclose(tgt, 0.75 * old + 0.25 * onl, atol=1e-6)
    assert learner.version == 1 and m["step"] == 1.0
    assert np.isfinite(list(m.values())).all()
    for key in (
        "critic_loss",
        "online_loss",
        "bc_loss",
        "q_mean",
        "popart_mu",
        "popart_sigma",
        "grad_norm",
        "lr",
        "seq_timesteps",
        "filter_frac",
    ):
        assert key in m


def test_warmup_and_grad_clip():
    spec = spec_for(True)
    learner = AmagoLearner(spec, small_cfg(lr=1e-3, warmup_steps=4, grad_clip=1e-3))
    assert [learner.learning_rate(s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    m = learner.train_step(random_batch(spec, 3, 6, np.random.default_rng(5)))
    assert m["lr"] == pytest.approx(2.5e-4)
    assert m["grad_norm"] > 1e-3  # reported before clipping
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in learner._params if p.grad is not None))
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_path_runs_on_cpu():
    spec = spec_for(True)
    learner = AmagoLearner(spec, small_cfg(bf16="on"))
    m = learner.train_step(random_batch(spec, 3, 6, np.random.default_rng(6)))
    assert learner.bf16 and np.isfinite(list(m.values())).all()


def test_policy_weights_are_cpu_copies():
    spec = spec_for(True)
    learner = AmagoLearner(spec, small_cfg())
    w = learner.policy_weights()
    assert set(w) == set(learner.agent.policy.state_dict())
    assert not any(k.startswith(("critics", "target")) for k in w)
    assert all(v.device.type == "cpu" for v in w.values())
    k = "actor.net.0.weight"
    w[k].add_(1.0)
    assert not torch.equal(w[k], learner.agent.policy.state_dict()[k])


@pytest.mark.parametrize(
    "change,field",
    [
        ({"model": ModelConfig(n_heads=3)}, "model.n_heads"),
        ({"model": ModelConfig(encoder="lstm")}, "model.encoder"),
        ({"gammas": [0.9, 1.0]}, "gammas"),
        ({"num_critics_td": 5}, "num_critics_td"),
        ({"variant": "amago3"}, "variant"),
        ({"critic_labels": "threehot"}, "critic_labels"),
        ({"critic_label_sigma": 0.0}, "critic_label_sigma"),
        ({"device": "tpu"}, "device"),
        ({"bf16": "yes"}, "bf16"),
        ({"tau": 0.0}, "tau"),
        ({"max_seq_len": 1}, "max_seq_len"),
    ],
)
def test_config_validation_names_the_field(change, field):
    cfg = LearnerConfig(**change)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.field == field
    with pytest.raises(ConfigError):
        AmagoLearner(spec_for(True), cfg)


def test_default_config_is_valid_and_round_trips():
    cfg = LearnerConfig()
    cfg.validate()
    assert cfg.gammas[-1] == 0.999 and cfg.model.d_model == 256 and cfg.num_critics == 4
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg


def test_image_observations():
    spec = EnvSpec(
        {"img": ArraySpec((16, 16, 3), "uint8"), "vec": ArraySpec((2,), "float32")}, 3, True, 20
    )
    cfg = small_cfg(
        model={"cnn_channels": [8, 8], "cnn_kernels": [4, 3], "cnn_strides": [2, 1], "cnn_out": 16}
    )
    learner = AmagoLearner(spec, cfg)
    m = learner.train_step(random_batch(spec, 2, 5, np.random.default_rng(7)))
    assert np.isfinite(list(m.values())).all()
    assert learner.agent.policy.tstep.image_keys == ["img"]
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in learner.agent.policy.tstep.cnns.parameters()
    )


def test_config_coerced_from_omegaconf_node():
    from omegaconf import OmegaConf

    node = OmegaConf.structured(small_cfg())
    node.lr = 5e-4
    learner = AmagoLearner(spec_for(True), node)
    assert isinstance(learner.cfg, LearnerConfig) and learner.cfg.lr == 5e-4
    assert learner.cfg.model.d_model == 32
    policy = learner.make_policy(2)
    assert policy.cfg == learner.cfg


@pytest.mark.parametrize("variant,encoder", [("amago", "transformer"), ("amago2", "gru")])
def test_trailing_padding_is_cut_and_changes_no_loss(variant, encoder):
    """Rows of at most 9 real steps in a 24-step window: the update runs on 16 columns
    (the longest row rounded up to 8) and computes the same losses and gradients as on
    the whole window (critic subsets fixed: every critic in every target)."""
    from common.records import trim_padding

    spec = spec_for(True)
    model = {"encoder": encoder, "dropout": 0.0}
    cfg = small_cfg(variant=variant, num_critics_td=3, max_seq_len=24, model=model)
    batch = random_batch(spec, 5, 24, np.random.default_rng(3), min_len=3)
    batch.mask[:, 9:] = False
    cut = trim_padding(batch)
    assert cut.shape == (5, 16) and trim_padding(cut) is cut
    assert np.array_equal(cut.mask, batch.mask[:, :16]) and cut.obs.keys() == batch.obs.keys()
    out1, g1 = losses_and_grads(AmagoLearner(spec, cfg), batch)
    out2, g2 = losses_and_grads(AmagoLearner(spec, cfg), cut)
    for k in out1:
        assert out1[k] == pytest.approx(out2[k], rel=1e-5, abs=1e-6), k
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n
    m = AmagoLearner(spec, cfg).train_step(batch)
    assert m["seq_timesteps"] == 5 * 16 and m["valid_timesteps"] == batch.mask.sum()
    full = random_batch(spec, 2, 24, np.random.default_rng(4))
    assert trim_padding(full) is full
