"""The elastic fleet in a real run (slow): a tiny T-Maze training run through the real driver
(Ray, an embedded Valkey, metrics served) starts with 1 rollout actor, is grown to 3 by
`python -m deploy.ops.cluster scale 3` (a separate process connecting to the run's Ray) and shrunk
to 2 through ``deploy.run.fleet.request_scale``, with a refused request between. Checked: the
driver's ``amago_driver_actors_alive``/``_desired`` as scraped at each stage, the Prometheus
service-discovery file, and the replay against the actors' reports: every stored trajectory
has a unique insert token, the actor that left has exactly the rollouts it reported (its last
collect included), the others at least theirs (their final collect, cut short at the end, is
not reported), and the reported env steps add up to the run's. A second run joins a two-node
Ray cluster on 127.0.0.1 whose head has no CPU left for more actors: grown actors wait, and
come up on the worker node added mid-run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from common.codec import decode
from deploy.config import compose
from deploy.run.scrape import FINAL_DUMP, read_dump, scrape_all
from deploy.tools.metrics_png import SMOKE_OVERRIDES
from replay_service import EmbeddedServer, connect
from replay_service.lua import Keys
from replay_service.stats import read_stats

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUN = "elastic-test"
ENVS, STEPS = 4, 32  # per actor: envs, env steps per collect call


def _gauge(texts: dict[str, str], name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for text in texts.values():
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name:
                    return s.value
    return None


def _wait(pred, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_fleet_grows_1_3_and_shrinks_to_2_losing_nothing(tmp_path):
    import ray

    from deploy.run.fleet import request_scale
    from deploy.train import run_training

    sd_file = tmp_path / "targets.json"
    seen: dict = {}
    with EmbeddedServer() as server:
        cfg = compose(
            [
                *(o for o in SMOKE_OVERRIDES if not o.startswith(("run.max_", "actors.num_"))),
                "run.max_updates=0",
                "run.max_env_steps=0",
                "run.max_seconds=60",  # of training: the stages need ~30 s of it, more when loaded
                "run.eval_every_s=0",
                f"run.name={RUN}",
                "actors.num_actors=1",
                "actors.max_num_actors=4",
                f"actors.envs_per_actor={ENVS}",
                f"actors.steps_per_call={STEPS}",
                "replay.rate_limit.samples_per_insert=0",  # collects never wait: quick drains
                "deploy.num_cpus=4",  # logical: learner + 3 actors at 0.5 CPU each
                f"deploy.metrics_sd_file={sd_file}",
            ]
        )
        replay = dataclasses.replace(cfg.replay, redis=server.redis_config(namespace="elastic"))
        cfg = dataclasses.replace(cfg, replay=replay)
        client, keys = connect(replay.redis), Keys("elastic")

        def targets() -> list[str]:
            return json.loads(sd_file.read_text())[0]["targets"] if sd_file.exists() else []

        def gauges() -> tuple[float | None, float | None]:
            texts = scrape_all(targets())
            return (
                _gauge(texts, "amago_driver_actors_alive"),
                _gauge(texts, "amago_driver_actors_desired"),
            )

        def by_actor() -> Counter:
            return Counter(
                decode(client.get(k)).meta.actor_id
                for k in client.scan_iter(match=keys.blob_prefix + "*")
            )

        def drive() -> None:
            try:
                started = lambda: ray.is_initialized() and len(targets()) == 4  # noqa: E731
                _wait(started, "the run's targets", timeout_s=240)  # start-up: Ray, learner
                base = len(targets()) - 1  # driver, learner, evaluator (+ the one actor)
                _wait(lambda: gauges() == (1, 1) and by_actor()[0] >= 8, "stage 1")
                seen["stage1"] = (gauges(), len(targets()), round(time.monotonic() - t0, 1))
                gcs = ray.get_runtime_context().gcs_address
                cli = subprocess.run(
                    [sys.executable, "-m", "deploy.ops.cluster", "scale", "3", "--run", RUN]
                    + ["--address", gcs],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                seen["cli"] = (cli.returncode, cli.stdout, cli.stderr)
                _wait(lambda: gauges() == (3, 3), "3 actors alive")
                _wait(lambda: len(targets()) == base + 3, "3 actors listed")
                _wait(lambda: min(by_actor()[i] for i in (0, 2, 3)) >= 4, "the new actors' data")
                seen["stage2"] = (gauges(), len(targets()), round(time.monotonic() - t0, 1))
                seen["refused"] = request_scale(RUN, 5)  # above max_num_actors: no change
                seen["shrink"] = request_scale(RUN, 2)
                _wait(lambda: gauges() == (2, 2), "2 actors alive")
                _wait(lambda: len(targets()) == base + 2, "the removed actor unlisted")
                seen["stage3"] = (gauges(), len(targets()), round(time.monotonic() - t0, 1))
            except BaseException as e:  # noqa: BLE001 - reported by the assertions below
                seen["error"] = e

        t0 = time.monotonic()
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        summary = run_training(cfg, tmp_path / "run")
        driver.join(timeout=30)
        stored = [decode(client.get(k)) for k in client.scan_iter(match=keys.blob_prefix + "*")]
        info = client.hgetall(keys.info)
        stats = read_stats(client, keys)
        client.close()

    print({k: v for k, v in seen.items() if k != "error"}, summary["fleet"])
    assert "error" not in seen, seen.get("error")
    rc, out, err = seen["cli"]
    assert rc == 0 and f"run {RUN}: rollout actors 1 -> 3 (alive 1, ids [0];" in out, out + err
    assert "above actors.max_num_actors=4" in seen["refused"].error
    assert seen["refused"].state.desired == 3
    assert (seen["shrink"].error, seen["shrink"].previous) == ("", 3)

    fleet = summary["fleet"]
    assert fleet["control"] == RUN
    assert [(c["from"], c["to"]) for c in fleet["changes"]] == [(1, 3), (3, 2)]
    assert (fleet["desired"], fleet["alive"]) == (2, 2)
    actors = {a["id"]: a for a in fleet["actors"]}
    assert sorted(actors) == [0, 2, 3]  # id 1 is the evaluation actor's: never reused
    assert actors[3]["removed_s"] is not None  # the highest id left
    assert actors[0]["removed_s"] is None and actors[2]["removed_s"] is None
    assert actors[3]["up_s"] <= actors[3]["left_s"] <= actors[3]["removed_s"]

    # nothing lost, nothing duplicated
    assert len(stored) == len(info) == stats.trajectories == stats.inserted_trajectories
    tokens = [v.decode().split(" ")[2] for v in info.values()]
    assert len(set(tokens)) == len(tokens)
    count = Counter(t.meta.actor_id for t in stored)
    steps = Counter()
    for t in stored:
        steps[t.meta.actor_id] += len(t) - 1
    assert set(count) == {0, 2, 3}
    left = actors[3]
    assert left["rollouts"] > 0 and count[3] == left["rollouts"]  # its last collect too
    assert steps[3] == left["rollout_steps"]
    for i in (0, 2):  # at most the final (unreported) collect more
        assert 0 < actors[i]["rollouts"] <= count[i]
        assert count[i] - actors[i]["rollouts"] <= ENVS * STEPS
    from common.envs.factory import env_spec

    horizon = env_spec(cfg.env).max_episode_steps
    for a in actors.values():  # steps of rollouts unfinished at the last report: < a horizon
        assert a["rollout_steps"] <= a["env_steps"] <= a["rollout_steps"] + ENVS * horizon
    assert sum(a["env_steps"] for a in actors.values()) == summary["env_steps"]

    # the metrics at each stage, and in the driver's final scrape
    assert seen["stage1"][0] == (1, 1) and seen["stage2"][0] == (3, 3)
    final = read_dump(tmp_path / "run" / FINAL_DUMP)
    assert _gauge(final, "amago_driver_actors_alive") == 2
    assert _gauge(final, "amago_driver_actors_desired") == 2
    assert len(final) == seen["stage3"][1]  # the run's processes: 1 driver, learner, eval, 2


def test_actors_added_wait_for_and_then_use_a_node_that_joins(monkeypatch):
    """The run joins a Ray cluster whose head has CPUs for the learner and one actor only: a
    grow to 3 leaves the new actors pending (alive 1, desired 3) until a worker node joins;
    then they come up on that node and write rollouts."""
    import shutil
    import tempfile

    import ray
    from ray._common.utils import reset_ray_address
    from ray._private import ray_constants
    from ray._private.utils import read_ray_address, write_ray_address
    from ray.cluster_utils import Cluster

    from common.ray_utils import RAY_CLUSTER_FLAG
    from deploy.ops.local_cluster import LocalRayConfig, _node_args
    from deploy.run.fleet import request_scale
    from deploy.train import run_training

    # every node on loopback, as deploy/ops/local_cluster.py does (Ray reads both)
    monkeypatch.setenv(RAY_CLUSTER_FLAG, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    temp = tempfile.mkdtemp(prefix="/tmp/amg-")  # short: Ray's socket paths live under it
    shape = LocalRayConfig(temp_dir=temp, object_store_mb=128)
    machine_default = read_ray_address()
    cluster = Cluster(
        initialize_head=True,
        head_node_args=_node_args(shape, 2) | {"include_dashboard": False},
    )
    seen: dict = {"head": cluster.head_node.node_id}
    try:
        with EmbeddedServer() as server:
            cfg = compose(
                [
                    *(o for o in SMOKE_OVERRIDES if not o.startswith(("run.max_", "actors.num_"))),
                    "run.max_updates=0",
                    "run.max_env_steps=0",
                    "run.max_seconds=45",
                    "run.eval_every_s=0",
                    "run.final_eval_episodes=0",
                    f"run.name={RUN}-join",
                    "actors.num_actors=1",
                    "actors.num_cpus=1",  # the head's 2 CPUs: the learner and this actor
                    f"actors.envs_per_actor={ENVS}",
                    f"actors.steps_per_call={STEPS}",
                    "replay.rate_limit.samples_per_insert=0",
                    f"deploy.ray_address={cluster.address}",
                    "deploy.serve_metrics=false",
                ]
            )
            replay = dataclasses.replace(cfg.replay, redis=server.redis_config(namespace="join"))
            cfg = dataclasses.replace(cfg, replay=replay)
            client, keys = connect(replay.redis), Keys("join")

            def control():
                return ray.get_actor(f"control/{RUN}-join", namespace="amago")

            def drive() -> None:
                try:
                    _wait(lambda: ray.is_initialized() and _exists(control), "the run", 240)
                    _wait(lambda: read_stats(client, keys).inserted_trajectories >= 8, "data")
                    assert request_scale(f"{RUN}-join", 3).error == ""
                    time.sleep(8.0)  # no CPU left on the head: the new actors stay pending
                    seen["pending"] = ray.get(control().get.remote())
                    node = cluster.add_node(**_node_args(shape, 2, worker=1))
                    seen["node"] = node.node_id
                    _wait(lambda: ray.get(control().get.remote()).alive == 3, "3 actors up", 90)
                except BaseException as e:  # noqa: BLE001 - reported by the assertions below
                    seen["error"] = e

            out: dict = {}

            def train() -> None:
                try:
                    out["summary"] = run_training(cfg, Path(temp) / "run")
                except BaseException as e:  # noqa: BLE001 - reported below
                    out["error"] = e

            run = threading.Thread(target=train, daemon=True)  # the main thread adds the node
            run.start()
            drive()  # (Ray's node start-up installs signal handlers: main thread only)
            run.join(timeout=240)
            assert "error" not in out, out.get("error")
            summary = out["summary"]
            per_actor = Counter(
                decode(client.get(k)).meta.actor_id
                for k in client.scan_iter(match=keys.blob_prefix + "*")
            )
            client.close()
    finally:
        cluster.shutdown()
        if machine_default:
            write_ray_address(machine_default)
        else:
            reset_ray_address()
        shutil.rmtree(temp, ignore_errors=True)

    print(seen, summary["fleet"])
    assert "error" not in seen, seen.get("error")
    assert (seen["pending"].desired, seen["pending"].alive) == (3, 1)
    actors = {a["id"]: a for a in summary["fleet"]["actors"]}
    assert sorted(actors) == [0, 2, 3]
    assert actors[0]["node"] == seen["head"] != seen["node"]
    assert actors[2]["node"] == actors[3]["node"] == seen["node"]  # the node that joined
    assert per_actor[2] > 0 and per_actor[3] > 0  # and they wrote rollouts from there


def _exists(get_handle) -> bool:
    try:
        get_handle()
    except ValueError:
        return False
    return True
