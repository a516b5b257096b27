"""Fault tolerance through real Ray actors and a real Valkey server: a killed rollout actor or a
restarted replay server costs at most the rollouts in progress.

- one rollout actor, killed while collecting: Ray restarts it, everything stored before the
  kill is still there, and the restarted actor goes on writing whole episodes;
- the replay server stopped and restarted (persistence on) under a collecting actor: every
  episode the actor finished is stored exactly once (inserts were retried, never dropped or
  duplicated);
- a whole T-Maze training run with every rollout process SIGKILLed and the replay server
  restarted mid-run still reaches the optimal return, and counts the restarts.

One local Ray session for the module.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _runs import descendant_pids, metrics_updates
from conftest import seed_overrides

from common.codec import decode
from common.records import Trajectory
from deploy.config import TrainConfig, compose
from replay_service import EmbeddedServer, ReplayConfig, connect
from replay_service.lua import Keys
from replay_service.stats import read_stats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import ray

    from common.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    # No rate limiter: nothing samples in the actor-level tests.
    return compose(
        [
            "experiment=tmaze",
            "actors.envs_per_actor=4",
            "replay.rate_limit.samples_per_insert=0",
            "deploy.serve_metrics=false",
        ]
    )


@pytest.fixture(scope="module")
def broker(cfg: TrainConfig):
    """A weight broker holding version 0 of a freshly initialised policy."""
    import ray

    from common.envs.factory import env_spec
    from common.weights import WeightBroker, to_numpy_state
    from learner.amago import AmagoLearner

    b = ray.remote(WeightBroker).options(num_cpus=0).remote()
    weights = AmagoLearner(env_spec(cfg.env), cfg.learner).policy_weights()
    ray.get(b.publish.remote(0, [ray.put(to_numpy_state(weights))]))
    yield b
    ray.kill(b)


def start_actor(cfg: TrainConfig, broker, replay: ReplayConfig | None):
    """Rollout actor 0 exactly as the driver starts one; an evaluation actor when ``replay``
    is None."""
    from deploy.run.builder import start_rollout_actor

    if replay is None:
        return start_rollout_actor(cfg, broker, 0, evaluation=True)
    return start_rollout_actor(dataclasses.replace(cfg, replay=replay), broker, 0)


def stored(client, keys: Keys) -> tuple[list[int], list[Trajectory]]:
    """Ids and decoded records of every trajectory in the namespace."""
    ids = sorted(int(k.rsplit(b":", 1)[1]) for k in client.scan_iter(match=keys.blob_prefix + "*"))
    return ids, [decode(client.get(keys.blob(i))) for i in ids]


def assert_whole_episodes(trajs: list[Trajectory]) -> None:
    assert trajs
    for t in trajs:
        n = len(t)
        assert t.time_idx.tolist() == list(range(n))  # starts at the reset, no gap
        assert t.terminated[-1] or t.truncated[-1]  # ends at the episode's end
        assert not (t.terminated[:-1].any() or t.truncated[:-1].any())


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def call_until_restarted(call, timeout_s: float = 120.0):
    """``ray.get(call())``, calling again while the actor is still restarting (what the
    driver does: a call made during the restart fails with ActorUnavailableError)."""
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(call(), timeout=timeout_s)
        except ActorUnavailableError:
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.5)


def test_actors_hold_at_most_the_training_window(cfg, broker):
    """An actor acting on rollouts longer than the training window (T-Maze: 12 timesteps, a
    window of 5) keeps 5 timesteps per env slot (it was the whole rollout, 12, before)."""
    import ray

    short = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, max_seq_len=5))
    actor = start_actor(short, broker, None)
    try:
        assert ray.get(actor.context_timesteps.remote()) == 5
        res = ray.get(actor.evaluate.remote(short.actors.envs_per_actor))  # past the window
        assert min(res.lengths) > 5
        assert ray.get(actor.context_timesteps.remote()) == 5
    finally:
        ray.kill(actor)


def test_overlapping_evaluations_each_get_whole_rollouts(cfg, broker):
    """The driver's final evaluation can arrive while a periodic one still runs (the actor
    has a second thread for control calls): each must get all of its own rollouts."""
    import ray

    evaluator = start_actor(cfg, broker, None)
    try:
        per_call = 2 * cfg.actors.envs_per_actor
        results = ray.get([evaluator.evaluate.remote(per_call) for _ in range(3)])
        for res in results:
            assert len(res.returns) == per_call
            assert len(res.episode_returns) == per_call
    finally:
        ray.kill(evaluator)


def test_killed_actor_restarts_and_keeps_what_it_stored(cfg, broker):
    import ray
    from ray.exceptions import RayActorError

    with EmbeddedServer() as server:
        replay = dataclasses.replace(cfg.replay, redis=server.redis_config(namespace="kill"))
        client, keys = connect(replay.redis), Keys("kill")
        actor = start_actor(cfg, broker, replay)
        first = ray.get(actor.collect.remote(64), timeout=120)
        assert len(first.returns) == read_stats(client, keys).inserted_trajectories > 0

        running = actor.collect.remote(100_000)  # killed long before it could finish
        n0 = len(first.returns)
        wait_for(lambda: read_stats(client, keys).inserted_trajectories >= n0 + 8)
        ray.kill(actor, no_restart=False)
        with pytest.raises(RayActorError):
            ray.get(running, timeout=60)
        ids_at_kill, _ = stored(client, keys)
        assert len(ids_at_kill) >= n0 + 8

        after = call_until_restarted(lambda: actor.collect.remote(64))
        assert after.incarnation != first.incarnation  # a new process
        assert after.policy_version == 0 and len(after.returns) > 0
        ids, trajs = stored(client, keys)
        assert ids[: len(ids_at_kill)] == ids_at_kill  # nothing stored before the kill lost
        assert len(ids) == len(ids_at_kill) + len(after.returns)
        assert_whole_episodes(trajs)
        ray.kill(actor)
        client.close()


def test_replay_restart_under_a_collecting_actor_loses_nothing(cfg, broker, tmp_path):
    import ray

    with EmbeddedServer(data_dir=tmp_path / "valkey") as server:
        replay = dataclasses.replace(
            cfg.replay, redis=server.redis_config(namespace="outage", retries=0)
        )
        client, keys = connect(replay.redis), Keys("outage")
        actor = start_actor(cfg, broker, replay)
        running = actor.collect.remote(3_000)  # ~10 s: the outage falls inside it
        wait_for(lambda: read_stats(client, keys).inserted_trajectories >= 8)
        server.stop()
        time.sleep(2.0)  # the actor finishes episodes meanwhile: their inserts must wait
        server.start()
        res = ray.get(running, timeout=240)
        assert res.insert_retries > 0  # the outage was really hit
        ids, trajs = stored(client, keys)
        # every episode the actor finished is stored exactly once, in one id range
        assert len(ids) == len(res.returns) == read_stats(client, keys).trajectories
        assert ids == list(range(len(ids)))
        assert_whole_episodes(trajs)
        ray.kill(actor)
        client.close()


def _pids(actor_class: str) -> list[int]:
    """Processes of live actors of one class (Ray titles them ``ray::<class>``) in this
    test's Ray session: workers are children of the raylet, a child of this process."""
    title = f"ray::{actor_class}".encode()
    return descendant_pids(lambda cmdline: cmdline.startswith(title), depth=2)


def _train_under_faults(cfg: TrainConfig, run_dir: Path, inject) -> tuple[dict, dict]:
    """``run_training`` while ``inject(faults)`` runs on a thread; (summary, faults), where an
    exception of ``inject`` is kept as ``faults["error"]`` for the test's assertions."""
    from deploy.train import run_training

    faults: dict = {}

    def guarded() -> None:
        try:
            inject(faults)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions
            faults["error"] = e

    injector = threading.Thread(target=guarded, daemon=True)
    injector.start()
    summary = run_training(cfg, run_dir)
    injector.join(timeout=60)
    return summary, faults


def test_training_survives_killed_actors_learner_and_a_replay_restart(
    tmp_path, learning_seed, figure
):
    """T-Maze through the real driver: every rollout process (actors and the evaluator)
    SIGKILLed, the replay server restarted, and the learner SIGKILLed once it has written a
    checkpoint, all mid-run; it still solves the task, the learner resuming from the
    checkpoint. Budget 12,000 updates (it stops when solved); max_seconds a hang guard.
    10 repeats: 10/10, final return 1.0."""
    from learner.checkpoint import latest_checkpoint

    faults: dict = {}
    with EmbeddedServer(data_dir=tmp_path / "valkey") as server:
        cfg = compose(
            [
                "experiment=tmaze",
                "run.max_updates=12000",
                "run.max_env_steps=0",
                "run.max_seconds=600",
                *seed_overrides(learning_seed),
                "run.eval_every_s=15",
                "run.plot=false",
                "deploy.serve_metrics=false",
                "learner.worker.checkpoint_every_min=0.1",
            ]
        )
        replay = dataclasses.replace(cfg.replay, redis=server.redis_config(namespace="e2e"))
        cfg = dataclasses.replace(cfg, replay=replay)
        client, keys = connect(replay.redis), Keys("e2e")

        def inject(faults: dict) -> None:
            wait_for(lambda: read_stats(client, keys).inserted_trajectories >= 300, 180)
            pids = _pids("RolloutActor")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            faults["killed"] = len(pids)
            time.sleep(3.0)
            server.stop()
            time.sleep(2.0)
            server.start()
            faults["restarted"] = read_stats(client, keys).trajectories
            wait_for(lambda: latest_checkpoint(str(tmp_path / "run")) is not None, 120)
            faults["checkpoint"] = latest_checkpoint(str(tmp_path / "run"))
            (learner_pid,) = _pids("LearnerActor")
            os.kill(learner_pid, signal.SIGKILL)

        summary, faults = _train_under_faults(cfg, tmp_path / "run", inject)
        client.close()
    keys_shown = ("env_steps", "updates", "actor_restarts", "learner_restarts")
    print({k: summary[k] for k in keys_shown}, summary["learner_resumed_from"], faults)
    assert "error" not in faults and faults["killed"] == cfg.actors.num_actors + 1
    assert faults["restarted"] >= 300  # the replay came back with its data
    assert summary["actor_restarts"] >= cfg.actors.num_actors
    assert summary["learner_restarts"] == 1
    # the restarted learner went on from a checkpoint of this run, not from scratch
    resumed = summary["learner_resumed_from"]
    assert resumed and Path(resumed).parent == Path(faults["checkpoint"]).parent
    assert Path(resumed).name >= Path(faults["checkpoint"]).name
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.95)


def test_a_learner_killed_in_its_first_minute_resumes_from_a_checkpoint(tmp_path):
    """Default checkpoint settings (no ``checkpoint_every_min`` override): the learner writes
    a checkpoint ``checkpoint_first_after`` (200) updates after it starts, so SIGKILLing it
    within its first minute costs only the updates since then; Ray restarts it and it resumes
    from that checkpoint instead of from scratch."""
    from learner.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    cfg = compose(
        [
            "experiment=tmaze",
            "run.max_updates=700",
            "run.max_env_steps=0",
            "run.max_seconds=900",
            "run.stop_at_return=null",
            "run.final_eval_episodes=0",
            "run.plot=false",
            "run.tracking=[]",
            "deploy.serve_metrics=false",
        ]
    )
    assert cfg.learner.worker.checkpoint_every_min >= 10

    def inject(faults: dict) -> None:
        t0 = time.monotonic()
        wait_for(lambda: latest_checkpoint(str(run)) is not None, 120)
        faults["checkpoint"] = latest_checkpoint(str(run))
        faults["after_s"] = time.monotonic() - t0
        (learner_pid,) = _pids("LearnerActor")
        os.kill(learner_pid, signal.SIGKILL)

    summary, faults = _train_under_faults(cfg, run, inject)
    print(faults, summary["learner_restarts"], summary["learner_resumed_from"])
    assert "error" not in faults  # (after_s: ~15 s on a quiet 2-core machine, 60 s loaded)
    assert summary["learner_restarts"] == 1
    resumed = summary["learner_resumed_from"]
    assert resumed and Path(resumed).parent == run / "checkpoints"
    assert Path(resumed).name >= Path(faults["checkpoint"]).name  # not from scratch
    first = int(Path(faults["checkpoint"]).stem.split("_")[1])
    assert 200 <= first <= 300 and summary["final_version"] >= first + 300  # it trained on
    assert summary["stop_reason"] == "max_updates"
    # the summary counts the updates behind the final weights; the discarded ones apart
    (resume,) = summary["learner_resumes"]
    assert resume["resumed_from"] == resumed and resume["version"] == int(
        Path(resumed).stem.split("_")[1]
    )
    assert summary["updates_discarded"] == resume["discarded_updates"] >= 0
    assert summary["updates"] <= summary["final_version"]


def _valkey_children() -> list[int]:
    """Embedded Valkey servers started by this process (the run's replay)."""
    # Valkey retitles itself: "<path> host:port"
    return descendant_pids(lambda cmdline: b"/valkey-server" in cmdline, depth=1)


def test_a_killed_replay_server_is_restarted_and_the_run_still_learns(tmp_path, figure):
    """The embedded Valkey SIGKILLed mid-run (no persistence: the replay comes back empty):
    the driver restarts it on its port within about a second, says so on the console and in
    summary.json, actors and learner carry on against it, and T-Maze is still solved."""

    run = tmp_path / "run"
    cfg = compose(
        [
            "experiment=tmaze",
            "run.max_updates=12000",
            "run.max_env_steps=0",
            "run.max_seconds=1500",
            "run.plot=false",
            "run.tracking=[]",
            "deploy.serve_metrics=false",
        ]
    )

    def inject(faults: dict) -> None:
        wait_for(lambda: metrics_updates(run) >= 300, 300)
        (pid,) = _valkey_children()
        os.kill(pid, signal.SIGKILL)
        faults["killed"] = pid

    summary, faults = _train_under_faults(cfg, run, inject)
    watch = summary["replay_server_restarts"]
    print(faults, watch, {k: summary[k] for k in ("updates", "env_steps", "stop_reason")})
    assert "error" not in faults and faults["killed"]
    assert watch["restarts"] == 1 and watch["fatal"] is None
    assert watch["outages"][0]["back_after_s"] < 10
    assert "replay server 0 died: restarted" in (run / "train.log").read_text()
    assert summary["stop_reason"] == "solved"
    figure("final_eval_return", summary["final_eval_return"], ">=", 0.95)
