"""The elastic fleet's pure parts (deploy/fleet.py, the `scale` CLI arguments): size
validation, the control's answers, the resize plan over tasks, the grown actors' exploration
schedule and the config bounds. The fleet resized in a real run: tests/test_elastic.py."""

from __future__ import annotations

import numpy as np
import pytest

from actors.config import ExplorationConfig
from actors.exploration import Exploration
from common.config_utils import ConfigError
from deploy.cluster import parse_args, scale_size
from deploy.config import compose, prepare
from deploy.fleet import FleetControl, FleetSizeError, check_size, control_name, plan_resize


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
    from deploy.cluster import main

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
