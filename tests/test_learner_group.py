"""Data-parallel learners (``learner.num_learners=2``): two real Ray learner ranks in one gloo
process group, each sampling its own synthetic batches (``learner.synthetic``: the learner's
own sampling path, no replay service), behind a :class:`learner.group.LearnerGroup`.

- after K updates every rank holds bit-identical parameters, buffers and optimizer state (with
  dropout and Gaussian sampling drawing different numbers on each rank);
- one group update equals one single-learner update on both ranks' batches together (a
  deterministic config: the gradient mean, PopArt and observation statistics are merged
  right);
- a rank SIGKILLed mid-run restarts the whole group from the newest checkpoint, and the step
  count goes on from there.

One local Ray session for the module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

from common.records import Batch
from common.spec import ArraySpec, EnvSpec
from deploy.run.builder import make_learner
from learner.amago import AmagoLearner
from learner.config import LearnerConfig
from learner.synthetic import SyntheticSampler, synthetic_sampler, tiny_model
from learner.worker import LearnerSetup
from learner.worker_config import LearnerWorkerConfig

torch.set_num_threads(1)

DISCRETE = EnvSpec({"observation": ArraySpec((4,), "float32")}, 3, True, 50)
CONTINUOUS = EnvSpec({"observation": ArraySpec((4,), "float32")}, 2, False, 50)
LENGTH, BATCH, SEED = 8, 4, 3


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import ray

    from common.ray_utils import init_ray

    init_ray(num_cpus=2)
    # the helpers below run inside the ranks (``__ray_call__``): ship them by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture
def started():
    """What a test started (groups, placement groups): released after it."""
    from learner.group import release

    out: list = []
    yield out
    for h in reversed(out):
        release(h)


@pytest.fixture
def broker():
    import ray

    from common.weights import WeightBroker

    b = ray.remote(WeightBroker).options(num_cpus=0).remote()
    yield b
    ray.kill(b)


def learner_cfg(**kw) -> LearnerConfig:
    base = dict(
        model=tiny_model(16, dropout=0.1),
        gammas=[0.9, 0.99],
        num_critics=3,
        batch_size=BATCH,
        device="cpu",
        num_threads=1,
        warmup_steps=2,
        seed=SEED,
        num_learners=2,
        worker=LearnerWorkerConfig(num_cpus=0.5, publish_every=2, group_timeout_s=30.0),
    )
    return LearnerConfig(**{**base, **kw})


def start(spec: EnvSpec, cfg: LearnerConfig, run_dir, broker, started: list):
    """The group (appended to ``started`` with its placement group)."""
    from learner.group import start_group

    setups = [
        LearnerSetup(
            spec=spec,
            learner=cfg,
            make_sampler=functools.partial(synthetic_sampler, spec, LENGTH, SEED + r),
            make_learner=make_learner,
            run_dir=str(run_dir),
            serve_metrics=False,
        )
        for r in range(cfg.num_learners)
    ]
    group, pg = start_group(setups, broker, cfg.worker.num_cpus, 0)
    started += [group, pg]
    return group


def learner_state(learner: AmagoLearner) -> dict:
    """A learner's whole state (agent, optimizer, step) as numpy arrays."""
    sd = learner.state_dict()
    out = {f"agent.{k}": v.numpy().copy() for k, v in sd["agent"].items()}
    for i, st in sd["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": torch.as_tensor(v).numpy().copy() for k, v in st.items()})
    out["step"] = np.array(sd["step"])
    return out


def _state(actor) -> dict:
    """Run inside a rank (``__ray_call__``): :func:`learner_state` of its learner."""
    return learner_state(actor.learner)


def _pid(actor) -> int:
    return os.getpid()


def rank_states(group) -> list[dict]:
    import ray

    ranks = ray.get(group.rank_handles.remote())
    return ray.get([h.__ray_call__.remote(_state) for h in ranks])


@pytest.mark.slow  # real Ray ranks: ~20 s each on the 2-core VM
def test_ranks_hold_identical_state_after_k_updates(tmp_path, broker, started):
    import ray

    group = start(CONTINUOUS, learner_cfg(), tmp_path, broker, started)
    before = rank_states(group)[0]
    report = ray.get(group.train.remote(6, 60.0))
    assert report.updates == 6 and report.version == 6
    assert report.seq_timesteps == 6 * 2 * BATCH * LENGTH  # both ranks' batches
    a, b = rank_states(group)
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, differ
    moved = [k for k in before if not np.array_equal(before[k], a[k])]
    assert len(moved) > len(before) // 2  # it trained
    assert ray.get(broker.version.remote()) == 6  # rank 0 published


def cat(batches: list[Batch]) -> Batch:
    fields = {
        f.name: np.concatenate([getattr(b, f.name) for b in batches])
        for f in dataclasses.fields(Batch)
        if f.name != "obs"
    }
    obs = {k: np.concatenate([b.obs[k] for b in batches]) for k in batches[0].obs}
    return Batch(obs=obs, **fields)


@pytest.mark.slow  # real Ray ranks: ~20 s each on the 2-core VM
def test_a_group_update_is_one_update_on_both_batches(tmp_path, broker, started):
    """Deterministic update (no dropout, every critic in the TD target, discrete actions):
    two ranks on batches A and B == one learner on A+B, up to float rounding."""
    import ray

    cfg = learner_cfg(model=tiny_model(16, dropout=0.0), num_critics_td=3)
    group = start(DISCRETE, cfg, tmp_path, broker, started)
    ray.get(group.train.remote(2, 60.0))
    got = rank_states(group)[0]
    samplers = [SyntheticSampler(DISCRETE, LENGTH, SEED + r) for r in range(2)]
    one = AmagoLearner(DISCRETE, dataclasses.replace(cfg, num_learners=1))
    for _ in range(2):
        one.train_step(cat([s.sample(BATCH) for s in samplers]))
    want = learner_state(one)
    for k in ("agent.popart.mu", "agent.popart.nu", "agent.policy.tstep.norm.mean"):
        assert k in want, sorted(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow  # real Ray ranks: ~20 s each on the 2-core VM
def test_a_dead_rank_restarts_the_group_from_the_newest_checkpoint(tmp_path, broker, started):
    import ray

    group = start(CONTINUOUS, learner_cfg(), tmp_path, broker, started)
    ray.get(group.train.remote(4, 60.0))
    ckpt = ray.get(group.checkpoint.remote())
    assert os.path.basename(ckpt) == "ckpt_00000004.pt"
    first = ray.get(group.train.remote(2, 60.0))  # 6 updates, not checkpointed
    assert first.version == 6
    ranks = ray.get(group.rank_handles.remote())
    os.kill(ray.get(ranks[1].__ray_call__.remote(_pid)), signal.SIGKILL)
    time.sleep(0.5)
    restarted = ray.get(group.train.remote(3, 60.0))
    assert restarted.updates == 0 and restarted.incarnation != first.incarnation
    assert restarted.resumed_from == ckpt and restarted.version == 4
    after = ray.get(group.train.remote(3, 60.0))
    assert after.version == 7 and after.updates == 3
    assert after.incarnation == restarted.incarnation
    a, b = rank_states(group)
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []
    assert int(a["step"]) == 7


def test_num_learners_must_be_at_least_one():
    from common.config_utils import ConfigError

    with pytest.raises(ConfigError, match="num_learners"):
        learner_cfg(num_learners=0).validate()
