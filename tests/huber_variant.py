"""A learner variant written the way a new one is: this one file (saved as
``learner/variants/<name>.py`` it would be found and registered on the first lookup; here the
tests import it). ``learner.variant=test_huber`` then selects it, from Python or the command
line; a ``configs/learner/<name>.yaml`` preset is optional.

``"test_huber"``: AMAGO's scalar critic (PopArt, online + filtered-BC actor) with a Huber
critic loss in place of the squared error, and a default BC weight of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learner.variants import VariantAgent, VariantConfig, register_variant
from learner.variants.amago import Amago


@register_variant("test_huber")
class HuberCritic(Amago):
    """AMAGO with a Huber critic loss (``delta`` in PopArt-normalised units)."""

    default_bc_weight = 0.25
    delta = 1.0

    def critic_loss(
        self,
        agent: VariantAgent,
        cfg: VariantConfig,
        out: torch.Tensor,
        values: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        y = agent.popart.normalize(target).unsqueeze(0).expand_as(values)
        return F.huber_loss(values, y, reduction="none", delta=self.delta)
