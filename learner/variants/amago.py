"""``"amago"``: AMAGO's update (Grigsby et al. 2024, SPEC section 5).

* critic: one scalar per value (K = 1), PopArt-normalised per discount (``learner.popart``);
  loss: squared error against the PopArt-normalised TD target;
* TD target: clipped double-Q, the min over a random subset of the target critics;
* actor: the online term ``-min_c Q(s, a ~ pi(s))`` through frozen critics (weight
  ``learner.online_actor_weight``) plus filtered behaviour cloning (default weight 0.1);
  both compare PopArt-normalised values.

Subclass :class:`Amago` for another scalar critic (override :meth:`Amago.critic_loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from learner.variants import LearnerVariant, VariantAgent, VariantConfig, register_variant

if TYPE_CHECKING:
    from torch import Tensor


@register_variant("amago")
class Amago(LearnerVariant):
    """Scalar critics regressed on PopArt-normalised TD targets; online + filtered-BC actor."""

    default_bc_weight = 0.1
    online_actor = True
    td_reduce = "min"

    def critic_outputs(self, cfg: VariantConfig) -> int:
        return 1

    def uses_popart(self, cfg: VariantConfig) -> bool:
        return bool(cfg.popart)

    def values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        """PopArt-normalised values, with gradient (the online term's path into the actor)."""
        return agent.popart(out.squeeze(-1), trailing)

    def target_values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        return agent.popart.raw(out.squeeze(-1), trailing)

    def raw_values(self, agent: VariantAgent, values: Tensor) -> Tensor:
        return agent.popart.denormalize(values)

    def critic_loss(
        self,
        agent: VariantAgent,
        cfg: VariantConfig,
        out: Tensor,
        values: Tensor,
        target: Tensor,
        valid: Tensor,
    ) -> Tensor:
        """Squared error in PopArt-normalised space."""
        return (values - agent.popart.normalize(target).unsqueeze(0)).pow(2)
