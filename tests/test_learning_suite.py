"""benchmarks/learning_suite.py: every task of every suite composes into a valid run config,
and the table scores each task by its own metric."""

from __future__ import annotations

import pytest

import benchmarks.learning_suite as suite
from deploy.config import compose


@pytest.mark.parametrize("name", sorted(suite.TASKS))
def test_every_task_composes_and_validates(name):
    cfg = compose(list(suite.TASKS[name].overrides))
    cfg.validate()


def test_suites_name_known_tasks():
    for names in suite.SUITES.values():
        assert set(names) <= set(suite.TASKS)


def test_scores_follow_the_metric():
    r = suite.Result("bandit", 0, 9.0, 0.25, [0.1] * 10 + [0.7] * 10, 10, 1, 1.0)
    assert suite.score(suite.TASKS["bandit"], r) == pytest.approx(0.7)
    assert suite.solved(suite.TASKS["bandit"], r)
    r = suite.Result("dark_key_door", 0, 3.0, 0.0, [1.0, 1.0, 1.0], 10, 1, 1.0)
    assert not suite.solved(suite.TASKS["dark_key_door"], r)  # no in-context improvement
    assert "0/1" in suite.table({"dark_key_door": [r]})
    r = suite.Result("goal_grid_relabel", 0, 0.0, 0.9, [], 10, 1, 1.0)
    assert suite.solved(suite.TASKS["goal_grid_relabel"], r)
    r = suite.Result("multitask", 0, 0.9, 1.0, [], 10, 1, 1.0, by_task={"a": 1.0, "b": 0.8})
    assert suite.score(suite.TASKS["multitask"], r) == pytest.approx(0.8)  # the weakest task
    assert not suite.solved(suite.TASKS["multitask"], r)
    assert "multitask" in suite.SUITES["cpu"]


def test_a_task_with_a_versus_row_must_beat_its_median_by_a_margin():
    """The external suite's POPGym rows are scored against their memoryless ablation."""
    t = suite.TASKS["ext_PositionOnlyCartPoleEasy"]
    assert t.versus == "ext_PositionOnlyCartPoleEasy_memoryless" and t.versus in suite.TASKS
    assert "learner.model.encoder=mlp" in suite.TASKS[t.versus].overrides
    mlp = [suite.Result(t.versus, s, v, 0.0, [], 10, 1, 1.0) for s, v in enumerate([0.1, 0.3, 0.2])]
    good = suite.Result(t.name, 0, 0.26, 0.0, [], 10, 1, 1.0)
    bad = suite.Result(t.name, 1, 0.24, 0.0, [], 10, 1, 1.0)
    results = {t.name: [good, bad], t.versus: mlp}
    assert suite.solved(t, good, results) and not suite.solved(t, bad, results)
    assert not suite.solved(t, good, {t.name: [good]})  # no baseline run: not solved
    assert "1/2" in suite.table(results) and "(0.250)" in suite.table(results)
    ext = suite.SUITES["external"]
    assert sum(n.startswith("ext_") and n.endswith("_memoryless") for n in ext) >= 8
    assert {"ext_cartpole", "ext_acrobot", "ext_pendulum_plain", "ext_lunarlander"} <= set(ext)


def test_table_and_plot_rebuild_from_a_runs_output(tmp_path):
    """``--from-log``: the JSON lines a run printed give back its results (other lines
    ignored), and the table and PNG are written from them."""
    import dataclasses
    import json

    rs = [
        suite.Result("tmaze_h10", 0, 1.0, 1.0, [1.0], 17920, 1140, 21.8, [[20.1, 1.0]]),
        suite.Result("bandit", 0, 15.0, 0.0, [0.2, 0.9], 60416, 1820, 41.0, [[20.0, 15.0]]),
    ]
    log = tmp_path / "suite.log"
    log.write_text(
        "[ 7.2s] steps 512 ...\n" + "\n".join(json.dumps(dataclasses.asdict(r)) for r in rs)
    )
    back = suite.results_from_log(log)
    assert list(back) == ["tmaze_h10", "bandit"] and back["bandit"][0] == rs[1]
    suite.write(back, tmp_path / "out")
    md = (tmp_path / "out" / "learning_suite.md").read_text()
    assert "| tmaze_h10 | return: 1.000" in md and "17,920" in md
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000
