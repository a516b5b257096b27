"""Metrics read once per ``train`` call instead of once per update (issue 17 item 6: no host
sync per update on CUDA): ``train_step_deferred`` + ``resolve`` give exactly the numbers
``train_step`` gives, update for update, and leave the learner in the same state."""

from __future__ import annotations

import numpy as np
import torch

from common.spec import ArraySpec, EnvSpec
from learner.amago import AmagoLearner, PendingMetrics
from learner.config import LearnerConfig
from learner.synthetic import random_batch, tiny_model

SPEC = EnvSpec({"observation": ArraySpec((3,), "float32")}, 4, True, 64)


def _learner():
    model = tiny_model(32, n_layers=1, n_heads=2)
    return AmagoLearner(SPEC, LearnerConfig(max_seq_len=12, device="cpu", model=model))


def test_deferred_metrics_equal_per_step_metrics_exactly():
    rng = np.random.default_rng(0)
    batches = [random_batch(SPEC, 4, 12, rng) for _ in range(4)]
    a, b = _learner(), _learner()
    eager = [a.train_step(x) for x in batches]
    pending = [b.train_step_deferred(x) for x in batches]
    assert all(isinstance(p, PendingMetrics) for p in pending)
    assert all(p.values.dtype == torch.float32 and p.values.dim() == 1 for p in pending)
    assert b.resolve(pending) == eager  # the very floats, not approximately
    assert b.resolve([]) == []
    for (k, x), y in zip(a.agent.state_dict().items(), b.agent.state_dict().values()):
        assert torch.equal(x, y), k
