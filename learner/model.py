"""Networks of the AMAGO agent, nanoGPT style: building blocks with shape comments, no
training logic.

* :class:`TimestepEncoder` turns one timestep (o_t, a_{t-1}, r_{t-1}) into a vector: vector
  observations go through a running mean/std normaliser, images (uint8 H x W x C) through a
  CNN, token ids (text keys: a :class:`common.spec.TokenSpec`) through a learned embedding
  mean-pooled over the non-padding tokens (:class:`TokenEmbedding`); the previous action
  (one-hot if discrete) and symlog(previous reward) are appended; an MLP with a LayerNorm
  output follows.
* Trajectory encoders read the sequence of timestep vectors plus a time embedding of
  ``time_idx`` (added to every token; the only position information, so a KV cache may be
  a ring buffer): :class:`TransformerEncoder` (causal pre-norm, NormFormer norms,
  sigma-reparameterised linears, ``F.scaled_dot_product_attention``), :class:`GRUEncoder`
  and the memoryless :class:`MLPEncoder`.

Every trajectory encoder has the same interface: ``forward(x, time_idx, window=None)`` over
whole windows (training), and ``init_state(num_slots, context_len, device, window) /
reset_state / step`` for one-token-per-call inference with per-slot state. ``context_len``
(L) is the acting window; ``window`` picks what a slot with more than L tokens since its
reset sees:

* ``"exact"`` (the default): exactly what training shows. Training windows of L timesteps
  start fresh (no earlier context: plain causal attention, a zero GRU state at the window
  start), so the action at step t is computed from a fresh forward over the last L inputs,
  i.e. in distribution. While a slot's history fits in the window the incremental step (KV
  cache / carried GRU state) is already exact; past it, the slot's last L encoder inputs
  (``inp(x) + time(t)``, kept in a ring of L) are re-encoded, batched over slots: O(L) per
  step for the GRU, O(L^2) attention for the Transformer (what acting without a cache costs).
* ``"sliding"``: AMAGO's O(1)-per-step state. The Transformer's ring KV cache of L entries
  overwrites the oldest entry, which equals a full forward with a banded causal mask of width
  L (``forward(..., window=L)``); with more than one layer that is *not* a fresh window (deeper
  layers' cached keys came from tokens that saw older context: the receptive field grows to
  ``n_layers * (L - 1) + 1``). The GRU carries its hidden state over the whole rollout.

Either way a slot's state holds at most L timesteps (a KV ring and/or an input ring of L).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.spec import EnvSpec, TokenSpec
from learner.config import ModelConfig
from learner.losses import symlog

#: Width of a text key's token embedding (:class:`TokenEmbedding`), before the timestep MLP.
TOKEN_EMBED_DIM = 64
#: The padding token id (``common.envs.text.PAD_ID``): excluded from the pooled embedding.
PAD_TOKEN = 0

#: Element-wise sums over data-parallel ranks (:meth:`learner.distributed.ProcessGroup.sum_`).
Reduce = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def mlp(d_in: int, d_hidden: int, n_hidden: int, d_out: int) -> nn.Sequential:
    """``n_hidden`` Linear+LeakyReLU layers of width ``d_hidden``, then a Linear to ``d_out``."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(n_hidden):
        layers += [nn.Linear(d, d_hidden), nn.LeakyReLU()]
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class _SigmaScale(torch.autograd.Function):
    """``W_hat = gain * W / sigma`` with ``sigma = u^T W v`` (u, v constants), with a fused
    backward: ``dW = (gain / sigma) G - (gain <G, W> / sigma^2) u v^T``,
    ``dgain = <G, W> / sigma``. Three passes over the weight instead of autograd's ~six
    (the weight-sized elementwise work dominates small batches)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, gain: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        sigma = torch.dot(u, w @ v)
        ctx.save_for_backward(w, gain, u, v, sigma)
        return w * (gain / sigma)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        w, gain, u, v, sigma = ctx.saved_tensors
        g = g.contiguous()
        gw = torch.dot(g.reshape(-1), w.reshape(-1))  # <G, W>
        grad_w = g * (gain / sigma)
        grad_w.addr_(u * (-gain * gw / sigma**2), v)
        return grad_w, (gw / sigma).reshape(gain.shape), None, None


class SigmaLinear(nn.Module):
    """Linear layer with sigma reparameterisation: ``W_hat = gain / sigma(W) * W``.

    sigma(W) is the spectral norm, tracked by one power-iteration step per training forward
    (the singular-vector estimates u, v are buffers, frozen in eval mode). In eval mode
    without autograd (acting) W_hat is computed once and reused until a parameter or buffer
    changes (tracked by the tensors' version counters, so ``load_state_dict`` invalidates it).
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.gain = nn.Parameter(torch.ones(()))
        with torch.no_grad():
            u, _, vh = torch.linalg.svd(self.weight, full_matrices=False)
        self.register_buffer("u", u[:, 0].contiguous())  # (d_out,)
        self.register_buffer("v", vh[0].contiguous())  # (d_in,)
        self._frozen: tuple[tuple, torch.Tensor] | None = None  # (key, W_hat) for acting

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        frozen = not self.training and not torch.is_grad_enabled()
        if frozen:
            key = tuple((t.data_ptr(), t._version) for t in (w, self.gain, self.u, self.v))
            if self._frozen is not None and self._frozen[0] == key:
                return self._frozen[1]
        with torch.autocast(device_type=w.device.type, enabled=False):
            if self.training:
                with torch.no_grad():
                    self.u.copy_(F.normalize(w @ self.v, dim=0))
                    self.v.copy_(F.normalize(w.t() @ self.u, dim=0))
            w_hat = _SigmaScale.apply(w, self.gain, self.u, self.v)
        if frozen:
            self._frozen = (key, w_hat)
        return w_hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class RunningNorm(nn.Module):
    """Per-feature running mean/variance (float64 buffers), merged from masked batches."""

    def __init__(self, dim: int, clip: float):
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor, valid: torch.Tensor, reduce: Reduce | None = None) -> None:
        """Merge the rows of ``x`` (N, F) where ``valid`` (N,) into the statistics (Chan et al.).
        ``reduce`` (data-parallel learners: sums over the ranks) merges every rank's rows
        (two reductions: count and sum, then the squared deviations from their mean)."""
        # no host sync: an all-padding batch leaves the statistics unchanged (n = 0)
        w = valid.to(torch.float64).unsqueeze(-1)  # (N, 1)
        x = x.to(torch.float64)
        if reduce is None:
            n = w.sum()
            mean_b = (w * x).sum(0) / n.clamp_min(1.0)
            var_b = (w * (x - mean_b) ** 2).sum(0) / n.clamp_min(1.0)
        else:
            n, x_sum = reduce([w.sum(), (w * x).sum(0)])
            mean_b = x_sum / n.clamp_min(1.0)
            (dev,) = reduce([(w * (x - mean_b) ** 2).sum(0)])
            var_b = dev / n.clamp_min(1.0)
        tot = self.count + n
        safe_tot = tot.clamp_min(1.0)
        delta = mean_b - self.mean
        new_var = (
            self.var * self.count + var_b * n + delta**2 * self.count * n / safe_tot
        ) / safe_tot
        self.mean.add_(delta * (n / safe_tot))
        self.var.copy_(torch.where(n > 0, new_var, self.var))
        self.count.copy_(tot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = (self.var + 1e-8).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


class CNN(nn.Module):
    """Conv trunk for uint8 (..., H, W, C) images -> (..., d_out)."""

    def __init__(self, shape: tuple[int, ...], cfg: ModelConfig):
        super().__init__()
        problem = cfg.cnn_problem(shape)
        if problem:
            raise ValueError(problem)
        h, w, c = shape
        layers: list[nn.Module] = []
        for ch, k, s in zip(cfg.cnn_channels, cfg.cnn_kernels, cfg.cnn_strides):
            layers += [nn.Conv2d(c, ch, k, s), nn.ReLU()]
            h, w, c = (h - k) // s + 1, (w - k) // s + 1, ch
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.out = nn.Linear(h * w * c, cfg.cnn_out)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        lead = img.shape[:-3]
        x = img.reshape(-1, *img.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0  # (N, C, H, W)
        return F.leaky_relu(self.out(self.convs(x))).view(*lead, -1)


class TokenEmbedding(nn.Module):
    """Token ids (..., T) -> (..., d): a learned table (``nn.Embedding(vocab, d)``), then the
    mean over the non-padding tokens (id 0; an all-padding text gives zeros), so padding never
    changes the result. Text constant over an episode costs one lookup and a mean per step."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.vocab = int(vocab)
        self.table = nn.Embedding(self.vocab, d, padding_idx=PAD_TOKEN)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.long().clamp(0, self.vocab - 1)  # (..., T); an out-of-range id is clamped
        keep = (ids != PAD_TOKEN).unsqueeze(-1)  # (..., T, 1)
        emb = self.table(ids) * keep  # (..., T, d)
        count = keep.sum(-2).clamp_min(1)  # (..., 1)
        return emb.sum(-2) / count  # (..., d)


class TimestepEncoder(nn.Module):
    """(obs_t, a_{t-1}, r_{t-1}) -> (..., tstep_out). Leading dims are free ((B, L) or (n,)).

    Observation keys by kind, each in sorted order: vector keys (flattened, concatenated,
    normalised), images (a CNN each), token ids (a :class:`TokenEmbedding` each)."""

    def __init__(self, spec: EnvSpec, cfg: ModelConfig):
        super().__init__()
        keys = sorted(spec.obs)
        self.token_keys = [k for k in keys if isinstance(spec.obs[k], TokenSpec)]
        self.image_keys = spec.image_keys()
        self.vector_keys = [k for k in keys if k not in self.image_keys + self.token_keys]
        self.vector_dim = sum(math.prod(spec.obs[k].shape) for k in self.vector_keys)
        self.norm = RunningNorm(self.vector_dim, cfg.obs_clip) if cfg.normalize_obs else None
        self.cnns = nn.ModuleDict({k: CNN(spec.obs[k].shape, cfg) for k in self.image_keys})
        self.texts = nn.ModuleDict(
            {k: TokenEmbedding(spec.obs[k].vocab, TOKEN_EMBED_DIM) for k in self.token_keys}
        )
        d_in = (
            self.vector_dim
            + cfg.cnn_out * len(self.image_keys)
            + TOKEN_EMBED_DIM * len(self.token_keys)
            + spec.action_dim
            + 1
        )
        self.net = mlp(d_in, cfg.tstep_hidden, cfg.tstep_layers, cfg.tstep_out)
        self.out_norm = nn.LayerNorm(cfg.tstep_out)

    def flat_vector_obs(self, obs: dict[str, torch.Tensor], lead: int) -> torch.Tensor:
        """Vector observation keys flattened and concatenated in sorted-key order: (..., F)."""
        parts = [obs[k].reshape(*obs[k].shape[:lead], -1).float() for k in self.vector_keys]
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        obs: dict[str, torch.Tensor],  # each (*lead, *shape)
        prev_action: torch.Tensor,  # (*lead, A)
        prev_reward: torch.Tensor,  # (*lead,)
    ) -> torch.Tensor:
        lead = prev_reward.dim()
        feats = []
        if self.vector_keys:
            x = self.flat_vector_obs(obs, lead)  # (*lead, F)
            feats.append(self.norm(x) if self.norm is not None else x)
        feats += [self.cnns[k](obs[k]) for k in self.image_keys]  # each (*lead, cnn_out)
        feats += [self.texts[k](obs[k]) for k in self.token_keys]  # each (*lead, TOKEN_EMBED_DIM)
        feats += [prev_action.float(), symlog(prev_reward.float()).unsqueeze(-1)]
        return self.out_norm(self.net(torch.cat(feats, dim=-1)))  # (*lead, tstep_out)


class TimeEmbedding(nn.Module):
    """time_idx (...) int -> (..., d): fixed sinusoids or a learned table (clamped index)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.time_embedding
        if self.kind == "learned":
            self.max_time = cfg.max_time
            self.table = nn.Embedding(cfg.max_time + 1, cfg.d_model)
            nn.init.normal_(self.table.weight, std=0.02)
        else:
            half = cfg.d_model // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            self.register_buffer("freqs", freqs, persistent=False)  # (d/2,)

    def forward(self, time_idx: torch.Tensor) -> torch.Tensor:
        if self.kind == "learned":
            return self.table(time_idx.long().clamp(0, self.max_time))
        ang = time_idx.float().unsqueeze(-1) * self.freqs  # (..., d/2)
        return torch.cat((ang.sin(), ang.cos()), dim=-1)  # (..., d)


class Block(nn.Module):
    """Pre-norm Transformer block with optional NormFormer norms and head scales."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads = cfg.d_model, cfg.n_heads
        self.head_dim = d // cfg.n_heads
        lin = SigmaLinear if cfg.sigma_reparam else nn.Linear
        self.norm1 = nn.LayerNorm(d)
        self.qkv = lin(d, 3 * d, bias=False)  # fused q, k, v projection
        self.proj = lin(d, d)
        self.norm2 = nn.LayerNorm(d) if cfg.normformer else nn.Identity()
        self.head_scale = (
            nn.Parameter(torch.ones(cfg.n_heads, 1, 1)) if cfg.normformer else None
        )  # (H, 1, 1)
        self.norm3 = nn.LayerNorm(d)
        self.ff1 = lin(d, cfg.d_ff)
        self.norm4 = nn.LayerNorm(cfg.d_ff) if cfg.normformer else nn.Identity()
        self.ff2 = lin(cfg.d_ff, d)
        self.drop = nn.Dropout(cfg.dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, seq, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, seq, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        return q, k, v

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x: (B, L, D) residual stream; y: (B, H, L, hd) attention output
        if self.head_scale is not None:
            y = y * self.head_scale.to(y.dtype)
        y = y.transpose(1, 2).reshape(x.shape)  # (B, L, D)
        x = x + self.norm2(self.proj(y))
        h = self.norm4(F.leaky_relu(self.ff1(self.norm3(x))))  # (B, L, d_ff)
        return x + self.drop(self.ff2(h))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        causal = attn_mask is None
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # the CPU flash kernel's bf16 backward is ~3x slower than its fp32 one
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=causal
                )
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return self._finish(x, y)

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """The causal forward's output at the last position only: (B, L, D) -> (B, 1, D) (the
        last query attends to every key, so no mask; projections and MLP on one token)."""
        q, k, v = self._qkv(x)  # (B, H, L, hd)
        y = F.scaled_dot_product_attention(q[:, :, -1:], k, v)  # (B, H, 1, hd)
        return self._finish(x[:, -1:], y)

    def step(
        self,
        x: torch.Tensor,  # (n, 1, D) the new token of each slot
        k_cache: torch.Tensor,  # (S, H, C, hd) this layer's keys, all slots
        v_cache: torch.Tensor,  # (S, H, C, hd)
        slots: torch.Tensor | None,  # (n,) int64, or None for all S slots in order
        write: torch.Tensor,  # (n,) ring index the new token goes to
        valid: torch.Tensor,  # (n, span) bool: live entries of the ring prefix [0, span)
    ) -> torch.Tensor:
        q, k, v = self._qkv(x)  # (n, H, 1, hd)
        span = valid.shape[1]
        rows = torch.arange(x.shape[0], device=x.device) if slots is None else slots
        k_cache[rows, :, write] = k[:, :, 0]
        v_cache[rows, :, write] = v[:, :, 0]
        if slots is None:
            keys, vals = k_cache[:, :, :span], v_cache[:, :, :span]  # views (n, H, span, hd)
        else:
            keys, vals = k_cache[slots, :, :span], v_cache[slots, :, :span]  # gathered copies
        mask = valid[:, None, None, :]  # (n, 1, 1, span)
        y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)  # (n, H, 1, hd)
        return self._finish(x, y)


WINDOW_MODES = ("exact", "sliding")


def check_window(window: str) -> str:
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    return window


@dataclass
class KVCache:
    """Per-slot ring-buffer KV cache. ``length[s]``: tokens seen by slot s since its reset.

    ``inputs`` (exact mode only): ring of each slot's last C encoder inputs
    ``inp(x) + time(t)``, token j since reset at index ``j % C``; re-encoded once a slot's
    history exceeds the window (the KV entries of such a slot are then unused until reset)."""

    k: torch.Tensor  # (n_layers, S, H, C, hd)
    v: torch.Tensor  # (n_layers, S, H, C, hd)
    length: torch.Tensor  # (S,) int64
    inputs: torch.Tensor | None = None  # (S, C, D) exact mode; None = sliding

    @property
    def capacity(self) -> int:
        """Timesteps of context held per slot."""
        return self.k.shape[3]


@dataclass
class RecurrentState:
    """Per-slot GRU hidden state; ``length`` and ``inputs`` as in :class:`KVCache` (exact
    mode keeps a ring of the last C encoder inputs, re-run from a zero state past C)."""

    h: torch.Tensor  # (n_layers, S, D)
    length: torch.Tensor  # (S,) int64
    inputs: torch.Tensor | None = None  # (S, C, D) exact mode; None = sliding

    @property
    def capacity(self) -> int:
        """Timesteps of context held per slot (0: a hidden state only, sliding mode)."""
        return 0 if self.inputs is None else self.inputs.shape[1]


def window_inputs(inputs: torch.Tensor, rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The last C tokens of ``rows`` in time order from the input ring (S, C, D), given each
    row's token count ``count`` (m,) >= C: (m, C, D)."""
    ctx = inputs.shape[1]
    order = (count[:, None] + torch.arange(ctx, device=inputs.device)[None, :]) % ctx  # (m, C)
    return inputs[rows[:, None], order]


def split_rows(over: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (within the call) of the slots past the window and of those within it."""
    return over.nonzero()[:, 0], (~over).nonzero()[:, 0]


def band_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool: query i attends to keys j with i - window < j <= i."""
    i = torch.arange(length, device=device)
    diff = i[:, None] - i[None, :]
    return (diff >= 0) & (diff < window)


class TransformerEncoder(nn.Module):
    """Causal pre-norm Transformer over timestep vectors: (B, L, d_in) -> (B, L, d_model)."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(d_in, cfg.d_model)
        self.time = TimeEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self, x: torch.Tensor, time_idx: torch.Tensor, window: int | None = None
    ) -> torch.Tensor:
        """``window``: attend to at most that many most recent tokens (what a capped KV cache
        sees); None = full causal attention."""
        h = self.drop(self.inp(x) + self.time(time_idx))  # (B, L, D)
        length = x.shape[1]
        mask = band_mask(length, window, x.device) if window and window < length else None
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)

    def init_state(
        self, num_slots: int, context_len: int, device: torch.device, window: str = "exact"
    ) -> KVCache:
        c = self.cfg
        shape = (c.n_layers, num_slots, c.n_heads, context_len, c.d_model // c.n_heads)
        exact = check_window(window) == "exact"
        return KVCache(
            k=torch.zeros(shape, device=device),
            v=torch.zeros(shape, device=device),
            length=torch.zeros(num_slots, dtype=torch.long, device=device),
            inputs=torch.zeros(num_slots, context_len, c.d_model, device=device) if exact else None,
        )

    def reset_state(self, state: KVCache, slots: torch.Tensor) -> None:
        state.length[slots] = 0

    def step(
        self,
        x: torch.Tensor,  # (n, d_in)
        time_idx: torch.Tensor,  # (n,)
        state: KVCache,
        slots: torch.Tensor | None,  # (n,) or None = all slots in order
    ) -> torch.Tensor:
        h = self.inp(x) + self.time(time_idx)  # (n, D)
        length = state.length if slots is None else state.length[slots]  # (n,)
        out = None
        if state.inputs is not None:  # exact: slots past the window re-encode it
            ctx = state.capacity
            rows = torch.arange(h.shape[0], device=h.device) if slots is None else slots
            state.inputs[rows, length % ctx] = h
            over = length >= ctx  # this token makes the history longer than the window
            n_over = int(over.sum())
            if n_over == h.shape[0]:
                out = self._window_forward(state.inputs, rows, length + 1)
            elif n_over:
                io, ifit = split_rows(over)
                out = h.new_empty(h.shape)
                out[io] = self._window_forward(state.inputs, rows[io], length[io] + 1)
                out[ifit] = self._cached_step(h[ifit], length[ifit], state, rows[ifit])
        if out is None:
            out = self._cached_step(h, length, state, slots)
        if slots is None:
            state.length.add_(1)
        else:
            state.length[slots] = length + 1
        return out  # (n, D)

    def _cached_step(
        self,
        h: torch.Tensor,  # (n, D) new tokens
        length: torch.Tensor,  # (n,) tokens seen before them
        state: KVCache,
        slots: torch.Tensor | None,
    ) -> torch.Tensor:
        """One token per slot through the ring KV cache (exact while the history fits in it;
        the banded-mask forward beyond)."""
        ctx = state.capacity
        write = length % ctx
        n_valid = (length + 1).clamp(max=ctx)  # (n,) entries 0 .. n_valid - 1 are live
        span = int(n_valid.max())  # attend over the filled prefix of the ring only
        valid = torch.arange(span, device=h.device)[None, :] < n_valid[:, None]  # (n, span)
        h = h.unsqueeze(1)  # (n, 1, D)
        for i, block in enumerate(self.blocks):
            h = block.step(h, state.k[i], state.v[i], slots, write, valid)
        return self.norm(h[:, 0])

    def _window_forward(
        self, inputs: torch.Tensor, rows: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        """Fresh causal forward over the last C inputs of ``rows``; last position: (m, D)."""
        h = window_inputs(inputs, rows, count)  # (m, C, D)
        for block in self.blocks[:-1]:
            h = block(h)
        return self.norm(self.blocks[-1].last(h)[:, 0])


class GRUEncoder(nn.Module):
    """GRU over timestep vectors: (B, L, d_in) -> (B, L, d_model)."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(d_in, cfg.d_model)
        self.time = TimeEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(
            cfg.d_model,
            cfg.d_model,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self, x: torch.Tensor, time_idx: torch.Tensor, window: int | None = None
    ) -> torch.Tensor:
        """``window`` is ignored: a recurrent state has no context cap. The recurrence runs
        in fp32 under autocast too: CUDA autocast would run cuDNN's GRU in reduced
        precision (``_cudnn_rnn`` is on its cast list), and a hidden state carried through
        L steps in 8-16 mantissa bits drifts; the GRU is the cheap ablation, so fp32 costs
        little."""
        h = self.drop(self.inp(x) + self.time(time_idx))  # (B, L, D)
        with torch.autocast(h.device.type, enabled=False):
            out, _ = self.gru(h.float())
        return self.norm(out)

    def init_state(
        self, num_slots: int, context_len: int, device: torch.device, window: str = "exact"
    ) -> RecurrentState:
        d, exact = self.cfg.d_model, check_window(window) == "exact"
        return RecurrentState(
            h=torch.zeros(self.cfg.n_layers, num_slots, d, device=device),
            length=torch.zeros(num_slots, dtype=torch.long, device=device),
            inputs=torch.zeros(num_slots, context_len, d, device=device) if exact else None,
        )

    def reset_state(self, state: RecurrentState, slots: torch.Tensor) -> None:
        state.h[:, slots] = 0.0
        state.length[slots] = 0

    def step(
        self,
        x: torch.Tensor,
        time_idx: torch.Tensor,
        state: RecurrentState,
        slots: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.inp(x) + self.time(time_idx)  # (n, D)
        n = h.shape[0]
        length = state.length if slots is None else state.length[slots]  # (n,)
        rows = torch.arange(n, device=h.device) if slots is None else slots
        n_over = 0
        if state.inputs is not None:  # exact: slots past the window re-run it from zero
            ctx = state.capacity
            state.inputs[rows, length % ctx] = h
            over = length >= ctx
            n_over = int(over.sum())
        if n_over == 0:
            h0 = state.h if slots is None else state.h[:, slots]  # (n_layers, n, D)
            out, hn = self.gru(h.unsqueeze(1), h0.contiguous())
            if slots is None:
                state.h.copy_(hn)
            else:
                state.h[:, slots] = hn
            out = out[:, 0]
        else:
            io, ifit = split_rows(over)
            seq, hn = self.gru(window_inputs(state.inputs, rows[io], length[io] + 1))
            state.h[:, rows[io]] = hn  # the fresh window's final state (unused until reset)
            if n_over == n:
                out = seq[:, -1]
            else:
                out = h.new_empty(h.shape)
                out[io] = seq[:, -1]
                fit_rows = rows[ifit]
                o, hn = self.gru(h[ifit].unsqueeze(1), state.h[:, fit_rows].contiguous())
                state.h[:, fit_rows] = hn
                out[ifit] = o[:, 0]
        if slots is None:
            state.length.add_(1)
        else:
            state.length[slots] = length + 1
        return self.norm(out)


class MLPEncoder(nn.Module):
    """Memoryless: residual MLP blocks on each timestep alone: (B, L, d_in) -> (B, L, d_model)."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.inp = nn.Linear(d_in, cfg.d_model)
        self.time = TimeEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.LayerNorm(cfg.d_model),
                    nn.Linear(cfg.d_model, cfg.d_ff),
                    nn.LeakyReLU(),
                    nn.Linear(cfg.d_ff, cfg.d_model),
                    nn.Dropout(cfg.dropout),
                )
                for _ in range(cfg.n_layers)
            ]
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self, x: torch.Tensor, time_idx: torch.Tensor, window: int | None = None
    ) -> torch.Tensor:
        h = self.drop(self.inp(x) + self.time(time_idx))  # (..., D)
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h)

    def init_state(
        self, num_slots: int, context_len: int, device: torch.device, window: str = "exact"
    ) -> None:
        check_window(window)
        return None  # memoryless: both window modes are the same

    def reset_state(self, state: None, slots: torch.Tensor) -> None:
        return None

    def step(
        self, x: torch.Tensor, time_idx: torch.Tensor, state: None, slots: torch.Tensor | None
    ) -> torch.Tensor:
        return self.forward(x, time_idx)  # (n, D)


TrajEncoder = TransformerEncoder | GRUEncoder | MLPEncoder


def make_traj_encoder(d_in: int, cfg: ModelConfig) -> TrajEncoder:
    """The trajectory encoder named by ``cfg.encoder``."""
    cls = {"transformer": TransformerEncoder, "gru": GRUEncoder, "mlp": MLPEncoder}[cfg.encoder]
    return cls(d_in, cfg)
