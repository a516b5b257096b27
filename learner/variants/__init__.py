"""Learner variants: what differs between AMAGO-style updates, selected by name in config
(``learner.variant``) the way replay relabelers are (:mod:`replay_service.relabel`).

:meth:`learner.amago.AmagoLearner.compute_losses` is one shared trunk (encoders, TD targets over
a random critic subset, PopArt statistics, actor heads, the filtered-BC term, the optimiser
step) that calls the hooks of a :class:`LearnerVariant`, which supplies:

* the critic head: outputs per value (1 for a scalar critic, ``num_bins`` logits for a bin
  critic), whether PopArt normalises it, the bins a classification critic needs;
* values and the critic loss: critic outputs -> the values the actor's terms compare, raw
  values for the TD targets and statistics, and the critic loss against the TD targets;
* the actor: the default BC weight, whether the online term ``-Q(s, pi(s))`` is trained, the
  reduction of the TD target over the critic subset;
* config derived from the task before a run starts (:meth:`LearnerVariant.derive`, called by
  :func:`deploy.config.derive_defaults`).

Built in: ``"amago"`` (:mod:`learner.variants.amago`) and ``"amago2"``
(:mod:`learner.variants.amago2`). A variant registers an instance of its class under a name at
import time; every module of this package is imported on the first lookup, so a new variant
is one file here (plus, optionally, a ``configs/learner/`` preset)::

    @register_variant("my_variant")
    class MyVariant(Amago):  # a scalar critic like AMAGO's, with its own loss
        def critic_loss(self, agent, cfg, out, values, target, valid): ...

    learner = AmagoLearner(spec, LearnerConfig(variant="my_variant"))

This package imports neither torch nor the rest of the learner at import time (hooks that need
torch import it when called): :class:`learner.config.LearnerConfig` checks ``learner.variant``
against :func:`variant_names` and the driver derives a variant's defaults without loading
torch. What a variant reads of the config and of the agent is therefore typed by the protocols
below, which :class:`learner.config.LearnerConfig` and :class:`learner.agent.AmagoAgent` meet.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from torch import Tensor


class ValueNormalizer(Protocol):
    """PopArt as the value hooks use it (:class:`learner.agent.PopArt`; identity maps when it
    is disabled). ``trailing``: dims after the discount dim G."""

    def __call__(self, x: Tensor, trailing: int = 0) -> Tensor:
        """Normalised values of critic outputs ``x``."""

    def raw(self, x: Tensor, trailing: int = 0) -> Tensor:
        """Raw-scale values of critic outputs ``x``."""

    def normalize(self, y: Tensor) -> Tensor:
        """Raw values (..., G) -> normalised space."""

    def denormalize(self, n: Tensor) -> Tensor:
        """Normalised values (..., G) -> raw scale."""


class VariantAgent(Protocol):
    """What the value and loss hooks read of the agent (:class:`learner.agent.AmagoAgent`):
    its PopArt and, where :meth:`LearnerVariant.value_bins` made them, its ``bins`` (K,)."""

    popart: ValueNormalizer
    bins: Tensor


class VariantConfig(Protocol):
    """What variants read of the learner config (:class:`learner.config.LearnerConfig`, a
    dataclass: :meth:`LearnerVariant.derive` returns ``dataclasses.replace`` copies of it)."""

    variant: str
    gammas: list[float]
    reward_scale: float
    popart: bool
    num_bins: int
    critic_labels: str
    critic_label_sigma: float
    critic_loss_weighting: str
    twohot_min: float | None
    twohot_max: float | None
    reward_bound: float


C = TypeVar("C", bound=VariantConfig)


class Derivation(NamedTuple):
    """A config value a variant derived from the task; ``field`` relative to ``learner.``."""

    field: str
    value: object
    reason: str


class LearnerVariant(abc.ABC):
    """The hooks of one learner variant (stateless; one instance per registered name).

    Shapes: C critics, B rows, T transitions, G discounts, A actions, K outputs per value
    (:meth:`critic_outputs`). "Values" are what :meth:`values` returns: the space in which the
    advantage filter ``1[Q(s, a) > V(s)]`` and the online term compare critics.
    """

    name: ClassVar[str] = ""  # set by register_variant
    # Weight of the filtered-BC term -1[A > 0] log pi(a|s) when learner.bc_weight is null.
    default_bc_weight: ClassVar[float] = 0.1
    # Whether the actor also follows the online term -min_c Q(s, a ~ pi(s)) (weight
    # learner.online_actor_weight) through frozen critics; False: filtered BC only.
    online_actor: ClassVar[bool] = True
    # How TD targets reduce Q_targ(s', a') over the random critic subset: "min" (clipped
    # double-Q) or "mean" (learner.losses.td_target).
    td_reduce: ClassVar[str] = "min"

    # -- the critic head -----------------------------------------------------------------

    @abc.abstractmethod
    def critic_outputs(self, cfg: VariantConfig) -> int:
        """Outputs per value of each critic, K: 1 for a scalar critic, logits per bin for a
        classification critic."""

    def uses_popart(self, cfg: VariantConfig) -> bool:
        """Whether PopArt normalises the critics' values (else its maps are the identity)."""
        return False

    def value_bins(self, cfg: VariantConfig, horizon: int) -> Tensor | None:
        """The agent's ``bins`` buffer (K,) for a rollout ``horizon``, or None (no bins)."""
        return None

    # -- values and the critic loss ------------------------------------------------------

    @abc.abstractmethod
    def values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        """Critic outputs (..., K) -> values (...) the actor's terms compare. ``trailing``:
        dims after the discount dim (1 for a discrete critic's every-action outputs)."""

    @abc.abstractmethod
    def target_values(self, agent: VariantAgent, out: Tensor, trailing: int = 0) -> Tensor:
        """Target-critic outputs (..., K) -> raw-scale values (...) for the TD targets."""

    @abc.abstractmethod
    def raw_values(self, agent: VariantAgent, values: Tensor) -> Tensor:
        """:meth:`values` (C, B, T, G) -> raw scale (the ``q_mean`` statistic)."""

    @abc.abstractmethod
    def critic_loss(
        self,
        agent: VariantAgent,
        cfg: VariantConfig,
        out: Tensor,
        values: Tensor,
        target: Tensor,
        valid: Tensor,
    ) -> Tensor:
        """Per-element critic loss (C, B, T, G), masked and averaged by the trunk.

        ``out``: critic outputs of the data action (C, B, T, G, K), with gradient; ``values``:
        :meth:`values` of them (C, B, T, G); ``target``: raw TD targets (B, T, G), no gradient
        (PopArt already moved by them); ``valid``: real transitions (B, T)."""

    # -- config derived from the task ----------------------------------------------------

    def derive_needs_env(self, cfg: VariantConfig) -> bool:
        """Whether :meth:`derive` reads the env (its rollout horizon and reward probe)."""
        return False

    def derive(
        self, cfg: C, horizon: int, reward_probe: float | None
    ) -> tuple[C, list[Derivation]]:
        """``cfg`` with the fields it leaves to the run filled in from the env's rollout
        ``horizon`` and ``reward_probe`` (largest |reward| a random-action probe saw, None if
        not probed), and what was derived. Fields set explicitly are kept."""
        return cfg, []


# name -> the variant; filled by @register_variant at import time only.
_REGISTRY: dict[str, LearnerVariant] = {}
_loaded = False


def _load_builtins() -> None:
    """Import every module of this package once (each registers its variant)."""
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def _origin(cls: type) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


def register_variant(name: str) -> Callable[[type[LearnerVariant]], type[LearnerVariant]]:
    """Class decorator registering an instance of a :class:`LearnerVariant` subclass under
    ``name`` (names are unique; an incomplete subclass fails here, at import)."""

    def deco(cls: type[LearnerVariant]) -> type[LearnerVariant]:
        old = _REGISTRY.get(name)
        if old is not None and _origin(type(old)) != _origin(cls):  # same: imported again
            raise ValueError(f"a learner variant named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return deco


def get_variant(name: str) -> LearnerVariant:
    """The variant registered as ``name`` (``KeyError`` naming the registered ones if none)."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown learner variant {name!r}; registered: {variant_names()}") from None


def variant_names() -> list[str]:
    """Names of the registered variants."""
    _load_builtins()
    return sorted(_REGISTRY)
