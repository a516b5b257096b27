"""The elastic fleet's pure parts (deploy/run/fleet.py, the `scale` CLI arguments): size
validation, the control's answers, the resize plan over tasks, the grown actors' exploration
schedule and the config bounds. The fleet resized in a real run: tests/test_elastic.py."""

from __future__ import annotations

import numpy as np
import pytest

from actors.config import ExplorationConfig
from actors.exploration import Exploration
from common.config_utils import ConfigError
from deploy.config import compose, prepare
from deploy.ops.cluster import parse_args, scale_size
from deploy.run.fleet import FleetControl, FleetSizeError, check_size, control_name, plan_resize


@pytest.mark.parametrize(
    ("n", "low", "high", "words"),
    [
        (0, 1, 8, "below 1 (at least one rollout actor)"),
        (1, 2, 8, "below 2 (one rollout actor per task)"),
        (9, 1, 8, "above actors.max_num_actors=8"),
        ("3", 1, 8, "must be an integer, got '3'"),
        (True, 1, 8, "must be an integer, got True"),
        (2.0, 1, 8, "must be an integer, got 2.0"),
    ],
)
def test_bad_sizes_are_refused_in_one_line(n, low, high, words):
    with pytest.raises(FleetSizeError) as e:
        check_size(n, low, high)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_good_sizes_pass():
    assert [check_size(n, 2, 5) for n in (2, 3, 5)] == [2, 3, 5]


def test_control_sets_refuses_and_reports():
    c = FleetControl(desired=1, low=1, high=4)
    ok = c.set_desired(3)
    assert (ok.error, ok.previous, ok.state.desired) == ("", 1, 3)
    bad = c.set_desired(5)  # refused: nothing changes
    assert "above actors.max_num_actors=4" in bad.error
    assert bad.previous == 3 and c.get().desired == 3
    c.report(2, [0, 2])
    s = c.get()
    assert (s.desired, s.alive, s.actor_ids, s.low, s.high) == (3, 2, (0, 2), 1, 4)
    assert c.set_desired(2).state.alive == 2  # what the driver reported is kept
    with pytest.raises(FleetSizeError):
        FleetControl(desired=0, low=1, high=4)
    assert control_name("tmaze") == "control/tmaze"


def test_single_task_plan_grows_and_retires_the_highest_ids():
    assert plan_resize([(0, 0)], 3, []) == ([0, 0], [])
    assert plan_resize([(0, 0), (2, 0), (3, 0)], 2, []) == ([], [3])
    assert plan_resize([(0, 0), (2, 0), (3, 0)], 1, []) == ([], [2, 3])
    assert plan_resize([(0, 0), (2, 0)], 2, []) == ([], [])


def test_multi_task_plan_keeps_the_split_of_a_run_started_that_size():
    # weights 1:1, started with 2 actors (one per task: ids 0, 1)
    active = [(0, 0), (1, 1)]
    add, remove = plan_resize(active, 4, [1.0, 1.0])
    assert (add, remove) == ([0, 1], [])
    active += [(4, 0), (5, 1)]
    # back to 3: assign_tasks(3) = [0, 0, 1]; task 1 loses its highest id
    assert plan_resize(active, 3, [1.0, 1.0]) == ([], [5])
    # weights 3:1 from 2 actors to 4: assign_tasks(4) = [0, 0, 0, 1]
    assert plan_resize([(0, 0), (1, 1)], 4, [3.0, 1.0]) == ([0, 0], [])


def test_grown_actors_repeat_the_exploration_spread():
    cfg = ExplorationConfig(end_min=0.01, end_max=0.3)
    ends = [Exploration(cfg, i, 3, True, 2, np.random.default_rng(0)).end for i in range(7)]
    assert ends[0] == pytest.approx(0.01) and ends[2] == pytest.approx(0.3)
    assert ends[3:6] == ends[0:3] and ends[6] == ends[0]  # id 3 explores like id 0, ...
    assert max(ends) <= 0.3  # never past end_max


def test_scale_cli_arguments():
    command, _, args = parse_args(["scale", "3", "--run", "tmaze"])
    assert (command, args.run, args.address, scale_size(args.overrides)) == (
        "scale",
        "tmaze",
        "",
        3,
    )
    _, _, args = parse_args(["scale", "2", "--address", "127.0.0.1:6379"])
    assert (args.run, args.address) == ("amago", "127.0.0.1:6379")
    for values, words in (
        ([], "one fleet size N, got 0"),
        (["1", "2"], "got 2 values"),
        (["x"], "must be an integer, got 'x'"),
        (["0"], "must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=words):
            scale_size(values)


def test_scale_cli_errors_in_one_line(capsys, tmp_path):
    from deploy.ops.cluster import main

    assert main(["scale", "0", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: scale N: N must be >= 1, got 0\n"
    assert main(["scale", "2", "--state-dir", str(tmp_path)]) == 1  # no cluster there
    err = capsys.readouterr().err
    assert err.startswith("error: no local cluster in ") and err.count("\n") == 1


def test_fleet_bound_is_checked_at_start_up():
    cfg = compose(["actors.num_actors=4", "actors.max_num_actors=3"])
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.field == "actors.max_num_actors" and "num_actors (4)" in str(e.value)
    cfg = compose(["actors.drain_timeout_s=0"])
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.field == "actors.drain_timeout_s"


# -- the driver side, with stand-ins for the supervisor and the actor handles -----------------
class _Call:
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def remote(self, *args):
        self.log.append(self.name)
        return f"ref-{self.name}-{len(self.log)}"


class _Handle:
    def __init__(self, i: int):
        self.calls: list[str] = []
        self.id = i
        for name in ("collect", "stop", "ping"):
            setattr(self, name, _Call(self.calls, name))


class _Sup:
    """The Supervisor calls the fleet makes, recorded; ``busy`` = ids with a call in flight."""

    def __init__(self):
        self.added, self.retired, self.removed, self.called = [], [], [], []
        self.busy: set[int] = set()

    def add(self, kind, i, call, rule):
        self.added.append(i)

    def call(self, kind, i=0):
        self.called.append(i)

    def retire(self, kind, i):
        self.retired.append(i)

    def remove(self, kind, i):
        self.removed.append(i)

    def in_flight(self, kind, i=0):
        return i in self.busy


class _Metrics:
    def __init__(self):
        self.values: dict[str, float] = {}

    def set(self, name, value, **labels):
        self.values[name] = value


class _Discovery:
    """Endpoints by actor id; what the fleet publishes goes to ``listed``."""

    def __init__(self, listed: list):
        self.listed = listed

    def node_of(self, handle) -> str:
        return ""

    def address_of(self, handle) -> str:
        return f"127.0.0.1:{9000 + handle.id}"

    def publish(self, actor_addresses: list[str]) -> None:
        self.listed.append(actor_addresses)


def test_fleet_drains_the_leaving_actor_then_kills_it(monkeypatch):
    import ray

    from deploy.run.fleet import Fleet, FleetSetup

    killed, listed, made = [], [], []
    monkeypatch.setattr(ray, "kill", lambda h: killed.append(h.id))
    now = [10.0]

    def make(i, task):
        made.append((i, task))
        return _Handle(i)

    setup = FleetSetup(
        make_actor=make,
        weights=[],
        task_names=[],
        first_new_id=4,  # ids 0-2 rollout actors, 3 the evaluator
        low=1,
        high=6,
        drain_timeout_s=5.0,
        discovery=_Discovery(listed),
    )
    sup, metrics = _Sup(), _Metrics()
    fleet = Fleet(
        setup, sup, metrics, [_Handle(i) for i in range(3)], [0, 0, 0], clock=lambda: now[0]
    )
    assert sup.added == [0, 1, 2] and fleet.alive() == 3
    assert metrics.values == {"amago_driver_actors_alive": 3, "amago_driver_actors_desired": 3}

    sup.busy = {2}  # actor 2's collect is still running
    fleet.resize(2)
    assert sup.retired == [2] and fleet.alive() == 2 and fleet.desired == 2
    assert metrics.values["amago_driver_actors_alive"] == 2
    fleet.step()
    assert killed == [] and listed == []  # waits for the collect in flight
    now[0] += 6.0  # past actors.drain_timeout_s: told to stop, still not killed
    fleet.step()
    leaving = fleet.members[2].handle
    assert leaving.calls == ["stop"] and killed == []
    fleet.step()
    assert leaving.calls == ["stop"]  # once
    sup.busy = set()  # its collect returned (the driver counted its report)
    fleet.on_report(2, type("R", (), {"env_steps": 64, "lengths": [12, 12]})())
    fleet.step()
    assert killed == [2] and sup.removed == [2]
    assert listed == [["127.0.0.1:9000", "127.0.0.1:9001"]]  # the sd file loses it
    assert len(fleet.handles()) == 2

    fleet.resize(4)  # new ids after the evaluator's, never 2 again
    assert made == [(4, 0), (5, 0)] and sup.called[-2:] == [4, 5]
    assert fleet.alive() == 2 and metrics.values["amago_driver_actors_desired"] == 4
    assert all(fleet.members[i].handle.calls == ["ping"] for i in (4, 5))
    s = fleet.summary()
    assert [c["to"] for c in s["changes"]] == [2, 4]
    gone = next(a for a in s["actors"] if a["id"] == 2)
    assert (gone["rollouts"], gone["rollout_steps"], gone["env_steps"]) == (2, 22, 64)
    assert (gone["left_s"], gone["removed_s"]) == (10.0, 16.0)
    with pytest.raises(FleetSizeError):
        fleet.resize(7)
