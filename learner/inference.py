"""Batched, stateful acting for rollout actors: one token per env slot per call.

The policy keeps per-slot context: a ring-buffer KV cache (Transformer) or a hidden state
(GRU); the memoryless MLP keeps none. Each slot has its own write position and validity
mask, so slots may be at different timesteps (the original AMAGO code without flash-attn
shared one cache position across slots). Position information enters through the time
embedding of each token, so once a slot has seen more than ``context_len`` tokens the oldest
entry is overwritten in place: that is exactly a full forward pass with a banded causal mask
of width ``context_len`` (``TransformerEncoder.forward(..., window=context_len)``).

Per call the cost is one token through every layer plus attention over at most
``context_len`` cached entries: no history is re-encoded.
"""

from __future__ import annotations

import numpy as np
import torch

from common.records import StepInput
from common.spec import EnvSpec
from learner.agent import PolicyNet, categorical_probs, split_gaussian
from learner.config import LearnerConfig


class InferencePolicy:
    """Implements :class:`common.core.Policy` for ``num_slots`` env slots.

    Args:
        spec: the environment's spaces.
        cfg: the learner config the weights come from (architecture, gammas, prob_clip); a
            ``LearnerConfig``, dict or OmegaConf node.
        num_slots: number of env slots (rows of the per-slot context).
        context_len: most recent timesteps a Transformer slot attends to (ignored by the
            GRU, whose state has no cap, and the memoryless MLP).
        device: where inference runs.
        seed: seed of the policy's own sampling stream.
    """

    def __init__(
        self,
        spec: EnvSpec,
        cfg: LearnerConfig,
        num_slots: int,
        context_len: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        cfg = LearnerConfig.coerce(cfg)
        cfg.validate()
        self.spec, self.cfg = spec, cfg
        self.num_slots, self.context_len = num_slots, context_len
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = PolicyNet(spec, cfg).to(self.device).eval().requires_grad_(False)
        self.state = self.net.traj.init_state(num_slots, context_len, self.device)
        self._gen = torch.Generator(self.device).manual_seed(seed)
        self._version = -1  # no weights loaded yet

    @property
    def version(self) -> int:
        """Version of the loaded weights (-1 before the first :meth:`load_weights`)."""
        return self._version

    def load_weights(self, version: int, weights: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Replace the network weights (``AmagoLearner.policy_weights()``, as tensors or numpy
        arrays); cached context is kept (it was computed by older weights, as in any
        asynchronous actor)."""
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
