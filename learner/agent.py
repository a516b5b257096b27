"""The AMAGO agent as modules: policy network (encoders + multi-gamma actor), critic ensemble,
target heads and PopArt. No optimisation logic (that is ``learner.amago``).

Shape letters: B batch rows, L timesteps, T = L - 1 transitions, D d_model, G discounts,
A action dim, C critics, K two-hot bins (1 for scalar critics).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from common.spec import EnvSpec
from learner.config import LearnerConfig
from learner.losses import symlog
from learner.model import Reduce, TimestepEncoder, make_traj_encoder, mlp

# --------------------------------------------------------------------------- distributions


def categorical_probs(logits: torch.Tensor, prob_clip: float) -> torch.Tensor:
    """Softmax with every probability clipped to >= prob_clip, renormalised: (..., A)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if prob_clip > 0:
        probs = probs.clamp_min(prob_clip)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def split_gaussian(
    params: torch.Tensor, log_std_min: float, log_std_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2A) actor output -> mean (..., A), log_std (..., A) squashed into its bounds."""
    mean, raw = params.float().chunk(2, dim=-1)
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw) + 1.0)
    return mean, log_std


def tanh_gaussian_rsample(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Reparameterised sample tanh(mean + std * eps) in (-1, 1): (..., A)."""
    return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))


def tanh_gaussian_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """log pi(action) of the tanh-Gaussian, summed over action dims: (...).

    Actions are clipped to [-0.999, 0.999] first (data on the box boundary has no density).
    """
    a = action.clamp(-0.999, 0.999)
    u = torch.atanh(a)
    z = (u - mean) / log_std.exp()
    log_n = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    return (log_n - torch.log1p(-a.pow(2))).sum(-1)


# --------------------------------------------------------------------------- heads


class ActorHead(nn.Module):
    """Multi-gamma actor: (..., D) -> (..., G, A) logits (discrete) or (..., G, 2A) Gaussian
    parameters (continuous)."""

    def __init__(self, d_in: int, spec: EnvSpec, cfg: LearnerConfig):
        super().__init__()
        self.num_gammas = len(cfg.gammas)
        self.per_gamma = spec.action_dim if spec.discrete else 2 * spec.action_dim
        m = cfg.model
        self.net = mlp(d_in, m.actor_hidden, m.actor_layers, self.num_gammas * self.per_gamma)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        out = self.net(s).float()
        return out.view(*s.shape[:-1], self.num_gammas, self.per_gamma)


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(t, -bound, bound)


class CriticEnsemble(nn.Module):
    """C independent critic MLPs evaluated together with batched matmuls.

    Discrete actions: Q(s, .) for every action and discount, ``(C, *lead, G, A, K)``.
    Continuous actions: Q(s, a_g) with the discount fed as a feature (symlog of its
    horizon 1 / (1 - gamma)) next to the action, ``(C, *lead, G, K)``. K = 1 for scalar
    critics, ``num_bins`` for the two-hot critic (logits).

    The state's first-layer projection is shared by everything evaluated at the same states
    (:meth:`embed_state`), so the online actor term costs no second pass over the states.
    ``frozen=True`` uses detached parameters: gradients reach the inputs only.
    """

    def __init__(self, d_in: int, spec: EnvSpec, cfg: LearnerConfig, out_per_value: int):
        super().__init__()
        m = cfg.model
        c, h = cfg.num_critics, m.critic_hidden
        self.num_critics, self.hidden, self.discrete = c, h, spec.discrete
        self.num_gammas, self.action_dim, self.k = len(cfg.gammas), spec.action_dim, out_per_value
        self.w_in = nn.Parameter(_uniform_(torch.empty(d_in, c * h), d_in))
        self.b_in = nn.Parameter(_uniform_(torch.empty(c * h), d_in))
        if spec.discrete:
            self.w_act = None
            d_out = self.num_gammas * spec.action_dim * out_per_value
        else:
            fan = d_in + 1 + spec.action_dim
            self.w_act = nn.Parameter(_uniform_(torch.empty(1 + spec.action_dim, c * h), fan))
            d_out = out_per_value
            gammas = torch.tensor(cfg.gammas, dtype=torch.float32)
            self.register_buffer("gamma_feat", symlog(1.0 / (1.0 - gammas)).unsqueeze(-1))  # (G, 1)
        self.w_hid = nn.ParameterList(
            [nn.Parameter(_uniform_(torch.empty(c, h, h), h)) for _ in range(m.critic_layers - 1)]
        )
        self.b_hid = nn.ParameterList(
            [nn.Parameter(_uniform_(torch.empty(c, 1, h), h)) for _ in range(m.critic_layers - 1)]
        )
        self.w_out = nn.Parameter(_uniform_(torch.empty(c, h, d_out), h))
        self.b_out = nn.Parameter(_uniform_(torch.empty(c, 1, d_out), h))

    def embed_state(self, s: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """First-layer state projection: (*lead, D) -> (*lead, C * hidden)."""
        w, b = (self.w_in.detach(), self.b_in.detach()) if frozen else (self.w_in, self.b_in)
        return F.linear(s, w.t(), b)

    def head(
        self, hs: torch.Tensor, action: torch.Tensor | None = None, frozen: bool = False
    ) -> torch.Tensor:
        """hs from :meth:`embed_state`; action (*lead, G, A) for continuous critics."""
        lead = hs.shape[:-1]
        c, h = self.num_critics, self.hidden
        p = (lambda t: t.detach()) if frozen else (lambda t: t)
        if self.discrete:
            x = F.leaky_relu(hs).reshape(-1, c, h)  # (N, C, h)
        else:
            ga = torch.cat(
                (self.gamma_feat.to(action.dtype).expand(*action.shape[:-1], 1), action), dim=-1
            )  # (*lead, G, 1 + A)
            x = hs.unsqueeze(-2) + ga @ p(self.w_act).to(hs.dtype)  # (*lead, G, C*h)
            x = F.leaky_relu(x).reshape(-1, c, h)  # (N*G, C, h)
        x = x.transpose(0, 1)  # (C, N, h)
        for w, b in zip(self.w_hid, self.b_hid):
            x = F.leaky_relu(torch.baddbmm(p(b).to(x.dtype), x, p(w).to(x.dtype)))
        out = torch.baddbmm(p(self.b_out).to(x.dtype), x, p(self.w_out).to(x.dtype)).float()
        if self.discrete:
            return out.view(c, *lead, self.num_gammas, self.action_dim, self.k)
        return out.view(c, *lead, self.num_gammas, self.k)

    def forward(
        self, s: torch.Tensor, action: torch.Tensor | None = None, frozen: bool = False
    ) -> torch.Tensor:
        return self.head(self.embed_state(s, frozen), action, frozen)


class PopArt(nn.Module):
    """PopArt value normalisation per discount (van Hasselt et al. 2016).

    Critic outputs x are mapped to normalised values ``n = w x + b``; raw values are
    ``sigma n + mu``. Updating the statistics (mu, nu = E[y^2]) rescales w, b so that raw
    outputs are preserved. Disabled: every map is the identity.
    """

    def __init__(self, num_gammas: int, beta: float, init_nu: float, enabled: bool):
        super().__init__()
        self.beta, self.enabled = beta, enabled
        self.register_buffer("mu", torch.zeros(num_gammas))
        self.register_buffer("nu", torch.full((num_gammas,), float(init_nu)))
        self.register_buffer("w", torch.ones(num_gammas))
        self.register_buffer("b", torch.zeros(num_gammas))
        self.register_buffer("t", torch.zeros(()))

    @staticmethod
    def _g(p: torch.Tensor, trailing: int) -> torch.Tensor:
        return p.view(-1, *([1] * trailing))

    @property
    def sigma(self) -> torch.Tensor:
        return (self.nu - self.mu**2).clamp(1e-4, 1e8).sqrt().clamp(1e-4, 1e6)

    def forward(self, x: torch.Tensor, trailing: int = 0) -> torch.Tensor:
        """Normalised output ``w x + b``; the G dim of x is followed by ``trailing`` dims."""
        if not self.enabled:
            return x
        return self._g(self.w, trailing) * x + self._g(self.b, trailing)

    def raw(self, x: torch.Tensor, trailing: int = 0) -> torch.Tensor:
        """Raw-scale value of critic output x: ``sigma (w x + b) + mu``."""
        if not self.enabled:
            return x
        return self._g(self.sigma, trailing) * self(x, trailing) + self._g(self.mu, trailing)

    def denormalize(self, n: torch.Tensor) -> torch.Tensor:
        """Normalised values (..., G) -> raw scale: ``sigma n + mu``."""
        if not self.enabled:
            return n
        return self.sigma * n + self.mu

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """Raw targets (..., G) -> normalised space."""
        if not self.enabled:
            return y
        return (y - self.mu) / self.sigma

    @torch.no_grad()
    def update(self, y: torch.Tensor, valid: torch.Tensor, reduce: Reduce | None = None) -> None:
        """Move the statistics toward the masked batch of targets y (..., G), valid (...).
        ``reduce`` (data-parallel learners: sums over the ranks) makes the batch every
        rank's batch together (:meth:`learner.distributed.ProcessGroup.sum_`)."""
        if not self.enabled:
            return
        self.t += 1
        old_sigma, old_mu = self.sigma, self.mu.clone()
        beta = self.beta / (1.0 - (1.0 - self.beta) ** self.t)  # debiased step size
        w = valid.to(y.dtype).unsqueeze(-1)  # (..., 1)
        dims = tuple(range(y.dim() - 1))
        sums = [w.sum(), (w * y).sum(dims), (w * y * y).sum(dims)]
        if reduce is not None:
            sums = reduce(sums)
        count, y_sum, sq_sum = sums
        n = count.clamp_min(1.0)
        mean = y_sum / n
        sq_mean = sq_sum / n
        self.mu.mul_(1.0 - beta).add_(beta * mean)
        self.nu.mul_(1.0 - beta).add_(beta * sq_mean)
        new_sigma = self.sigma
        self.w.mul_(old_sigma / new_sigma)
        self.b.copy_((old_sigma * self.b + old_mu - self.mu) / new_sigma)


# --------------------------------------------------------------------------- agent


class PolicyNet(nn.Module):
    """What acting needs: timestep encoder, trajectory encoder, actor (and obs statistics)."""

    def __init__(self, spec: EnvSpec, cfg: LearnerConfig):
        super().__init__()
        self.tstep = TimestepEncoder(spec, cfg.model)
        self.traj = make_traj_encoder(cfg.model.tstep_out, cfg.model)
        self.actor = ActorHead(cfg.model.d_model, spec, cfg)

    def encode(
        self,
        obs: dict[str, torch.Tensor],  # each (B, L, ...)
        prev_action: torch.Tensor,  # (B, L, A)
        prev_reward: torch.Tensor,  # (B, L)
        time_idx: torch.Tensor,  # (B, L)
        window: int | None = None,
    ) -> torch.Tensor:
        """The state representation of every timestep: (B, L, D)."""
        return self.traj(self.tstep(obs, prev_action, prev_reward), time_idx, window)

    def step(
        self,
        obs: dict[str, torch.Tensor],  # each (n, ...)
        prev_action: torch.Tensor,  # (n, A)
        prev_reward: torch.Tensor,  # (n,)
        time_idx: torch.Tensor,  # (n,)
        state,
        slots: torch.Tensor | None,
    ) -> torch.Tensor:
        """One new timestep per slot, with cached context: (n, D)."""
        return self.traj.step(self.tstep(obs, prev_action, prev_reward), time_idx, state, slots)


class AmagoAgent(nn.Module):
    """Policy network + critic ensemble, EMA target actor/critics and PopArt (and ``bins``
    where the variant's critic has them: :mod:`learner.variants`).

    Targets are heads only: as in AMAGO, target values are computed on the online encoder's
    (detached) states, so the expensive trajectory encoder runs once per update.
    """

    def __init__(self, spec: EnvSpec, cfg: LearnerConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        variant = cfg.variant_impl()
        self.policy = PolicyNet(spec, cfg)
        self.critics = CriticEnsemble(cfg.model.d_model, spec, cfg, variant.critic_outputs(cfg))
        self.target_actor = copy.deepcopy(self.policy.actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.popart = PopArt(
            len(cfg.gammas),
            cfg.popart_beta,
            cfg.popart_init_nu,
            variant.uses_popart(cfg),
        )
        self.register_buffer("gammas", torch.tensor(cfg.gammas, dtype=torch.float32))
        bins = variant.value_bins(cfg, spec.max_episode_steps)
        if bins is not None:  # a classification critic's support (symlog units)
            self.register_buffer("bins", bins)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.policy, self.critics) for p in m.parameters() if p.requires_grad]

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """EMA: target <- (1 - tau) target + tau online."""
        for target, online in (
            (self.target_actor, self.policy.actor),
            (self.target_critics, self.critics),
        ):
            for t, o in zip(target.parameters(), online.parameters()):
                t.lerp_(o, tau)
