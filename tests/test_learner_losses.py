"""Pure loss pieces against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from learner.agent import PopArt, categorical_probs, tanh_gaussian_log_prob
from learner.losses import (
    advantage_filter,
    hlgauss,
    masked_mean,
    sample_critic_subsets,
    symexp,
    symlog,
    td_target,
    twohot,
    twohot_value,
    value_error_weights,
)


def test_td_target_min_over_chosen_subset():
    # C=3 critics, B=1, T=2, G=2
    q_next = torch.tensor(
        [
            [[[1.0, 10.0], [4.0, 40.0]]],
            [[[2.0, 20.0], [5.0, 50.0]]],
            [[[3.0, 30.0], [6.0, 60.0]]],
        ]
    )  # (C, B, T, G)
    reward = torch.tensor([[1.0, -1.0]])
    done = torch.tensor([[0.0, 1.0]])
    gammas = torch.tensor([0.5, 0.9])
    subset = torch.tensor(
        [
            [[[1, 2], [0, 0]]],
            [[[2, 0], [2, 1]]],
        ]
    )  # (k=2, B, T, G)
    y = td_target(reward, done, q_next, gammas, 10.0, subset, "min")
    # t=0, g=0: critics {1,2} -> min(2, 3) = 2 -> 10*1 + 0.5*2 = 11
    # t=0, g=1: critics {2,0} -> min(30, 10) = 10 -> 10 + 0.9*10 = 19
    # t=1: done -> -10 for both discounts
    assert torch.allclose(y, torch.tensor([[[11.0, 19.0], [-10.0, -10.0]]]))
    y_mean = td_target(reward, done, q_next, gammas, 10.0, subset, "mean")
    assert torch.allclose(y_mean[0, 0], torch.tensor([10 + 0.5 * 2.5, 10 + 0.9 * 20.0]))


def test_td_target_truncation_bootstraps():
    q_next = torch.full((2, 1, 1, 1), 5.0)
    subset = torch.zeros((2, 1, 1, 1), dtype=torch.long)
    y = td_target(torch.zeros(1, 1), torch.zeros(1, 1), q_next, torch.tensor([0.99]), 1.0, subset)
    assert y.item() == pytest.approx(0.99 * 5.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_critic_subsets_are_distinct_and_cover(k):
    torch.manual_seed(0)
    idx = sample_critic_subsets(4, k, (500,))
    assert idx.shape == (k, 500)
    assert int(idx.min()) >= 0 and int(idx.max()) < 4
    srt = idx.sort(0).values
    assert bool((srt[1:] != srt[:-1]).all())  # distinct within each element
    assert set(idx.flatten().tolist()) == {0, 1, 2, 3}
    if k == 2:  # every unordered pair shows up
        pairs = {tuple(p) for p in srt.t().tolist()}
        assert len(pairs) == 6


def test_advantage_filter_by_hand():
    # C=2, B=1, T=3, G=1
    q_sa = torch.tensor([[[[1.0], [0.0], [2.0]]], [[[3.0], [0.0], [0.0]]]])  # means 2, 0, 1
    v_s = torch.tensor([[[[1.0], [-1.0], [1.0]]], [[[1.0], [0.0], [1.0]]]])  # means 1, -0.5, 1
    f = advantage_filter(q_sa, v_s)
    assert f.squeeze().tolist() == [1.0, 1.0, 0.0]  # A = 1, 0.5, 0 (not > 0)


def test_twohot_by_hand():
    bins = torch.tensor([0.0, 1.0, 2.0, 3.0])
    x = torch.tensor([1.25, 0.0, 3.0, -5.0, 9.0, 2.0])
    enc = twohot(x, bins)
    expected = torch.tensor(
        [
            [0.0, 0.75, 0.25, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0],  # clamped below
            [0.0, 0.0, 0.0, 1.0],  # clamped above
            [0.0, 0.0, 1.0, 0.0],
        ]
    )
    assert torch.allclose(enc, expected)
    assert torch.allclose(enc.sum(-1), torch.ones(6))
    assert torch.allclose(enc @ bins, x.clamp(0, 3))


def test_hlgauss_labels_by_hand_and_smooth():
    bins = torch.linspace(-5.0, 5.0, 101)  # width 0.1
    x = torch.tensor([0.0, 1.234, -2.0, 9.0])
    lab = hlgauss(x, bins, sigma=3.0)
    assert lab.shape == (4, 101)
    assert torch.allclose(lab.sum(-1), torch.ones(4))
    # interior targets: the label's mean is the target, its std ~ sigma bin widths
    mean = lab[:3] @ bins
    assert torch.allclose(mean, x[:3], atol=1e-4)
    std = ((lab[:3] * (bins - mean[:, None]).pow(2)).sum(-1)).sqrt()
    assert torch.allclose(std, torch.full((3,), 0.3), rtol=0.02)
    # by hand: mass of N(0, 0.3^2) on the centre bin [-0.05, 0.05]
    centre = math.erf(0.05 / (0.3 * math.sqrt(2)))
    assert lab[0, 50].item() == pytest.approx(centre, rel=1e-4)
    assert lab[3].argmax().item() == 100  # clamped to the top bin
    # a target moving by a fifth of a bin moves the label a little; a two-hot one jumps
    near = hlgauss(torch.tensor([0.02]), bins, 3.0)
    assert (near - lab[:1]).abs().sum() < 0.15
    jump = (twohot(torch.tensor([0.02]), bins) - twohot(torch.tensor([0.0]), bins)).abs().sum()
    assert jump > 0.35


def test_value_error_weights_follow_the_error_with_mean_one_over_valid():
    bins = torch.linspace(-2.0, 2.0, 5)  # symlog units
    logits = torch.full((2, 1, 3, 1, 5), -30.0)  # (C, B, T, G, K): one-hot predictions
    logits[..., 2] = 30.0  # every prediction is bin 0.0
    logits[1, 0, 2, 0] = -30.0
    logits[1, 0, 2, 0, 4] = 30.0  # critic 1, t=2 predicts 2.0
    logits.requires_grad_(True)
    target = torch.tensor([[[1.0], [0.5], [2.0]]])  # (B, T, G)
    valid = torch.tensor([[True, True, False]])
    w = value_error_weights(logits, target, bins, valid)
    assert w.shape == (2, 1, 3, 1) and not w.requires_grad
    err = torch.tensor([[1.0, 0.5, 2.0], [1.0, 0.5, 0.0]])  # |pred - target| per critic, t
    assert torch.allclose(w[:, 0, :, 0], err / 0.75, atol=1e-5)  # mean over valid: 0.75
    assert torch.allclose(w[:, 0, :2, 0].mean(), torch.tensor(1.0), atol=1e-5)


def test_twohot_value_inverts_labels():
    bins = torch.linspace(
        float(symlog(torch.tensor(-100.0))), float(symlog(torch.tensor(100.0))), 51
    )
    y = torch.tensor([-37.0, 0.0, 2.5, 80.0])
    labels = twohot(symlog(y), bins)
    # logits whose softmax is (almost) the label distribution
    value = twohot_value(torch.log(labels + 1e-12), bins)
    assert torch.allclose(value, y, rtol=1e-4, atol=1e-4)


def test_symlog_symexp_inverse():
    x = torch.tensor([-1e4, -3.0, 0.0, 0.5, 7.0, 1e5])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)


def test_masked_mean_ignores_invalid_even_if_nan():
    x = torch.tensor([[1.0, 3.0, float("nan")], [5.0, float("inf"), 7.0]], requires_grad=True)
    valid = torch.tensor([[True, True, False], [True, False, True]])
    m = masked_mean(x, valid)
    assert m.item() == pytest.approx(4.0)
    m.backward()
    assert torch.equal(x.grad, valid.float() / 4)


def test_popart_update_by_hand_and_preserves_outputs():
    pa = PopArt(num_gammas=2, beta=0.5, init_nu=100.0, enabled=True)
    x = torch.tensor([[0.3, -2.0], [1.5, 4.0]])  # critic outputs (N=2, G=2)
    raw_before = pa.raw(x)
    assert torch.allclose(raw_before, 10.0 * x)  # sigma = sqrt(100 - 0)
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]])
    valid = torch.tensor([True, True, False])
    pa.update(y, valid)
    # debiased step at t=1: beta / (1 - (1 - beta)) = 1 -> statistics = batch moments
    assert torch.allclose(pa.mu, torch.tensor([2.0, 4.0]))
    assert torch.allclose(pa.nu, torch.tensor([5.0, 20.0]))
    assert torch.allclose(pa.sigma, torch.tensor([1.0, 2.0]))
    assert torch.allclose(pa.raw(x), raw_before, atol=1e-5)  # outputs preserved
    assert torch.allclose(pa.normalize(torch.tensor([3.0, 8.0])), torch.tensor([1.0, 2.0]))
    assert torch.allclose(pa.denormalize(pa(x)), pa.raw(x))
    # second update: beta_2 = 0.5 / (1 - 0.25) = 2/3
    pa.update(torch.tensor([[5.0, 4.0]]), torch.tensor([True]))
    b2 = 0.5 / 0.75
    assert torch.allclose(pa.mu, torch.tensor([2 + b2 * 3, 4.0]))
    assert torch.allclose(pa.nu, torch.tensor([5 + b2 * 20, 20 - b2 * 4]))
    assert torch.allclose(pa.raw(x), raw_before, atol=1e-4)


def test_popart_disabled_is_identity():
    pa = PopArt(2, 0.5, 100.0, enabled=False)
    x = torch.randn(3, 2)
    pa.update(x, torch.ones(3, dtype=torch.bool))
    assert torch.equal(pa(x), x) and torch.equal(pa.raw(x), x) and torch.equal(pa.normalize(x), x)


def test_categorical_prob_clip():
    probs = categorical_probs(torch.tensor([[100.0, 0.0, -100.0]]), 0.01)
    assert torch.allclose(probs.sum(-1), torch.ones(1))
    assert float(probs.min()) >= 0.01 / (1 + 0.02) - 1e-7


def test_tanh_gaussian_log_prob_by_hand():
    mean, log_std = torch.tensor([[0.2]]), torch.tensor([[math.log(0.5)]])
    a = torch.tensor([[0.3]])
    u = math.atanh(0.3)
    expected = (
        -0.5 * ((u - 0.2) / 0.5) ** 2
        - math.log(0.5)
        - 0.5 * math.log(2 * math.pi)
        - math.log(1 - 0.09)
    )
    assert tanh_gaussian_log_prob(mean, log_std, a).item() == pytest.approx(expected, rel=1e-5)
