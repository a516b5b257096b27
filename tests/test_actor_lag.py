"""Actor lag (issue 17 item 4): per inserted rollout, versions behind the learner at insert
time, from what the actor's weight client last heard from the broker (no extra round trip);
and its roll-up in the driver (console row, summary.json). Ray is replaced by a stand-in
whose object refs are plain values, so this runs without starting Ray."""

from __future__ import annotations

import types

import pytest

from common.records import TrajectoryMeta
from common.reports import ActorReport, LearnerReport
from common.weights import WeightBroker, WeightClient


class Ref:
    def __init__(self, value, ready=True):
        self.value, self.ready = value, ready


class FakeBroker:
    """A WeightBroker whose ``.latest.remote`` returns refs we control."""

    def __init__(self):
        self.inner = WeightBroker()
        self.ready = True
        self.latest = types.SimpleNamespace(
            remote=lambda have=-1: Ref(self.inner.latest(have), self.ready)
        )


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref.value)
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: ([r for r in refs if r.ready], []))
    return ray


class Policy:
    def __init__(self):
        self.version = -1

    def load_weights(self, version, weights):
        self.version = version


def test_learner_version_follows_broker_answers_without_waiting(fake_ray):
    broker, policy = FakeBroker(), Policy()
    client = WeightClient(broker)
    broker.inner.publish(0, [Ref({})])
    client.wait(policy)
    assert policy.version == 0 and client.learner_version(policy) == 0
    client.poll(policy)  # asks (have=0)
    broker.inner.publish(40, [Ref({})])
    # the in-flight query was answered before the publish: nothing newer than 0
    assert client.learner_version(policy) == 0
    client.poll(policy)  # reads that answer, asks again
    assert client.learner_version(policy) == 40  # the new answer has arrived: seen, not loaded
    assert policy.version == 0
    client.poll(policy)  # loads 40
    assert policy.version == 40
    broker.ready = False
    client.poll(policy)  # a slow answer is not waited for
    broker.inner.publish(60, [Ref({})])
    assert client.learner_version(policy) == 40
    broker.ready = True
    client.poll(policy)  # the answer that was pending (not ready) is still not read
    assert client.learner_version(policy) == 40


def _traj_meta(version: int):
    return types.SimpleNamespace(meta=TrajectoryMeta(policy_version=version))


def test_rollout_actor_policy_lag_is_seen_version_minus_start_version():
    from actors.worker import RolloutActor

    actor = RolloutActor.__new__(RolloutActor)  # no envs, no Ray: only the measurement
    actor.policy = types.SimpleNamespace(version=20)
    actor.weights = types.SimpleNamespace(learner_version=lambda p: 100)
    assert actor.policy_lag(_traj_meta(0)) == 100
    assert actor.policy_lag(_traj_meta(20)) == 80
    actor.weights = types.SimpleNamespace(learner_version=lambda p: 10)  # never negative
    assert actor.policy_lag(_traj_meta(20)) == 0


def _actor_report(lags):
    return ActorReport(
        actor="0",
        incarnation="x",
        env_steps=10,
        returns=[],
        successes=[],
        lengths=[],
        env_faults=0,
        act_ms=1.0,
        policy_version=0,
        epsilon=0.1,
        insert_retries=0,
        rejected=0,
        policy_lags=lags,
    )


def _learner_report(updates, age):
    return LearnerReport(
        incarnation="x",
        updates=updates,
        version=updates,
        seq_timesteps=0,
        seconds=1.0,
        batch_wait_s=0.0,
        data_age=age,
        sample_errors=0,
        resumed_from=None,
        replay=None,
    )


def test_run_progress_rolls_up_lag_and_data_age():
    from deploy.run.progress import RunProgress

    p = RunProgress()
    assert p.lag_summary() == {"data_age": None, "actor_policy_lag": None}
    p.on_actor(_actor_report([0, 20, 20]))
    p.on_actor(_actor_report([40]))
    assert p.take_recent_lags() == [0, 20, 20, 40] and p.take_recent_lags() == []
    p.on_learner(_learner_report(10, 100.0), 1.0)
    p.on_learner(_learner_report(30, 200.0), 2.0)
    s = p.lag_summary()
    assert s["data_age"] == pytest.approx(175.0)  # weighted by updates
    lag = s["actor_policy_lag"]
    assert lag == {**lag, "mean": 20.0, "p50": 20.0, "max": 40, "rollouts": 4}
    assert lag["p95"] == pytest.approx(37.0)


def test_console_line_and_row_name_data_age():
    from deploy.run.progress import RunProgress, progress_line

    p = RunProgress()
    p.on_actor(_actor_report([3, 5]))
    p.on_learner(_learner_report(5, 12.5), 1.0)
    out = progress_line(p, 2.0, 10.0, 2.5)
    line, row = out.text, out.fields
    assert "data age   12.5" in line and "actor lag   4.0" in line and "| lag" not in line
    assert row["data_age"] == 12.5 and row["actor_policy_lag"] == 4.0 and "policy_lag" not in row
