"""benchmarks/learner_profile.py: the instrumented update is train_step, and its parts add up."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import learner_profile as lp
from learner.amago import AmagoLearner


def test_profiled_step_matches_train_step():
    spec, cfg = lp.TMAZE_SPEC, lp.tiny_cfg()
    a, b = AmagoLearner(spec, cfg), AmagoLearner(spec, cfg)
    make = lp.batch_maker(spec, 4, 8, seed=3)
    timer = lp.Timer(a.device)
    for _ in range(4):
        batch = make()
        ma = lp.profiled_step(a, batch, timer)
        mb = b.train_step(batch)
        assert ma == mb
    assert a.version == b.version == 4
    sa, sb = a.agent.state_dict(), b.agent.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for pa, pb in zip(a._params, b._params):
        assert torch.equal(a.optimizer.state[pa]["exp_avg"], b.optimizer.state[pb]["exp_avg"])
    assert torch.equal(a._rng_cpu, b._rng_cpu)
    assert "update" not in vars(a.agent.popart)  # the timing wrapper is gone
    assert all(v >= 0 for v in timer.sec.values())
    assert timer.sec["popart"] > 0 and timer.sec["forward"] > 0


def test_profile_table_parts_sum_to_total(capsys):
    out = lp.main(["--models", "tiny", "--steps", "4", "--rounds", "2", "--prof-steps", "2"])
    (r,) = out["results"].values()
    parts = r["parts"]
    assert set(parts) == set(lp.PARTS)
    assert all(v >= 0 for v in parts.values())
    # medians per part vs the median total: equal up to rounding across rounds
    assert np.isclose(sum(parts.values()), r["total"], rtol=0.25)
    # the instrumented update costs about what train_step does (shared cores: loose)
    inside = sum(v for k, v in parts.items() if k not in ("batch", "publish"))
    assert 0.4 < inside / r["plain"] < 2.5
    assert 0 <= r["outside_aten_frac"] <= 1 and r["flops"] > 0 and out["peak"] > 1e8
    text = capsys.readouterr().out
    assert "| forward |" in text and "sum of parts" in text and "% of peak" in text
    pct = [
        float(line.split("(")[1].split("%")[0])
        for line in text.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in lp.PARTS
    ]
    assert len(pct) == len(lp.PARTS) and abs(sum(pct) - 100) < 25


def test_image_and_text_encoder_shares_are_timed_where_the_spec_has_them():
    """The minigrid model's CNN and text rows: their forward + backward on one update's
    observations is timed (and leaves no gradients behind); a spec without such keys has none."""
    cfg = lp.tiny_cfg()
    channels, kernels, strides = lp.SMALL_IMAGE_CNN
    cfg["model"].update(cnn_channels=channels, cnn_kernels=kernels, cnn_strides=strides)
    learner = AmagoLearner(lp.MINIGRID_SPEC, cfg)
    batch = lp.batch_maker(lp.MINIGRID_SPEC, 4, 8, seed=0)()
    for kind in ("image", "text"):
        seconds = lp.obs_encoder_seconds(learner, batch, kind, repeats=2)
        assert seconds is not None and seconds > 0
    assert all(p.grad is None for p in learner.agent.parameters())
    tmaze = AmagoLearner(lp.TMAZE_SPEC, lp.tiny_cfg())
    tmaze_batch = lp.batch_maker(lp.TMAZE_SPEC, 4, 8, seed=0)()
    assert lp.obs_encoder_seconds(tmaze, tmaze_batch, "image") is None
    assert lp.obs_encoder_seconds(tmaze, tmaze_batch, "text") is None
