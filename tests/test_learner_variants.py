"""Learner variants behind a registry (learner/variants/): the built-in ones' hooks, a new
variant as one file (tests/huber_variant.py) selected by ``learner.variant``, unknown names
refused in one line naming ``learner.variant``, and the learner built by the setup's
``make_learner`` factory."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import tests.huber_variant  # noqa: F401  (registers "test_huber")
from common.config_utils import ConfigError
from common.spec import ArraySpec, EnvSpec
from deploy.config import TrainConfig, compose, prepare
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import random_batch, tiny_model
from learner.variants import LearnerVariant, get_variant, register_variant, variant_names
from learner.variants.amago import Amago
from learner.worker import LearnerActor, LearnerSetup

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SPEC = EnvSpec({"observation": ArraySpec((4,), "float32")}, 3, True, 50)


def small_cfg(variant: str, **kw) -> LearnerConfig:
    base = dict(gammas=[0.9, 0.999], num_critics=3, device="cpu", max_seq_len=16, num_bins=17)
    return LearnerConfig(model=tiny_model(), variant=variant, **{**base, **kw})


def first_losses(learner: AmagoLearner, batch) -> dict[str, float]:
    """compute_losses of ``batch`` as the first update would see it (no optimizer step)."""
    t = learner._to_tensors(batch)
    with learner._own_rng():
        learner._update_obs_stats(t)
        return {k: float(v.detach()) for k, v in learner.compute_losses(t).items()}


def test_the_registry_finds_the_builtin_variants_without_loading_torch():
    """A fresh process: the package's modules are found on the first lookup, and the
    config side (validation, the BC weight, derived bins) never imports torch."""
    code = (
        "import sys\n"
        "from learner.config import LearnerConfig\n"
        "from learner.variants import get_variant, variant_names\n"
        "cfg = LearnerConfig(variant='amago2')\n"
        "cfg.validate()\n"
        "derived, notes = get_variant('amago2').derive(cfg, 10, None)\n"
        "print(variant_names(), cfg.bc_weight_value, len(notes), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["['amago',", "'amago2']", "1.0", "1", "False"]


@pytest.mark.parametrize(
    "name, outputs, popart, online, reduce, bc",
    [("amago", 1, True, True, "min", 0.1), ("amago2", 17, False, False, "mean", 1.0)],
)
def test_builtin_variants_supply_their_hooks(name, outputs, popart, online, reduce, bc):
    variant, cfg = get_variant(name), small_cfg(name)
    assert variant.name == name and cfg.variant_impl() is variant
    assert (variant.critic_outputs(cfg), variant.uses_popart(cfg)) == (outputs, popart)
    assert (variant.online_actor, variant.td_reduce, variant.default_bc_weight) == (
        online,
        reduce,
        bc,
    )
    agent = AmagoLearner(SPEC, cfg).agent
    assert agent.critics.k == outputs and agent.popart.enabled == popart
    assert hasattr(agent, "bins") == (name == "amago2")


def test_a_new_variant_is_one_file_selected_by_name():
    """tests/huber_variant.py: only the critic loss differs from AMAGO's (same seed, same
    batch: same actor terms, a smaller critic loss), and updates run."""
    assert "test_huber" in variant_names()
    batch = random_batch(SPEC, 4, 10, np.random.default_rng(0), min_len=3)
    amago = AmagoLearner(SPEC, small_cfg("amago"))
    huber = AmagoLearner(SPEC, small_cfg("test_huber"))
    assert type(huber.variant).__name__ == "HuberCritic" and huber.cfg.bc_weight_value == 0.25
    a, h = first_losses(amago, batch), first_losses(huber, batch)
    assert h["online_loss"] == a["online_loss"] and h["bc_loss"] == a["bc_loss"]
    assert 0.0 < h["critic_loss"] < a["critic_loss"]  # Huber < squared error off zero
    for _ in range(3):
        out = huber.train_step(batch)
    assert all(np.isfinite(v) for v in out.values()) and huber.version == 3


def test_the_run_config_selects_a_registered_variant():
    cfg, _spec, derived = prepare(
        OmegaConf.to_object(
            compose(["experiment=tmaze", "learner.variant=test_huber"], resolved=False)
        )
    )
    assert cfg.learner.variant == "test_huber" and cfg.learner.bc_weight == 0.25
    assert any(d.field == "learner.bc_weight" and d.reason == "test_huber's own" for d in derived)


def _one_line_naming_the_variant(e: pytest.ExceptionInfo, field: str) -> None:
    assert e.value.field == field
    msg = str(e.value)
    assert "\n" not in msg and "'amago'" in msg and "'amago2'" in msg, msg


def test_an_unknown_variant_fails_config_checking_in_one_line_naming_the_field():
    with pytest.raises(ConfigError) as e:
        LearnerConfig(variant="amago3").validate()
    _one_line_naming_the_variant(e, "variant")
    with pytest.raises(ConfigError) as e:
        TrainConfig(learner=LearnerConfig(variant="amago3")).validate()
    _one_line_naming_the_variant(e, "learner.variant")
    overrides = ["experiment=tmaze", "learner.variant=amago3"]
    with pytest.raises(ConfigError) as e:
        prepare(OmegaConf.to_object(compose(overrides, resolved=False)))
    _one_line_naming_the_variant(e, "learner.variant")
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    _one_line_naming_the_variant(e, "learner.variant")
    with pytest.raises(ConfigError):
        AmagoLearner(SPEC, small_cfg("amago3"))
    with pytest.raises(KeyError, match="unknown learner variant 'amago3'; registered: "):
        get_variant("amago3")


def test_the_entrypoint_refuses_an_unknown_variant_in_one_line(tmp_path):
    """``python -m deploy.train learner.variant=...`` exits 2 before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.train", "learner.variant=amago3"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        "error: config field 'learner.variant': must be one of ('amago', 'amago2')"
    ]
    assert not (tmp_path / "run").exists()


def test_the_registry_refuses_a_taken_name_and_an_incomplete_variant():
    with pytest.raises(ValueError, match="'amago' is already registered"):

        @register_variant("amago")
        class Other(Amago):
            pass

    with pytest.raises(TypeError, match="abstract"):

        @register_variant("test_incomplete")
        class Incomplete(LearnerVariant):
            def critic_outputs(self, cfg) -> int:
                return 1

    assert type(get_variant("amago")) is Amago and "test_incomplete" not in variant_names()


def test_the_builders_learner_setup_carries_the_learner_factory(tmp_path):
    from deploy.run import builder

    setup = builder.learner_setup(TrainConfig(), SPEC, tmp_path, use_gpu=False)
    assert setup.make_learner is builder.make_learner
    setup = pickle.loads(pickle.dumps(setup))  # Ray ships it to the learner's process
    learner = setup.make_learner(SPEC, small_cfg("amago2"), None)
    assert isinstance(learner, AmagoLearner) and learner.variant is get_variant("amago2")


def test_the_learner_actor_builds_its_learner_with_the_setups_factory(tmp_path):
    seen = {}

    class Built(Exception):
        pass

    def make_learner(spec, cfg, group):
        seen.update(spec=spec, cfg=cfg, group=group)
        raise Built  # stop before the actor needs Ray

    cfg = small_cfg("test_huber")
    setup = LearnerSetup(
        spec=SPEC,
        learner=cfg,
        make_sampler=lambda: None,
        make_learner=make_learner,
        run_dir=str(tmp_path),
        serve_metrics=False,
    )
    with pytest.raises(Built):
        LearnerActor(setup, broker=None)
    assert seen == dict(spec=SPEC, cfg=cfg, group=None)
