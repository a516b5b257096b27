"""Multi-task runs (``env.tasks``), the fast parts: config validation and the one-line refusal
of tasks whose spaces differ, the deterministic spread of rollout actors over tasks, the task
every rollout carries into replay, task-balanced sampling (``replay.task_sampling``) on
fakeredis and Valkey, per-task evaluation rounds and their stop rule. The learning test over
two tasks is ``tests/test_learning.py::test_two_tmazes_in_one_run``."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest

from common.config_utils import ConfigError
from common.envs.config import EnvConfig, TaskConfig
from common.reports import EvalReport
from deploy.config import TrainConfig, assign_tasks, compose, eval_env_configs, prepare
from replay_service import RedisConfig, ReplayConfig, ReplayStore, Sampler, SampleShape
from replay_service.lua import task_token, token_task

TWO_MAZES = "env.tasks=[{name:short,kwargs:{corridor_length:4}},{name:long,weight:2,kwargs:{corridor_length:8}}]"


def _cfg(*tasks: TaskConfig, **env) -> TrainConfig:
    cfg = TrainConfig()
    cfg.env = EnvConfig(tasks=list(tasks), **env)
    return cfg


# -- config ----------------------------------------------------------------------------------


def test_tasks_resolve_against_the_env_section():
    env = EnvConfig(
        kwargs={"corridor_length": 5},
        tasks=[
            TaskConfig(kwargs={"render_mode": None}),
            TaskConfig(name="bandit", id="amago/MetaBandit-v0", weight=3),
        ],
    )
    a, b = env.task_list()
    assert (a.name, a.env.id, a.env.kwargs) == (
        "task0",
        "amago/TMaze-v0",
        {"corridor_length": 5, "render_mode": None},
    )
    assert (b.name, b.env.id, b.env.kwargs, b.weight) == ("bandit", "amago/MetaBandit-v0", {}, 3.0)
    single = EnvConfig()
    assert a.env.tasks == [] and not single.multi_task
    assert [(t.name, t.env, t.weight) for t in single.task_list()] == [("", single, 1.0)]


@pytest.mark.parametrize(
    "tasks, field, words",
    [
        (
            [TaskConfig(name="a"), TaskConfig(name="a")],
            "tasks[1].name",
            "also the name of tasks[0]",
        ),
        ([TaskConfig(name="has space")], "tasks[0].name", "must match"),
        ([TaskConfig(name="x~y")], "tasks[0].name", "must match"),
        ([TaskConfig(weight=0)], "tasks[0].weight", "> 0"),
        ([TaskConfig(weight=float("nan"))], "tasks[0].weight", "> 0"),
        ([TaskConfig(id="Nope-v0")], "tasks[0].id", "unknown environment id"),
        ([TaskConfig(kwargs={"max_episode_steps": 3})], "tasks[0].kwargs", "env.max_episode_steps"),
    ],
)
def test_bad_tasks_are_refused_naming_the_field(tasks, field, words):
    with pytest.raises(ConfigError) as e:
        EnvConfig(tasks=tasks).validate()
    assert e.value.field == field and words in str(e.value)


def test_tasks_with_different_spaces_are_refused_naming_both():
    cfg = _cfg(TaskConfig(name="maze"), TaskConfig(name="bandit", id="amago/MetaBandit-v0"))
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert e.value.field == "env.tasks" and "\n" not in msg
    assert "tasks 'maze' and 'bandit' have different spaces" in msg
    assert "observations" in msg and "actions" in msg


def test_fewer_actors_than_tasks_is_refused():
    tasks = ",".join(f"{{name:t{i},kwargs:{{corridor_length:{3 + i}}}}}" for i in range(3))
    cfg = compose(["experiment=tmaze", f"env.tasks=[{tasks}]", "actors.num_actors=2"])
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.field == "actors.num_actors" and "3 tasks" in str(e.value)


def test_prepare_takes_the_longest_horizon_and_checks_eval_overrides():
    cfg = compose(["experiment=tmaze", TWO_MAZES, "learner.max_seq_len=0"])
    run, spec, derived = prepare(cfg)
    assert spec.max_episode_steps == 9  # corridor 8 + 1
    assert run.learner.max_seq_len == 10
    assert [e.kwargs["corridor_length"] for e in eval_env_configs(run)] == [4, 8]
    run.run.eval_env = {"kwargs": {"corridor_length": 6}}
    assert [e.kwargs["corridor_length"] for e in eval_env_configs(run)] == [6, 6]


def test_spaces_mismatch_fails_the_entrypoint_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.train",
            "env.tasks=[{name:maze},{name:bandit,id:amago/MetaBandit-v0}]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: config field 'env.tasks': tasks 'maze' and 'bandit'")
    assert not (tmp_path / "run" / "config.yaml").exists()


# -- actors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, n, want",
    [
        ([1, 1], 2, [0, 1]),
        ([1, 2], 3, [0, 1, 1]),
        ([3, 1], 5, [0, 0, 0, 0, 1]),
        ([1, 1, 1], 4, [0, 0, 1, 2]),
        ([100, 1, 1], 3, [0, 1, 2]),  # everyone gets one
        ([100, 1, 1], 6, [0, 0, 0, 0, 1, 2]),
        ([0.5, 0.5], 7, [0, 0, 0, 0, 1, 1, 1]),
        ([], 4, []),
    ],
)
def test_actor_assignment_is_proportional_and_covers_every_task(weights, n, want):
    got = assign_tasks(weights, n)
    assert got == want == assign_tasks(weights, n)
    assert set(got) == set(range(len(weights)))
    with pytest.raises(ValueError):
        assign_tasks([1, 1, 1], 2)


def test_rollouts_carry_their_task():
    from actors.rollout import RolloutLoop
    from common.envs.factory import env_spec, make_env

    env = EnvConfig(kwargs={"corridor_length": 3})
    spec = env_spec(env)

    class Right:
        version = 0

        def reset(self, slots):
            pass

        def act(self, inp, slots, greedy=False):
            return np.zeros(len(slots), np.int64)

    got = []
    loop = RolloutLoop([make_env(env, seed=0)], spec, Right(), got.append, None, task="short")
    loop.run(10)
    assert got and all(t.meta.info["task"] == "short" for t in got)
    plain = []
    RolloutLoop([make_env(env, seed=0)], spec, Right(), plain.append, None).run(10)
    assert plain and all("task" not in t.meta.info for t in plain)


# -- replay ----------------------------------------------------------------------------------


def test_task_tags_are_one_to_one():
    assert task_token("abc", "maze") == "maze~abc" and token_task("maze~abc") == "maze"
    assert task_token("abc", None) == "abc" and token_task("abc") == ""
    assert task_token("a~b", None) == "~a~b" and token_task("~a~b") == ""
    assert task_token("abc", "bad name") == "abc"  # not a task name: untagged
    pairs = [("a", "x"), ("x~a", None), ("~x~a", None), ("a", None), ("x~a", "y")]
    assert len({task_token(t, k) for t, k in pairs}) == len(pairs)


@pytest.fixture
def make_cfg(redis_backend, client):
    made: list[ReplayConfig] = []

    def make(**kw) -> ReplayConfig:
        ns = f"mt{uuid.uuid4().hex[:12]}"
        cfg = ReplayConfig(redis=RedisConfig(url=redis_backend.url, namespace=ns), **kw)
        made.append(cfg)
        return cfg

    yield make
    for cfg in made:  # clearing a namespace needs only its server (no limiter, no shape)
        ReplayStore(client, ReplayConfig(redis=cfg.redis)).clear()


#: What the learner samples: 24 windows of at most 8 timesteps.
W8 = SampleShape(batch_size=24, max_seq_len=8)


def _tagged(make_trajectory, n: int, tag: int, task: str | None):
    t = make_trajectory(n, tag=tag, version={"big": 1, "small": 2, None: 3}[task])
    if task is not None:
        t.meta.info["task"] = task
    return t


def _task_shares(sampler: Sampler, draws: int) -> dict[int, float]:
    versions = np.concatenate([sampler.sample(64).policy_version for _ in range(draws)])
    vals, counts = np.unique(versions, return_counts=True)
    return {int(v): c / len(versions) for v, c in zip(vals, counts)}


@pytest.mark.parametrize("mode", ["uniform", "length"])
def test_sampling_over_tasks_balances_tasks_over_data_follows_the_data(
    client, make_cfg, make_trajectory, mode
):
    """Task "big" holds 9x the trajectories of "small": uniform over data samples it ~90% of
    the time, uniform over tasks ~50% (whatever the within-task mode)."""
    cfg = make_cfg(max_traj_steps=50, sampling=mode)
    store = ReplayStore(client, cfg)
    for i in range(45):
        store.insert(_tagged(make_trajectory, 10, i, "big"))
    for i in range(5):
        store.insert(_tagged(make_trajectory, 10, 100 + i, "small"))
    over_data = _task_shares(Sampler(client, cfg, W8, seed=1), 30)
    assert abs(over_data[1] - 0.9) < 0.05, over_data
    tasks_cfg = make_cfg(max_traj_steps=50, sampling=mode)
    tasks_cfg.redis = cfg.redis  # the same data
    tasks_cfg.task_sampling = "uniform_over_tasks"
    sampler = Sampler(client, tasks_cfg, W8, seed=1)
    over_tasks = _task_shares(sampler, 30)
    assert abs(over_tasks[1] - 0.5) < 0.05 and abs(over_tasks[2] - 0.5) < 0.05, over_tasks
    assert sampler.task_counts() == {"big": 45, "small": 5}


def test_task_sampling_keeps_the_hardening_and_follows_eviction(client, make_cfg, make_trajectory):
    """Untagged records are one more task; a corrupt tagged record is skipped and counted,
    never raised; evicted tasks leave the draw."""
    cfg = make_cfg(max_traj_steps=10, max_steps=200, task_sampling="uniform_over_tasks")
    store = ReplayStore(client, cfg)
    for i in range(6):
        store.insert(_tagged(make_trajectory, 10, i, "big"))
    bad = store.insert(_tagged(make_trajectory, 10, 50, "small"))
    store.insert(_tagged(make_trajectory, 10, 51, "small"))
    for i in range(3):
        store.insert(_tagged(make_trajectory, 10, 60 + i, None))
    client.set(store.keys.blob(bad), b"\x93rotten")
    sampler = Sampler(client, cfg, W8, seed=0)
    shares = _task_shares(sampler, 20)
    assert set(shares) == {1, 2, 3} and all(abs(s - 1 / 3) < 0.06 for s in shares.values())
    assert sum(store.stats().corrupt.values()) >= 1
    assert sampler.task_counts() == {"big": 6, "small": 1, "": 3}
    for i in range(20):  # 200 timesteps of "big": every older record is evicted
        store.insert(_tagged(make_trajectory, 10, 200 + i, "big"))
    assert set(_task_shares(sampler, 5)) == {1}
    assert sampler.task_counts() == {"big": 20}


def test_bytes_inserts_are_tagged_too(client, make_cfg, make_trajectory):
    from common.codec import encode

    cfg = make_cfg(max_traj_steps=50, task_sampling="uniform_over_tasks")
    store = ReplayStore(client, cfg)
    store.insert(encode(_tagged(make_trajectory, 10, 1, "small")), token="tok~1")
    assert store.insert(encode(_tagged(make_trajectory, 10, 1, "small")), token="tok~1") == 0
    sampler = Sampler(client, cfg, W8, seed=0)
    sampler.sample(4)
    assert sampler.task_counts() == {"small": 1}


def test_task_sampling_is_validated():
    with pytest.raises(ConfigError) as e:
        ReplayConfig(task_sampling="tasks").validate()
    assert e.value.field == "task_sampling"


# -- driver ----------------------------------------------------------------------------------


def _report(task: str, ret: float) -> EvalReport:
    return EvalReport("i", 0, [ret], [0.0], [5], [[ret]], task=task)


def test_evaluation_rounds_and_per_task_stop():
    from deploy.run.progress import RunProgress, task_thresholds

    cfg = _cfg(
        TaskConfig(name="a", stop_at_return=0.9),
        TaskConfig(name="b", kwargs={"corridor_length": 4}),
    )
    assert task_thresholds(cfg) == {"a": 0.9}
    cfg.run.stop_at_return = 0.5
    thr = task_thresholds(cfg)
    assert thr == {"a": 0.9, "b": 0.5}
    p = RunProgress(tasks=["a", "b"], thresholds=thr)
    assert p.on_eval(_report("a", 1.0), 1.0) is None  # waits for b
    row = p.on_eval(_report("b", 0.4), 2.0)
    assert row["by_task"] == {"a": 1.0, "b": 0.4} and row["return"] == pytest.approx(0.7)
    assert p.solved is None
    p.start_round()
    p.on_eval(_report("b", 0.6), 3.0)
    p.start_round()  # a new round: b's result of the unfinished one is void
    assert p.on_eval(_report("a", 0.95), 4.0) is None
    p.on_eval(_report("b", 0.6), 5.0)
    assert p.solved is not None and p.solved["time_s"] == 5.0
    assert len(p.evals) == 2


# -- actors and evaluation, in-process ---------------------------------------------------------


class _FakeRemote:
    """Stands in for ``ray.remote``: ``.options(...).remote(setup, broker)`` -> the setup."""

    def __init__(self, cls):
        pass

    def options(self, **_):
        return self

    def remote(self, setup, broker):
        return setup


class _NoWeights:
    def __init__(self, *_):
        pass

    def wait(self, policy):
        pass

    def poll(self, policy):
        pass

    def refresh(self, policy):
        pass

    def learner_version(self, policy):
        return policy.version


class _Writer:
    def __init__(self):
        self.got = []

    def insert(self, traj, token=None):
        self.got.append(traj)
        return len(self.got) - 1

    def flush(self, force=False):
        return 0


def test_task_actors_step_their_task_and_label_what_they_report(monkeypatch):
    """The builder hands a task's actor that task's env (and spec) and its name; the actor
    writes it into every rollout, its report and its return metric's ``task`` label; the
    task's evaluation actor evaluates that task."""
    import dataclasses

    import ray

    import actors.worker
    import deploy.run.builder

    monkeypatch.setattr(ray, "remote", _FakeRemote)
    monkeypatch.setattr(actors.worker, "WeightClient", _NoWeights)
    over = ["experiment=multitask", "deploy.serve_metrics=false", "actors.envs_per_actor=2"]
    cfg, spec, _ = prepare(compose(over))
    short, long_ = cfg.env.task_list()
    setup = deploy.run.builder.start_rollout_actor(cfg, None, 1, spec=spec, task=long_)
    assert setup.task == "tmaze8" and setup.spec.max_episode_steps == 9
    assert setup.make_env(0).unwrapped.H == 8
    writer = _Writer()
    actor = actors.worker.RolloutActor(dataclasses.replace(setup, make_writer=lambda: writer), None)
    report = actor.collect(steps=40)
    assert report.task == "tmaze8" and report.returns
    assert writer.got and all(t.meta.info["task"] == "tmaze8" for t in writer.got)
    ret = actor.metrics.registry.get_sample_value(
        "amago_actor_episode_return", {"actor": "1", "task": "tmaze8"}
    )
    assert ret is not None
    ev_setup = deploy.run.builder.start_rollout_actor(
        cfg, None, 2, evaluation=True, spec=spec, task=short
    )
    evaluator = actors.worker.RolloutActor(ev_setup, None)
    assert [env.unwrapped.H for env in evaluator.loop.envs] == [4, 4]
    assert evaluator.evaluate(2).task == "tmaze4"


def test_deploy_evaluate_reports_every_task(tmp_path, capsys):
    from test_export import make_run

    from deploy.tools.evaluate import evaluate, format_result
    from deploy.tools.export import UsageError

    run = tmp_path / "run"
    make_run(run, "experiment=multitask")
    res = evaluate([str(run), "episodes=4"])
    assert set(res["by_task"]) == {"tmaze4", "tmaze8"} and res["episodes"] == 8
    assert [r["env"]["kwargs"]["corridor_length"] for r in res["by_task"].values()] == [4, 8]
    means = [r["return_mean"] for r in res["by_task"].values()]
    assert res["return_mean"] == pytest.approx(np.mean(means))
    text = format_result(res)
    assert "task tmaze4:" in text and "mean return over 2 tasks" in text
    one = evaluate([str(run), "episodes=4", "task=tmaze8"])
    assert list(one["by_task"]) == ["tmaze8"]
    with pytest.raises(UsageError, match="the run's tasks are"):
        evaluate([str(run), "task=nope"])
