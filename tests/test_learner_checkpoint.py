"""Checkpoint round trip, resume equivalence, and refusal of foreign checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.spec import ArraySpec, EnvSpec
from learner.amago import AmagoLearner
from learner.checkpoint import CheckpointMismatchError
from learner.config import LearnerConfig
from learner.synthetic import random_batch, tiny_model

torch.set_num_threads(1)

SPEC = EnvSpec({"observation": ArraySpec((4,), "float32")}, 3, True, 50)


def cfg(**kw) -> LearnerConfig:
    model = tiny_model(dropout=0.1)
    base = dict(gammas=[0.9, 0.999], num_critics=3, device="cpu", warmup_steps=3, seed=7)
    base.update(kw)
    return LearnerConfig(model=model, **base)


def batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [random_batch(SPEC, 4, 8, rng, min_len=3) for _ in range(n)]


def test_resume_continues_identically(tmp_path):
    data = batches(6)
    uninterrupted = AmagoLearner(SPEC, cfg())
    ref = [uninterrupted.train_step(b) for b in data]

    first = AmagoLearner(SPEC, cfg())
    for b in data[:3]:
        first.train_step(b)
    path = str(tmp_path / "ckpt.pt")
    first.save(path)

    torch.manual_seed(12345)  # the global RNG must not matter
    resumed = AmagoLearner(SPEC, cfg())
    resumed.restore(path)
    assert resumed.version == 3
    got = [resumed.train_step(b) for b in data[3:]]
    assert resumed.version == uninterrupted.version == 6
    for a, b in zip(ref[3:], got):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    sd1, sd2 = uninterrupted.agent.state_dict(), resumed.agent.state_dict()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    o1, o2 = uninterrupted.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert [s["step"] for s in o1["state"].values()] == [s["step"] for s in o2["state"].values()]


def test_checkpoint_holds_all_statistics(tmp_path):
    learner = AmagoLearner(SPEC, cfg())
    for b in batches(2):
        learner.train_step(b)
    path = str(tmp_path / "c.pt")
    learner.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["model"]["d_model"] == 32
    agent = payload["state"]["agent"]
    for key in (
        "popart.mu",
        "popart.nu",
        "popart.w",
        "popart.b",
        "policy.tstep.norm.mean",
        "policy.tstep.norm.var",
        "policy.tstep.norm.count",
        "target_critics.w_in",
    ):
        assert key in agent
    assert payload["state"]["step"] == 2 and payload["state"]["optimizer"]["state"]


def test_other_config_is_refused_naming_the_field(tmp_path):
    learner = AmagoLearner(SPEC, cfg())
    path = str(tmp_path / "c.pt")
    learner.save(path)
    other = cfg()
    other.model.d_model = 64
    other.lr = 3e-4
    with pytest.raises(CheckpointMismatchError) as e:
        AmagoLearner(SPEC, other).restore(path)
    msg = str(e.value)
    assert "learner.model.d_model: 32 (checkpoint) != 64 (current)" in msg
    assert "learner.lr" in msg
    assert len(e.value.differences) == 2


def test_other_env_spec_is_refused(tmp_path):
    learner = AmagoLearner(SPEC, cfg())
    path = str(tmp_path / "c.pt")
    learner.save(path)
    spec2 = dataclasses.replace(SPEC, action_dim=5)
    with pytest.raises(CheckpointMismatchError, match="spec.action_dim"):
        AmagoLearner(spec2, cfg()).restore(path)


def test_runtime_fields_may_differ(tmp_path):
    learner = AmagoLearner(SPEC, cfg())
    learner.train_step(batches(1)[0])
    path = str(tmp_path / "c.pt")
    learner.save(path)
    other_cfg = cfg(num_threads=1, pin_memory=False)
    other_cfg.worker.publish_every = 7
    other = AmagoLearner(SPEC, other_cfg)
    other.restore(path)
    assert other.version == 1


def test_latest_checkpoint_finds_the_newest_in_a_run_directory(tmp_path):
    from learner.checkpoint import checkpoint_name, latest_checkpoint

    run = tmp_path / "run"
    assert latest_checkpoint(str(run)) is None
    (run / "checkpoints").mkdir(parents=True)
    for v in (20, 1000, 300):
        (run / "checkpoints" / checkpoint_name(v)).write_bytes(b"")
    (run / "checkpoints" / "ckpt_00009999.pt.tmp.12").write_bytes(b"")  # partial write
    newest = str(run / "checkpoints" / checkpoint_name(1000))
    assert latest_checkpoint(str(run)) == newest
    assert latest_checkpoint(str(run / "checkpoints")) == newest
    assert latest_checkpoint(newest) == newest


def test_resume_from_a_missing_checkpoint_fails_at_start_naming_the_field(tmp_path):
    from common.config_utils import ConfigError
    from deploy.config import compose

    cfg = compose([f"run.resume_from={tmp_path / 'nothing'}"])
    with pytest.raises(ConfigError, match="run.resume_from"):
        cfg.validate()
