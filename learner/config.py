"""Config dataclasses of the learner: the networks (:class:`ModelConfig`) and the update
(:class:`LearnerConfig`).

Plain dataclasses whose fields use only OmegaConf-friendly types (they double as Hydra
structured-config schemas). Defaults follow the SPEC (section 5) and the original AMAGO code.
``validate()`` raises :class:`common.config_utils.ConfigError` naming the offending field
(relative names: the caller prefixes ``learner.``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.config_utils import prefixed, require
from learner.variants import LearnerVariant, get_variant, variant_names
from learner.worker_config import LearnerWorkerConfig

ENCODERS = ("transformer", "gru", "mlp")
TIME_EMBEDDINGS = ("sinusoidal", "learned")
CRITIC_LABELS = ("hlgauss", "twohot")
CRITIC_WEIGHTINGS = ("error", "none")
DEVICES = ("cpu", "cuda", "auto")
#: The conv trunk derived for images too small for the default (Nature-DQN) one, such as
#: MiniGrid's 7x7 views: 2x2 kernels, stride 1 (channels, kernels, strides).
SMALL_IMAGE_CNN = ([16, 32, 64], [2, 2, 2], [1, 1, 1])
BF16_MODES = ("auto", "on", "off")


@dataclass
class ModelConfig:
    """Architecture of the timestep encoder, trajectory encoder and actor/critic heads."""

    # Trajectory (sequence) encoder: "transformer" (causal, KV-cached at inference), "gru",
    # or "mlp" (memoryless: each timestep on its own; for ablations and tests).
    encoder: str = "transformer"
    # Width of the trajectory encoder (its output is the RL "state" every head reads).
    d_model: int = 256
    # Number of Transformer blocks / GRU layers / residual MLP blocks.
    n_layers: int = 3
    # Attention heads (Transformer only); d_model must be divisible by it.
    n_heads: int = 8
    # Hidden width of the Transformer feed-forward block (and of the MLP encoder's blocks).
    d_ff: int = 1024
    # Dropout on the input embedding and the feed-forward outputs (training only).
    dropout: float = 0.05
    # How time_idx enters every token: fixed "sinusoidal" or a "learned" table.
    time_embedding: str = "sinusoidal"
    # Largest time index the learned table holds (larger indices are clamped to it).
    max_time: int = 4096
    # NormFormer extra norms (after attention and after the feed-forward activation) and
    # per-head output scales.
    normformer: bool = True
    # Sigma-reparameterised linear layers (W / spectral_norm(W) * learned gain) in the
    # Transformer blocks, for stability.
    sigma_reparam: bool = True
    # Timestep encoder MLP: hidden width, number of hidden layers, output width (then a
    # LayerNorm).
    tstep_hidden: int = 512
    tstep_layers: int = 2
    tstep_out: int = 256
    # Running mean/std normalisation of vector observations (stats updated by the learner).
    normalize_obs: bool = True
    # Normalised observations are clipped to [-obs_clip, obs_clip].
    obs_clip: float = 10.0
    # CNN for image observations (uint8 H x W x C): channels, kernel sizes and strides per
    # conv layer (the default is the Nature-DQN trunk), then a linear map to cnn_out features.
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    cnn_kernels: list[int] = field(default_factory=lambda: [8, 4, 3])
    cnn_strides: list[int] = field(default_factory=lambda: [4, 2, 1])
    cnn_out: int = 256
    # Actor head MLP: hidden width and number of hidden layers.
    actor_hidden: int = 256
    actor_layers: int = 2
    # Critic head MLP (each ensemble member): hidden width and number of hidden layers.
    critic_hidden: int = 256
    critic_layers: int = 2
    # Tanh-Gaussian actor (continuous actions): bounds of the log standard deviation.
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def cnn_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why the conv trunk cannot read an (H, W, C) image of ``shape`` (a kernel larger
        than the feature map it meets), or None."""
        h, w = shape[0], shape[1]
        for k, s in zip(self.cnn_kernels, self.cnn_strides):
            if h < k or w < k:
                return (
                    f"image of shape {tuple(shape)} is too small for the CNN (kernel {k} on a "
                    f"{h}x{w} feature map): set learner.model.cnn_kernels / cnn_strides"
                )
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return None

    def validate(self) -> None:
        require(self.encoder in ENCODERS, "encoder", f"must be one of {ENCODERS}")
        for name in (
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "tstep_hidden",
            "tstep_layers",
            "tstep_out",
            "cnn_out",
            "actor_hidden",
            "actor_layers",
            "critic_hidden",
            "critic_layers",
            "max_time",
        ):
            require(int(getattr(self, name)) >= 1, name, "must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        require(
            self.time_embedding in TIME_EMBEDDINGS,
            "time_embedding",
            f"must be one of {TIME_EMBEDDINGS}",
        )
        if self.encoder == "transformer":
            require(self.d_model % self.n_heads == 0, "n_heads", "must divide d_model")
        if self.time_embedding == "sinusoidal":
            require(self.d_model % 2 == 0, "d_model", "must be even for the sinusoidal embedding")
        require(self.obs_clip > 0, "obs_clip", "must be > 0")
        n = len(self.cnn_channels)
        require(n >= 1, "cnn_channels", "needs at least one conv layer")
        require(len(self.cnn_kernels) == n, "cnn_kernels", "needs one entry per cnn_channels entry")
        require(len(self.cnn_strides) == n, "cnn_strides", "needs one entry per cnn_channels entry")
        require(all(c >= 1 for c in self.cnn_channels), "cnn_channels", "entries must be >= 1")
        require(all(k >= 1 for k in self.cnn_kernels), "cnn_kernels", "entries must be >= 1")
        require(all(s >= 1 for s in self.cnn_strides), "cnn_strides", "entries must be >= 1")
        require(self.log_std_min < self.log_std_max, "log_std_min", "must be < log_std_max")


@dataclass
class LearnerConfig:
    """The AMAGO update (SPEC section 5) and where it runs."""

    # Network architecture.
    model: ModelConfig = field(default_factory=ModelConfig)
    # Training window (timesteps), which is also the acting context: rollout actors attend to
    # at most this many most recent timesteps. A run's config may leave it 0: the entrypoint
    # then derives whole rollouts (the env's horizon + 1) capped at seq_len_cap
    # (deploy.config.derive_defaults); the learner itself needs a concrete value.
    max_seq_len: int = 256
    # Largest window a derived max_seq_len may take (long-horizon envs get a sliding window);
    # 0 = by the learner's device: 256 on a GPU, 64 on CPU (deploy.config.window_cap).
    seq_len_cap: int = 0
    # Windows per update (the replay sampler draws this many per batch).
    batch_size: int = 24
    # Discount factors trained at once (multi-gamma); the LAST entry is the main discount,
    # the only one whose actor acts. A run's config may leave it null: derived from a
    # random-action probe of the env's rewards (deploy.config.reward_regime): these seven
    # for sparse rewards, up to 0.99 for dense ones.
    gammas: list[float] | None = field(
        default_factory=lambda: [0.1, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999]
    )
    # Critic ensemble size C (per discount).
    num_critics: int = 4
    # Critics drawn at random (per target element) for the clipped TD target.
    num_critics_td: int = 2
    # Weight of the critic loss in the total loss.
    critic_loss_weight: float = 10.0
    # Weight of the online actor term -Q(s, a ~ pi(s)) (variant "amago" only).
    online_actor_weight: float = 1.0
    # Weight of the filtered behaviour-cloning term -1[A > 0] log pi(a|s); null takes the
    # variant's own: 0.1 for "amago" (next to the online term), 1.0 for "amago2" (where BC is
    # the only actor term, as in AMAGO-2).
    bc_weight: float | None = None
    # Reward scale c_r applied inside the TD target; null in a run's config: derived with
    # gammas (10 for sparse rewards; for dense ones sigma / their largest size within
    # [1, sigma], sigma = sqrt(popart_init_nu) = 10 by default).
    reward_scale: float | None = 10.0
    # PopArt value normalisation (variant "amago"; the two-hot critic needs none).
    popart: bool = True
    # PopArt statistics step size (debiased exponential moving average).
    popart_beta: float = 5e-4
    # PopArt initial second moment nu (a wide initial scale: sigma = sqrt(nu)).
    popart_init_nu: float = 100.0
    # A registered learner variant (learner/variants/): "amago": scalar critics (squared TD
    # error, PopArt), online + filtered-BC actor; "amago2": two-hot classification critics
    # over symlog bins, filtered-BC actor only.
    variant: str = "amago"
    # Two-hot critic (amago2): number of bins and the raw (reward-scaled) return range that
    # the bins cover, evenly spaced in symlog space. null bounds are derived from the task
    # (learner.variants.amago2.twohot_bound): +-2 x reward_scale x reward_bound x the
    # discounted horizon.
    num_bins: int = 128
    # Labels of the bin critic's cross-entropy: "hlgauss" (a Gaussian of critic_label_sigma
    # bin widths around the symlog TD target, Farebrother et al. 2024) or "twohot"
    # (Dreamer-V3/AMAGO-2's). hlgauss is the default on thin evidence: it solved offline
    # T-Maze on 1 of 3 seeds where two-hot solved none (docs/configuration.md "AMAGO-2").
    critic_labels: str = "hlgauss"
    critic_label_sigma: float = 3.0
    # Per-transition weights of the bin critic's cross-entropy: "error" weights each
    # transition by how far its predicted value (the expectation over the bins, symlog
    # units) is from its target, normalised to mean 1 over the batch (no gradient through
    # the weights), so the few transitions the critic gets badly wrong shape it as a squared
    # error would; "none" is plain cross-entropy (AMAGO-2's). With "none" offline T-Maze
    # learned on 1 of 3 seeds (a hint-blind critic), with "error" on 4 of 4 (docs/configuration.md "AMAGO-2").
    critic_loss_weighting: str = "error"
    twohot_min: float | None = None
    twohot_max: float | None = None
    # Largest |reward| of one step assumed when deriving the two-hot bounds (the entrypoint
    # raises it to what a short random-action probe of the env sees).
    reward_bound: float = 1.0
    # AdamW learning rate, weight decay, linear warm-up length (updates) and grad-norm clip.
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float = 1.0
    # EMA rate of the target actor/critics.
    tau: float = 0.003
    # Smallest probability a categorical actor may give any action.
    prob_clip: float = 0.001
    # "cpu", "cuda" or "auto" (cuda when available).
    device: str = "auto"
    # torch intra-op threads for this process (0 = leave torch's default).
    num_threads: int = 0
    # bf16 autocast: "auto" (on for cuda, off on cpu), "on", "off".
    bf16: str = "auto"
    # Copy batches through pinned host memory (cuda only).
    pin_memory: bool = True
    # Wrap the loss computation in torch.compile (slow to compile; off by default).
    compile: bool = False
    # Seed of the parameter init and of the learner's own random stream.
    seed: int = 0
    # Data-parallel learners: this many learner processes (Ray actors on one node, a
    # torch.distributed group: gloo on CPU, NCCL on GPU with one GPU each) average their
    # gradients every update; each samples its own batch_size windows (the update sees
    # num_learners x batch_size), rank 0 publishes weights and writes checkpoints. 1 = one
    # learner process, no group (docs/configuration.md "Data-parallel learners").
    num_learners: int = 1
    # Process-level settings of the Ray learner actor (learner/worker.py); unused by the
    # pure learner and ignored when checkpoints compare configs.
    worker: LearnerWorkerConfig = field(default_factory=LearnerWorkerConfig)

    def validate(self) -> None:
        prefixed("model", self.model.validate)
        prefixed("worker", self.worker.validate)
        require(
            self.max_seq_len >= 2,
            "max_seq_len",
            "must be >= 2 (a transition needs two); 0 is derived by the entrypoint only",
        )
        require(self.seq_len_cap == 0 or self.seq_len_cap >= 2, "seq_len_cap", "must be 0 or >= 2")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        derived = "null is only for a run's config (the entrypoint derives it from the env)"
        require(self.gammas is not None, "gammas", derived)
        require(self.reward_scale is not None, "reward_scale", derived)
        require(len(self.gammas) >= 1, "gammas", "needs at least one discount")
        require(
            all(0.0 <= float(g) < 1.0 for g in self.gammas),
            "gammas",
            "every discount must be in [0, 1)",
        )
        require(self.num_critics >= 1, "num_critics", "must be >= 1")
        require(
            1 <= self.num_critics_td <= self.num_critics,
            "num_critics_td",
            "must be in [1, num_critics]",
        )
        for name in (
            "critic_loss_weight",
            "online_actor_weight",
            "weight_decay",
            "grad_clip",
            "popart_beta",
        ):
            require(float(getattr(self, name)) >= 0.0, name, "must be >= 0")
        require(self.reward_scale > 0, "reward_scale", "must be > 0")
        require(0.0 < self.popart_beta <= 1.0, "popart_beta", "must be in (0, 1]")
        require(self.popart_init_nu > 0, "popart_init_nu", "must be > 0")
        self.variant_impl()  # one of variant_names()
        require(self.num_bins >= 2, "num_bins", "must be >= 2")
        require(
            self.critic_labels in CRITIC_LABELS,
            "critic_labels",
            f"must be one of {CRITIC_LABELS}",
        )
        require(self.critic_label_sigma > 0, "critic_label_sigma", "must be > 0")
        require(
            self.critic_loss_weighting in CRITIC_WEIGHTINGS,
            "critic_loss_weighting",
            f"must be one of {CRITIC_WEIGHTINGS}",
        )
        require(self.bc_weight is None or self.bc_weight >= 0, "bc_weight", "must be >= 0")
        require(self.reward_bound > 0, "reward_bound", "must be > 0")
        if self.twohot_min is not None and self.twohot_max is not None:
            require(self.twohot_min < self.twohot_max, "twohot_min", "must be < twohot_max")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        require(0.0 <= self.prob_clip < 0.5, "prob_clip", "must be in [0, 0.5)")
        require(self.device in DEVICES, "device", f"must be one of {DEVICES}")
        require(self.num_threads >= 0, "num_threads", "must be >= 0")
        require(self.num_learners >= 1, "num_learners", "must be >= 1")
        require(self.bf16 in BF16_MODES, "bf16", f"must be one of {BF16_MODES}")

    def variant_impl(self) -> LearnerVariant:
        """The registered variant ``variant`` names (:mod:`learner.variants`); a
        :class:`~common.config_utils.ConfigError` naming ``variant`` if it names none."""
        names = variant_names()
        require(self.variant in names, "variant", f"must be one of {tuple(names)}")
        return get_variant(self.variant)

    @property
    def bc_weight_value(self) -> float:
        """``bc_weight``, or the variant's own when it is null."""
        if self.bc_weight is not None:
            return float(self.bc_weight)
        return self.variant_impl().default_bc_weight

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what checkpoints store and compare)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnerConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ``TypeError``)."""
        d = dict(d)
        model = ModelConfig(**d.pop("model", {}))
        worker = LearnerWorkerConfig(**d.pop("worker", {}))
        return cls(model=model, worker=worker, **d)

    @classmethod
    def coerce(cls, cfg: Any) -> LearnerConfig:
        """A ``LearnerConfig`` from itself, a plain dict, or an OmegaConf/Hydra node."""
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        return cls.from_dict(cfg)
