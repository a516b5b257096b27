"""The AMAGO update (SPEC section 5) as a pure class: no Ray, no Redis.

``AmagoLearner.train_step(batch)`` runs one update on a :class:`common.records.Batch`:

* one encoder pass gives the state s_t of every timestep (B, L, D);
* transitions follow ``common.records``: at t the action is ``prev_action[:, t+1]``, the reward
  ``prev_reward[:, t+1]``, done ``terminated[:, t+1]`` (truncation bootstraps), the next state
  s_{t+1}, and the transition is real iff ``mask[:, t+1]``;
* multi-gamma TD targets ``y = c_r r + gamma (1 - done) min_{2 random of C} Q_targ(s', a')``
  with a' from the target actor (discrete: expectation over its probabilities), computed by the
  target heads on the detached online states; PopArt normalises values per discount;
* critic loss: squared error in PopArt-normalised space (variant "amago"), or cross-entropy
  against HL-Gauss (default) or two-hot labels of the symlog target over the bins (variant
  "amago2", ``critic_labels``); weight ``critic_loss_weight``;
* actor: online term ``-min_c Q_frozen(s, a ~ pi(s))`` through detached critic parameters
  (discrete: ``-sum_a pi(a|s) Q(s, a)``; "amago" only), plus filtered behaviour cloning
  ``-1[A > 0] log pi(a|s)`` with ``A = mean_c Q(s, a) - V(s)``;
* one AdamW step (linear warm-up, grad-norm clip), then EMA of the target heads.

What differs between variants (critic head size, values, critic loss, TD target reduction,
online term, default BC weight) comes from the hooks of ``learner.variant``
(:mod:`learner.variants`); :meth:`AmagoLearner.compute_losses` is the trunk they share.

All randomness (dropout, critic subsets, Gaussian samples) comes from the learner's own torch
RNG stream (seeded by ``cfg.seed``, saved in checkpoints), not from the process-global one.

Data-parallel (``group``, a :class:`learner.distributed.ProcessGroup`): every rank starts
from rank 0's parameters and buffers (broadcast at construction and after a restore), the
gradients are averaged over the ranks after each backward, and PopArt and the observation
statistics are moved by all ranks' batches together; every rank then holds the same state
after every update. Ranks other than 0 draw from a stream of their own (seeded from
``cfg.seed``, the rank and the update count), so their dropout masks and critic subsets differ.
Without a group none of this runs (the one-learner path is unchanged).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from common.records import Batch, trim_padding
from common.spec import EnvSpec
from learner.agent import (
    AmagoAgent,
    categorical_probs,
    split_gaussian,
    tanh_gaussian_log_prob,
    tanh_gaussian_rsample,
)
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.config import LearnerConfig
from learner.distributed import ProcessGroup
from learner.losses import advantage_filter, masked_mean, sample_critic_subsets, td_target


@dataclasses.dataclass
class PendingMetrics:
    """One update's metrics not yet read from the device: ``values`` (a 1-D fp32 tensor, one
    entry per name in ``names``) and the host-side ones (``host``)."""

    names: list[str]
    values: torch.Tensor
    host: dict[str, float]


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


class AmagoLearner:
    """AMAGO actor-critic learner over a :class:`common.spec.EnvSpec`.

    ``cfg`` may be a :class:`LearnerConfig`, a dict or an OmegaConf node (see
    :meth:`LearnerConfig.coerce`); it is validated first.
    """

    def __init__(self, spec: EnvSpec, cfg: LearnerConfig, group: ProcessGroup | None = None):
        cfg = LearnerConfig.coerce(cfg)
        cfg.validate()
        self.spec, self.cfg = spec, cfg
        self.variant = cfg.variant_impl()  # the hooks compute_losses calls
        self._bc_weight = cfg.bc_weight_value
        self.device = resolve_device(cfg.device)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and self.device.type == "cuda")
        self._rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(cfg.seed)
            self.agent = AmagoAgent(spec, cfg).to(self.device)
            self._rng_cpu = torch.get_rng_state()
            self._rng_cuda = torch.cuda.get_rng_state(self.device) if self._rng_devices else None
        self.agent.train()
        self._params = self.agent.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            self._params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
        self._step = 0
        self.group = group
        self._reduce = group.sum_ if group is not None else None
        self._sync_ranks()
        self._loss_fn = torch.compile(self.compute_losses) if cfg.compile else self.compute_losses

    # ------------------------------------------------------------------ public API

    @property
    def version(self) -> int:
        """Number of updates done so far (the version of :meth:`policy_weights`)."""
        return self._step

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One update on ``batch``; returns scalar metrics (losses, Q/TD stats, PopArt
        statistics of the main discount, grad norm, lr, timesteps in the batch)."""
        return self.resolve([self.train_step_deferred(batch)])[0]

    @staticmethod
    def resolve(pending: list[PendingMetrics]) -> list[dict[str, float]]:
        """The metrics of :meth:`train_step_deferred` results, read from the device with ONE
        host sync for all of them; the very values :meth:`train_step` returns."""
        if not pending:
            return []
        if len({tuple(p.names) for p in pending}) == 1:
            rows = torch.stack([p.values for p in pending]).cpu().tolist()
        else:
            rows = [p.values.cpu().tolist() for p in pending]
        return [{**dict(zip(p.names, row)), **p.host} for p, row in zip(pending, rows)]

    def train_step_deferred(self, batch: Batch) -> PendingMetrics:
        """:meth:`train_step` without reading its metrics back: nothing in the update waits
        for the device, so a loop of updates queues kernels back to back and reads every
        metric at once with :meth:`resolve` (on CUDA: no host sync per update). Trailing
        all-padding columns are cut first (:func:`common.records.trim_padding`): they cost
        compute and change no loss."""
        batch = trim_padding(batch)
        t = self._to_tensors(batch)
        cfg = self.cfg
        with self._own_rng():
            self._update_obs_stats(t)
            lr = self.learning_rate(self._step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self._loss_fn(t)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if self.group is not None:
                self.group.mean_grads_(self._params)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, clip, foreach=True)
            self.optimizer.step()
            self.agent.update_targets(cfg.tau)
        self._step += 1
        names = list(out)
        values = torch.stack([out[k].detach().float() for k in names] + [grad_norm.float()])
        b, seq = batch.mask.shape
        host = dict(
            lr=lr,
            step=float(self._step),
            seq_timesteps=float(b * seq),
            valid_timesteps=float(batch.mask.sum()),
            # data age: updates between the policies that produced the rows and this update
            data_age=float(self._step - 1 - np.mean(batch.policy_version)),
        )
        return PendingMetrics([*names, "grad_norm"], values, host)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up from lr / warmup_steps to lr over ``warmup_steps`` updates."""
        w = self.cfg.warmup_steps
        return self.cfg.lr * (min(1.0, (step + 1) / w) if w > 0 else 1.0)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of what :class:`learner.inference.InferencePolicy` needs: timestep and
        trajectory encoders, actor, observation statistics."""
        return {
            k: v.detach().to("cpu", copy=True) for k, v in self.agent.policy.state_dict().items()
        }

    def make_policy(
        self,
        num_slots: int,
        context_len: int | None = None,
        device: str = "cpu",
        *,
        window: str = "exact",
    ):
        """An :class:`~learner.inference.InferencePolicy` with the current weights.

        ``context_len`` defaults to ``cfg.max_seq_len`` (the training window); ``window`` is
        the inference window mode ("exact" or "sliding", see :mod:`learner.inference`)."""
        from learner.inference import InferencePolicy

        policy = InferencePolicy(
            self.spec,
            self.cfg,
            num_slots,
            context_len or self.cfg.max_seq_len,
            device,
            window=window,
        )
        policy.load_weights(self.version, self.policy_weights())
        return policy

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue training identically."""
        return {
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self._step,
            "rng_cpu": self._rng_cpu.clone(),
            "rng_cuda": None if self._rng_cuda is None else self._rng_cuda.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._step = int(state["step"])
        self._rng_cpu = state["rng_cpu"].clone()
        if self._rng_devices and state.get("rng_cuda") is not None:
            self._rng_cuda = state["rng_cuda"].clone()
        self._sync_ranks()

    def save(self, path: str) -> None:
        """Write a checkpoint (see :mod:`learner.checkpoint`)."""
        save_checkpoint(path, self.cfg.to_dict(), self.spec, self.state_dict())

    def restore(self, path: str) -> None:
        """Load a checkpoint written by :meth:`save` with the same config; raises
        :class:`learner.checkpoint.CheckpointMismatchError` naming what differs otherwise."""
        self.load_state_dict(load_checkpoint(path, self.cfg.to_dict(), self.spec, self.device))

    # ------------------------------------------------------------------ the losses

    def compute_losses(self, t: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms and statistics of one batch (tensors from :meth:`_to_tensors`).

        Keys: ``loss`` (the weighted total), ``critic_loss``, ``online_loss``, ``bc_loss`` and
        scalar statistics. Updates the PopArt statistics (as part of the TD target step).
        """
        ag, cfg, variant = self.agent, self.cfg, self.variant
        discrete = self.spec.discrete
        mask = t["mask"]
        b, seq = mask.shape
        n_t, g, c = seq - 1, len(cfg.gammas), cfg.num_critics
        h = ag.policy.encode(
            t["obs"], t["prev_action"], t["prev_reward"], t["time_idx"]
        )  # (B, L, D)
        valid = mask[:, 1:]  # (B, T) the transition t -> t+1 is real
        a = t["prev_action"][:, 1:].float()  # (B, T, A) a_t
        r = t["prev_reward"][:, 1:].float()  # (B, T) r_t
        done = t["terminated"][:, 1:].float()  # (B, T)
        s, s_next = h[:, :-1], h[:, 1:].detach()  # (B, T, D)

        actor_out = ag.policy.actor(s)  # (B, T, G, A or 2A)
        hs = ag.critics.embed_state(s)  # (B, T, C*h) shared first critic layer

        # ---- TD targets (no grad): target heads on the detached next states
        with torch.no_grad():
            v_next = self._target_values(s_next)  # (C, B, T, G) raw
            subset = sample_critic_subsets(c, cfg.num_critics_td, (b, n_t, g), h.device)
            y = td_target(
                r, done, v_next, ag.gammas, cfg.reward_scale, subset, variant.td_reduce
            )  # (B, T, G)
            ag.popart.update(y, valid, self._reduce)

        # ---- Q(s, a) of the data action, V(s) under pi, log pi(a|s)
        if discrete:
            a_idx = a.argmax(-1)  # (B, T)
            probs = categorical_probs(actor_out, cfg.prob_clip)  # (B, T, G, A)
            logp = probs.log()
            logp_a = logp.gather(-1, a_idx.view(b, n_t, 1, 1).expand(b, n_t, g, 1)).squeeze(-1)
            q_all = ag.critics.head(hs)  # (C, B, T, G, A, K)
            k = q_all.shape[-1]
            sel = a_idx.view(1, b, n_t, 1, 1, 1).expand(c, b, n_t, g, 1, k)
            q_sa_out = q_all.gather(4, sel).squeeze(4)  # (C, B, T, G, K)
            entropy = -(probs * logp).sum(-1)[..., -1]  # (B, T) main discount
        else:
            mean, log_std = split_gaussian(actor_out, cfg.model.log_std_min, cfg.model.log_std_max)
            a_g = a.unsqueeze(2).expand(b, n_t, g, a.shape[-1])  # (B, T, G, A)
            logp_a = tanh_gaussian_log_prob(mean, log_std, a_g)  # (B, T, G)
            q_sa_out = ag.critics.head(hs, a_g)  # (C, B, T, G, K)
            a_pi = tanh_gaussian_rsample(mean, log_std)  # (B, T, G, A)
            with torch.set_grad_enabled(torch.is_grad_enabled() and variant.online_actor):
                # frozen critics: detached parameters and states, gradient flows into a_pi
                q_pi_out = ag.critics.head(hs.detach(), a_pi, frozen=True)  # (C, B, T, G, K)
            entropy = log_std[..., -1, :].sum(-1)  # (B, T) log-std sum: entropy up to consts

        q_sa = variant.values(ag, q_sa_out)  # (C, B, T, G)
        critic_el = variant.critic_loss(ag, cfg, q_sa_out, q_sa, y, valid)  # (C, B, T, G)
        if discrete:  # V(s) = E_pi Q(s, .) of the frozen critics
            q_frozen = variant.values(ag, q_all.detach(), trailing=1)  # (C, B, T, G, A)
            v_s = (probs.unsqueeze(0) * q_frozen).sum(-1)  # (C, B, T, G)
        else:
            v_s = variant.values(ag, q_pi_out)  # (C, B, T, G)
        online_el = -v_s.amin(0) if variant.online_actor else None  # (B, T, G)
        q_raw = variant.raw_values(ag, q_sa.detach())

        filt = advantage_filter(q_sa.detach(), v_s.detach())  # (B, T, G)
        vm = valid.unsqueeze(-1)  # (B, T, 1)
        critic_loss = masked_mean(critic_el, valid.view(1, b, n_t, 1))
        bc_loss = masked_mean(-filt * logp_a, vm)
        zero = critic_loss.new_zeros(())
        online_loss = masked_mean(online_el, vm) if online_el is not None else zero
        loss = (
            cfg.critic_loss_weight * critic_loss
            + (cfg.online_actor_weight * online_loss if online_el is not None else zero)
            + self._bc_weight * bc_loss
        )
        with torch.no_grad():
            main = (slice(None),) * (q_raw.dim() - 1) + (-1,)
            stats = {
                "q_mean": masked_mean(q_raw[main], valid.unsqueeze(0)),
                "td_target_mean": masked_mean(y[..., -1], valid),
                "filter_frac": masked_mean(filt, vm),
                "filter_frac_main": masked_mean(filt[..., -1], valid),
                ("entropy" if discrete else "log_std"): masked_mean(entropy, valid),
                "reward_mean": masked_mean(r, valid),
            }
            if ag.popart.enabled:
                stats.update(popart_mu=ag.popart.mu[-1], popart_sigma=ag.popart.sigma[-1])
        return {
            "loss": loss,
            "critic_loss": critic_loss,
            "online_loss": online_loss,
            "bc_loss": bc_loss,
            **stats,
        }

    def _target_values(self, s_next: torch.Tensor) -> torch.Tensor:
        """V_targ(s') = E_{a'~pi_targ} Q_targ(s', a') per critic, raw units: (C, B, T, G)."""
        ag, cfg = self.agent, self.cfg
        out = ag.target_actor(s_next)  # (B, T, G, P)
        if self.spec.discrete:
            p = categorical_probs(out, cfg.prob_clip)  # (B, T, G, A)
            q = ag.target_critics(s_next)  # (C, B, T, G, A, K)
            return (self.variant.target_values(ag, q, trailing=1) * p.unsqueeze(0)).sum(-1)
        mean, log_std = split_gaussian(out, cfg.model.log_std_min, cfg.model.log_std_max)
        q = ag.target_critics(s_next, tanh_gaussian_rsample(mean, log_std))  # (C, B, T, G, K)
        return self.variant.target_values(ag, q)

    # ------------------------------------------------------------------ helpers

    def _sync_ranks(self) -> None:
        """Data-parallel: rank 0's agent state on every rank, and a random stream per rank
        (ranks > 0: seeded from the seed, the rank and the update count)."""
        if self.group is None:
            return
        self.group.broadcast_(list(self.agent.state_dict().values()))
        if self.group.rank > 0:
            with torch.random.fork_rng(devices=self._rng_devices):
                torch.manual_seed(self.cfg.seed + 7919 * self.group.rank + 104729 * self._step)
                self._rng_cpu = torch.get_rng_state()
                if self._rng_devices:
                    self._rng_cuda = torch.cuda.get_rng_state(self.device)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with the learner's RNG stream, leaving the process-global one untouched."""
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.set_rng_state(self._rng_cpu)
            if self._rng_devices:
                torch.cuda.set_rng_state(self._rng_cuda, self.device)
            yield
            self._rng_cpu = torch.get_rng_state()
            if self._rng_devices:
                self._rng_cuda = torch.cuda.get_rng_state(self.device)

    def _update_obs_stats(self, t: dict[str, Any]) -> None:
        tstep = self.agent.policy.tstep
        if tstep.norm is None or not tstep.vector_keys:
            return
        flat = tstep.flat_vector_obs(t["obs"], 2)  # (B, L, F)
        tstep.norm.update(flat.reshape(-1, flat.shape[-1]), t["mask"].reshape(-1), self._reduce)

    def _to_tensors(self, batch: Batch) -> dict[str, Any]:
        """Batch arrays -> tensors on the learner's device (pinned copy on cuda if set)."""
        self._check_batch(batch)
        pin = self.cfg.pin_memory and self.device.type == "cuda"

        def move(x: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            x = np.asarray(x)
            if not (x.flags.writeable and x.flags.c_contiguous):
                x = np.array(x)  # torch.from_numpy needs writable memory
            tensor = torch.from_numpy(x)
            if dtype is not None and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            if pin:
                tensor = tensor.pin_memory()
            return tensor.to(self.device, non_blocking=pin)

        return {
            "obs": {k: move(v) for k, v in batch.obs.items() if k in self.spec.obs},
            "prev_action": move(batch.prev_action, torch.float32),
            "prev_reward": move(batch.prev_reward, torch.float32),
            "time_idx": move(batch.time_idx, torch.int64),
            "terminated": move(batch.terminated, torch.bool),
            "mask": move(batch.mask, torch.bool),
        }

    def _check_batch(self, batch: Batch) -> None:
        if batch.mask.ndim != 2 or batch.mask.shape[1] < 2:
            raise ValueError(f"batch.mask must be (B, L) with L >= 2, got {batch.mask.shape}")
        b, seq = batch.mask.shape
        if batch.prev_action.shape != (b, seq, self.spec.action_dim):
            raise ValueError(
                f"batch.prev_action shape {batch.prev_action.shape} != {(b, seq, self.spec.action_dim)}"
            )
        for name in ("prev_reward", "time_idx", "terminated"):
            if getattr(batch, name).shape != (b, seq):
                raise ValueError(f"batch.{name} shape {getattr(batch, name).shape} != {(b, seq)}")
        for k, s in self.spec.obs.items():
            if k not in batch.obs:
                raise ValueError(f"batch.obs lacks key {k!r}")
            if batch.obs[k].shape != (b, seq, *s.shape):
                raise ValueError(
                    f"batch.obs[{k!r}] shape {batch.obs[k].shape} != {(b, seq, *s.shape)}"
                )
