"""Pure tensor functions of the AMAGO update (no modules, no state): TD targets, the advantage
filter, masked means, symlog and the two-hot encoding. Unit-tested against hand computations.

Shape letters: C critics, B batch rows, T transitions (= L - 1), G discounts, A actions,
K two-hot / HL-Gauss bins.
"""

from __future__ import annotations

import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``valid`` (broadcastable to ``x``) is True.

    Invalid entries are selected away with ``torch.where`` (not multiplied by 0), so a NaN or
    inf computed on padding cannot leak into the result or its gradient.
    """
    valid = valid.expand_as(x)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    return total / valid.sum().clamp_min(1).to(x.dtype)


def sample_critic_subsets(
    num_critics: int, k: int, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``k`` distinct critic indices per element: int64 ``(k, *shape)`` (uses torch's RNG).

    For k = 2 (the default) this draws i uniformly and j uniformly among the other C - 1.
    """
    if k == num_critics:
        idx = torch.arange(num_critics, device=device).view(-1, *([1] * len(shape)))
        return idx.expand(num_critics, *shape)
    if k == 1:
        return torch.randint(num_critics, (1, *shape), device=device)
    if k == 2:
        i = torch.randint(num_critics, shape, device=device)
        j = (i + 1 + torch.randint(num_critics - 1, shape, device=device)) % num_critics
        return torch.stack((i, j))
    # general k: the first k of a random permutation per element
    keys = torch.rand((num_critics, *shape), device=device)
    return keys.argsort(dim=0)[:k]


def td_target(
    reward: torch.Tensor,  # (B, T)
    done: torch.Tensor,  # (B, T) float 0/1
    q_next: torch.Tensor,  # (C, B, T, G) Q_targ(s', a') per critic, in raw (unnormalised) units
    gammas: torch.Tensor,  # (G,)
    reward_scale: float,
    subset: torch.Tensor,  # (k, B, T, G) critic indices, from sample_critic_subsets
    reduce: str = "min",
) -> torch.Tensor:
    """Multi-gamma TD target ``y = c_r r + gamma (1 - done) reduce_{c in subset} Q_targ``.

    ``reduce`` is "min" (clipped double-Q over the random subset, AMAGO) or "mean" (used by
    the two-hot variant whose actor has no online term). Returns ``(B, T, G)``.
    """
    picked = torch.gather(q_next, 0, subset)  # (k, B, T, G)
    boot = picked.amin(0) if reduce == "min" else picked.mean(0)  # (B, T, G)
    return reward_scale * reward.unsqueeze(-1) + gammas * (1.0 - done).unsqueeze(-1) * boot


def value_error_weights(
    logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Per-transition weights of a bin critic's cross-entropy (``critic_loss_weighting:
    error``): ``|E_bins[pred] - target|`` in the bins' (symlog) units, divided by its mean
    over the valid transitions, without gradient.

    logits ``(C, B, T, G, K)``, target ``(B, T, G)`` (symlog), valid ``(B, T)``; returns
    ``(C, B, T, G)`` with mean 1 over valid entries. Cross-entropy alone gives every
    transition a bounded, similar-sized gradient; weighted, the transitions the critic gets
    most wrong (in T-Maze: the junction, while the hint is unknown) dominate, as they do
    under a squared error.
    """
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        pred = torch.softmax(logits.float(), -1) @ bins.float()  # (C, B, T, G)
        err = (pred - target.float().unsqueeze(0)).abs()
        c, b, t, g = err.shape
        mask = valid.view(1, b, t, 1).expand_as(err)
        return err / masked_mean(err, mask).clamp_min(1e-6)


def advantage_filter(q_sa: torch.Tensor, v_s: torch.Tensor) -> torch.Tensor:
    """Binary filter ``1[A > 0]`` with ``A = mean_c Q_c(s, a) - mean_c V_c(s)``.

    q_sa, v_s: ``(C, B, T, G)`` (V_c(s) = E_{a~pi} Q_c(s, a)). Returns float ``(B, T, G)``.
    """
    adv = q_sa.mean(0) - v_s.mean(0)
    return (adv > 0).to(q_sa.dtype)


def twohot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of ``x`` (any shape) over sorted ``bins`` (K,): ``(*x.shape, K)``.

    The two bins around x share the unit mass in proportion to proximity, so the encoding's
    expectation over ``bins`` equals x (clamped to the bin range).
    """
    k = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    hi = torch.searchsorted(bins, x.contiguous(), right=False).clamp(1, k - 1)  # first bin >= x
    lo = hi - 1
    b_lo, b_hi = bins[lo], bins[hi]
    w_hi = ((x - b_lo) / (b_hi - b_lo)).clamp(0.0, 1.0)
    out = torch.zeros((*x.shape, k), dtype=x.dtype, device=x.device)
    out.scatter_(-1, lo.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, hi.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def hlgauss(x: torch.Tensor, bins: torch.Tensor, sigma: float) -> torch.Tensor:
    """HL-Gauss labels of ``x`` (any shape) over evenly spaced ``bins`` (K,): ``(*x.shape, K)``.

    The mass of a Normal(x, (sigma bin widths)^2) on each bin's interval (the bin centre +- half
    a width; the outer bins' intervals end at the outer centres' edges), renormalised to 1
    (Imani & White 2018; Farebrother et al. 2024). Unlike a two-hot label it changes smoothly
    when x moves by less than a bin, so bootstrapped targets drifting by a bin do not swamp
    the cross-entropy with label jitter.
    """
    width = bins[1] - bins[0]
    edges = torch.cat((bins - 0.5 * width, bins[-1:] + 0.5 * width))  # (K + 1,)
    x = x.clamp(bins[0], bins[-1]).unsqueeze(-1)  # (..., 1)
    cdf = torch.special.ndtr((edges - x) / (sigma * width))  # (..., K + 1)
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)


def twohot_value(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected raw value of a two-hot critic: ``symexp(sum_k softmax(logits)_k bins_k)``.

    logits ``(..., K)`` over symlog-spaced ``bins`` (K,); returns float32 ``(...)``.

    Always fp32, under autocast too: autocast runs ``@`` in bf16 even on fp32 inputs, and a
    bf16 expectation (8 mantissa bits) then symexp'd is 0.5-7% off, error that went straight
    into the TD targets and the advantage filter.
    """
    with torch.autocast(logits.device.type, enabled=False):
        return symexp(torch.softmax(logits.float(), dim=-1) @ bins.float())
