"""Batched, stateful acting for rollout actors: one token per env slot per call.

The policy keeps per-slot context: a ring-buffer KV cache (Transformer) or a hidden state
(GRU); the memoryless MLP keeps none. Each slot has its own write position and validity
mask, so slots may be at different timesteps (the original AMAGO code without flash-attn
shared one cache position across slots). Position information enters through the time
embedding of each token only.

``context_len`` (L) is the acting window, normally the training window
``learner.max_seq_len``. The window mode, fixed when the policy is built, decides what a
slot with more than L timesteps since its reset sees:

* ``window="exact"`` (default): the action at every step equals a fresh forward pass over
  the slot's last L timesteps, which is exactly what the learner trains on (a training
  window may start anywhere in a rollout and its first token has no earlier context:
  plain causal attention over the window, a zero GRU state at its start), so acting stays
  in distribution. While a slot's history fits in L the incremental KV-cache / GRU step is
  already exact and costs one token per layer; past L the slot's last L encoder inputs are
  re-encoded (batched over the slots of the call), which costs what acting without a cache
  costs.
* ``window="sliding"``: AMAGO's O(1)-per-step cache. The Transformer's ring overwrites its
  oldest entry, which equals a full forward with a banded causal mask of width L
  (``TransformerEncoder.forward(..., window=L)``); with several layers that is not a fresh
  window (deeper layers' cached keys were computed from tokens that saw older context, so
  the receptive field grows to ``n_layers * (L - 1) + 1``). The GRU carries its hidden state
  across the whole rollout.

Both modes are identical while histories fit in L. Per-slot memory never exceeds L
timesteps (:meth:`InferencePolicy.capacity_timesteps`).
"""

from __future__ import annotations

import numpy as np
import torch

from common.records import StepInput
from common.spec import EnvSpec
from learner.agent import PolicyNet, categorical_probs, split_gaussian
from learner.config import LearnerConfig
from learner.model import check_window


class InferencePolicy:
    """Implements :class:`common.core.Policy` for ``num_slots`` env slots.

    Args:
        spec: the environment's spaces.
        cfg: the learner config the weights come from (architecture, gammas, prob_clip); a
            ``LearnerConfig``, dict or OmegaConf node.
        num_slots: number of env slots (rows of the per-slot context).
        context_len: the acting window L in timesteps (normally ``cfg.max_seq_len``, the
            training window); the memoryless MLP ignores it.
        device: where inference runs.
        seed: seed of the policy's own sampling stream.
        window: ``"exact"`` (default): every action is a fresh forward over the slot's last
            ``context_len`` timesteps, as in training; ``"sliding"``: AMAGO's O(1) ring KV
            cache (banded-mask attention) and a GRU state carried over the whole rollout.
            See the module docstring.
    """

    def __init__(
        self,
        spec: EnvSpec,
        cfg: LearnerConfig,
        num_slots: int,
        context_len: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        *,
        window: str = "exact",
    ):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        self.window = check_window(window)
        cfg = LearnerConfig.coerce(cfg)
        cfg.validate()
        self.spec, self.cfg = spec, cfg
        self.num_slots, self.context_len = num_slots, context_len
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = PolicyNet(spec, cfg).to(self.device).eval().requires_grad_(False)
        self.state = self.net.traj.init_state(num_slots, context_len, self.device, window)
        self._gen = torch.Generator(self.device).manual_seed(seed)
        self._version = -1  # no weights loaded yet

    @property
    def version(self) -> int:
        """Version of the loaded weights (-1 before the first :meth:`load_weights`)."""
        return self._version

    def capacity_timesteps(self) -> int:
        """Timesteps of context the state holds per slot (KV ring and/or input ring): L for
        the Transformer in either mode and the GRU in exact mode, 0 for a sliding GRU (hidden
        state only) and the MLP. Never more than ``context_len``."""
        return 0 if self.state is None else int(self.state.capacity)

    def load_weights(self, version: int, weights: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Replace the network weights (``AmagoLearner.policy_weights()``, as tensors or numpy
        arrays); cached context (KV entries, hidden states, the exact mode's ring of encoder
        inputs) is kept (it was computed by older weights, as in any asynchronous actor)."""
        state = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in weights.items()}
        self.net.load_state_dict(state)
        self._version = int(version)

    def reset(self, slots: np.ndarray) -> None:
        """Forget the context of ``slots`` (episode or meta-trial boundary)."""
        idx = self._slots(slots)
        if idx is None:
            idx = torch.arange(self.num_slots, device=self.device)
        self.net.traj.reset_state(self.state, idx)

    @torch.inference_mode()
    def dist_params(self, step: StepInput, slots: np.ndarray) -> torch.Tensor:
        """Advance ``slots`` by one timestep and return the main-discount actor output:
        logits (n, A) for discrete actions, Gaussian [mean, raw log-std] (n, 2A) otherwise."""
        idx = self._slots(slots)
        if idx is not None and idx.numel() == 0:
            return torch.empty((0, self.net.actor.per_gamma), device=self.device)
        dev = self.device
        obs = {k: torch.as_tensor(np.asarray(step.obs[k]), device=dev) for k in self.spec.obs}
        s = self.net.step(
            obs,
            torch.as_tensor(np.asarray(step.prev_action), dtype=torch.float32, device=dev),
            torch.as_tensor(np.asarray(step.prev_reward), dtype=torch.float32, device=dev),
            torch.as_tensor(np.asarray(step.time_idx), dtype=torch.int64, device=dev),
            self.state,
            idx,
        )  # (n, D)
        return self.net.actor(s)[:, -1]  # (n, P)

    def act(self, step: StepInput, slots: np.ndarray, greedy: bool = False) -> np.ndarray:
        """Actions for ``slots``: int64 (n,) if discrete, float32 (n, A) in [-1, 1] if not."""
        params = self.dist_params(step, slots)
        with torch.inference_mode():
            if self.spec.discrete:
                if greedy:
                    act = params.argmax(-1)
                else:
                    probs = categorical_probs(params, self.cfg.prob_clip)
                    act = torch.multinomial(probs, 1, generator=self._gen)[:, 0]
                return act.cpu().numpy().astype(np.int64)
            m = self.cfg.model
            mean, log_std = split_gaussian(params, m.log_std_min, m.log_std_max)
            if not greedy:
                noise = torch.randn(mean.shape, generator=self._gen, device=mean.device)
                mean = mean + log_std.exp() * noise
            return torch.tanh(mean).cpu().numpy().astype(np.float32)

    def _slots(self, slots: np.ndarray) -> torch.Tensor | None:
        """Slot indices as a tensor, or None for "all slots in order" (no gather needed)."""
        s = np.asarray(slots, dtype=np.int64).reshape(-1)
        if s.size and (s.min() < 0 or s.max() >= self.num_slots):
            raise IndexError(f"slots must lie in [0, {self.num_slots}), got {s.tolist()}")
        if np.unique(s).size != s.size:
            raise ValueError(f"slots must be distinct, got {s.tolist()}")
        if s.size == self.num_slots and np.array_equal(s, np.arange(self.num_slots)):
            return None
        return torch.from_numpy(s).to(self.device)
