"""``"amago2"``: AMAGO-2's update (docs/configuration.md "AMAGO-2").

* critic: ``learner.num_bins`` logits per value over bins evenly spaced in symlog space (no
  PopArt); loss: cross-entropy against HL-Gauss (default) or two-hot labels of the symlog TD
  target (``learner.critic_labels``), per transition weighted by the value error
  (``learner.critic_loss_weighting: error``) or not (``none``); a value is the expectation
  over the bins, symexp'd back to raw units;
* TD target: the mean over a random subset of the target critics;
* actor: filtered behaviour cloning only (default weight 1.0), the advantage from the bins'
  expected values (no gradient reaches the actor through the critics);
* derived config: null two-hot bounds become +- :func:`twohot_bound` of the task (with
  ``learner.reward_bound`` raised to what a random-action probe of the env saw).

torch is imported inside the hooks that use it (see :mod:`learner.variants`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from learner.variants import (
    C,
    Derivation,
    LearnerVariant,
    VariantAgent,
    VariantConfig,
    register_variant,
)

if TYPE_CHECKING:
    from torch import Tensor


def twohot_bound(reward_scale: float, reward_bound: float, gamma: float, horizon: int) -> float:
    """Twice the largest |discounted return| of a rollout: ``2 c_r r_max sum_{t<H} gamma^t``
    (the factor 2 is headroom; in symlog space it costs log 2 of range)."""
    discounted = (1.0 - gamma ** max(int(horizon), 1)) / (1.0 - gamma)
    return float(2.0 * reward_scale * reward_bound * discounted)


def bin_range(cfg: VariantConfig, horizon: int) -> tuple[float, float]:
    """The raw return range of the bins: the explicit bounds, else +- :func:`twohot_bound`
    for a rollout ``horizon`` (each null bound on its own)."""
    b = twohot_bound(cfg.reward_scale, cfg.reward_bound, max(cfg.gammas), horizon)
    lo = -b if cfg.twohot_min is None else float(cfg.twohot_min)
    hi = b if cfg.twohot_max is None else float(cfg.twohot_max)
    return lo, hi


@register_variant("amago2")
class Amago2(LearnerVariant):
    """Classification critics over symlog bins (no PopArt); filtered-BC-only actor."""

    default_bc_weight = 1.0
    online_actor = False
    td_reduce = "mean"

    def critic_outputs(self, cfg: VariantConfig) -> int:
        return int(cfg.num_bins)

    def value_bins(self, cfg: VariantConfig, horizon: int) -> Tensor:
        """``num_bins`` evenly spaced over the symlog of :func:`bin_range`."""
        import torch

        from learner.losses import symlog

        lo, hi = symlog(torch.tensor(bin_range(cfg, horizon), dtype=torch.float64))
        return torch.linspace(float(lo), float(hi), cfg.num_bins)

    def values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        """Expected raw value over the bins (fp32), without gradient."""
        from learner.losses import twohot_value

        return twohot_value(out.detach(), agent.bins)

    def target_values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        return self.values(agent, out, trailing)

    def raw_values(self, agent: VariantAgent, values: Tensor) -> Tensor:
        return values

    def critic_loss(
        self,
        agent: VariantAgent,
        cfg: VariantConfig,
        out: Tensor,
        values: Tensor,
        target: Tensor,
        valid: Tensor,
    ) -> Tensor:
        """Cross-entropy of the logits against labels of the symlog target over the bins."""
        import torch.nn.functional as F

        from learner.losses import hlgauss, symlog, twohot, value_error_weights

        y = symlog(target)  # (B, T, G)
        if cfg.critic_labels == "twohot":
            labels = twohot(y, agent.bins)
        else:
            labels = hlgauss(y, agent.bins, cfg.critic_label_sigma)  # (B, T, G, K)
        loss = -(labels.unsqueeze(0) * F.log_softmax(out.float(), -1)).sum(-1)
        if cfg.critic_loss_weighting == "error":
            loss = loss * value_error_weights(out, y, agent.bins, valid)
        return loss

    def derive_needs_env(self, cfg: VariantConfig) -> bool:
        return None in (cfg.twohot_min, cfg.twohot_max)

    def derive(
        self, cfg: C, horizon: int, reward_probe: float | None
    ) -> tuple[C, list[Derivation]]:
        """Null two-hot bounds -> +- :func:`twohot_bound` of the task, ``reward_bound`` first
        raised to ``reward_probe`` when that is larger."""
        if not self.derive_needs_env(cfg):
            return cfg, []
        out: list[Derivation] = []
        if reward_probe is not None and reward_probe > cfg.reward_bound:
            cfg = dataclasses.replace(cfg, reward_bound=float(reward_probe))
            out.append(Derivation("reward_bound", reward_probe, "random-action env probe"))
        lo, hi = bin_range(cfg, horizon)
        cfg = dataclasses.replace(cfg, twohot_min=lo, twohot_max=hi)
        why = f"2 x reward_scale x reward_bound x discounted horizon {horizon}"
        out.append(Derivation("twohot_min/max", f"{lo:.4g}/{hi:.4g}", why))
        return cfg, out
