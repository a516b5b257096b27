"""How often each learning test passes: every `slow` learning test run N times, each with its
own seed, and the figure it asserts summarised.

    python -m benchmarks.test_repeats [--tests NODEID|ALIAS ...] [--repeats 10] [--first-seed 0]
        [--jsonl FILE] [--from-jsonl FILE ...]

Each repeat is its own ``pytest`` process running one test with ``AMAGO_TEST_SEED=<seed>`` (the
tests seed their runs' learner and actors from it; CI runs seed 0) and ``AMAGO_TEST_FIGURES``
pointing at a file where the test's ``figure`` fixture (``tests/conftest.py``) appends what it
asserted: name, value, comparison and bar, before asserting it. A repeat passes when pytest
exits 0. One JSON line per repeat goes to ``--jsonl`` as it finishes (so a long run can be read
while it goes on, or several runs merged with ``--from-jsonl``), then the table: per test and
figure the pass rate, the figure's min / median / max next to its bar, and the time per repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: Every test that asserts a learning outcome (a return, success rate or adaptation reached by
#: training), by a short alias.
LEARNING_TESTS = {
    "tmaze": "tests/test_learning.py::test_tmaze_reaches_the_optimal_return",
    "tmaze_ddp": "tests/test_learning.py::test_tmaze_with_two_data_parallel_learners",
    "bandit": "tests/test_learning.py::test_meta_bandit_explores_in_context",
    "hindsight": "tests/test_learning.py::test_hindsight_relabeling_solves_the_sparse_goal_task",
    "popgym": "tests/test_learning.py::test_popgym_repeat_previous_learns_through_a_sliding_window",
    "multitask": "tests/test_learning.py::test_two_tmazes_in_one_run",
    "minigrid": "tests/test_learning.py::test_minigrid_learns_from_pixels_with_the_plain_env_id",
    "prefill": "tests/test_learning_prefill.py::"
    "test_prefilled_scripted_tmaze_alone_learns_through_the_distributed_path",
    "byo_env": "tests/test_byo_env.py::test_own_module_env_learns_with_the_generic_defaults",
    "export": "tests/test_export.py::test_exported_policy_of_a_trained_run_reaches_its_return",
    "offline_transformer": "tests/test_learner_offline.py::"
    "test_offline_tmaze_sequence_model_learns_memory[transformer]",
    "offline_gru": "tests/test_learner_offline.py::"
    "test_offline_tmaze_sequence_model_learns_memory[gru]",
    "offline_amago2": "tests/test_learner_offline.py::test_offline_tmaze_amago2_learns_memory",
    "offline_memoryless": "tests/test_learner_offline.py::test_offline_tmaze_memoryless_fails",
    "fault_tolerance": "tests/test_fault_tolerance.py::"
    "test_training_survives_killed_actors_learner_and_a_replay_restart",
}


def run_one(nodeid: str, seed: int, timeout_s: float) -> dict:
    """One repeat: ``pytest nodeid`` with the seed; its figures, exit code and time."""
    with tempfile.TemporaryDirectory(prefix="amago_repeat_") as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "AMAGO_TEST_SEED": str(seed), "AMAGO_TEST_FIGURES": str(figures)}
        cmd = [sys.executable, "-m", "pytest", nodeid, "-q", "-p", "no:cacheprovider"]
        cmd += ["-o", "addopts=", f"--basetemp={tmp}/pytest"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
            )
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            rc, tail = -1, f"timed out after {timeout_s} s"
        seconds = time.monotonic() - t0
        rows = (
            [json.loads(line) for line in figures.read_text().splitlines()]
            if figures.exists()
            else []
        )
    return {
        "test": nodeid,
        "seed": seed,
        "passed": rc == 0,
        "rc": rc,
        "seconds": round(seconds, 1),
        "figures": [{k: r[k] for k in r if k not in ("test", "seed")} for r in rows],
        "tail": "" if rc == 0 else tail,
    }


def table(results: list[dict]) -> str:
    """Per test and asserted figure: pass rate, min / median / max against the bar, time."""
    by_test: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_test[r["test"]].append(r)
    alias = {v: k for k, v in LEARNING_TESTS.items()}
    head = (
        f"{'test':<20} {'passed':>7} {'figure':<26} {'bar':>9} {'min':>8} {'median':>8} "
        f"{'max':>8} {'s/run (median, max)':>20}"
    )
    lines = [head, "-" * len(head)]
    for test, runs in by_test.items():
        name = alias.get(test, test.split("::")[-1][:20])
        passed = f"{sum(r['passed'] for r in runs)}/{len(runs)}"
        secs = np.array([r["seconds"] for r in runs])
        timing = f"{np.median(secs):8.0f} {secs.max():8.0f}"
        figs: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            for f in r["figures"]:
                figs[f["figure"]].append(f)
        if not figs:
            lines.append(f"{name:<20} {passed:>7} {'(no figure recorded)':<26} {'':>36} {timing}")
        for fig, rows in figs.items():
            vals = np.array([f["value"] for f in rows if f["value"] is not None], float)
            bar = f"{rows[0]['op']} {rows[0]['bar']:g}"
            stats = (
                f"{vals.min():8.3f} {np.median(vals):8.3f} {vals.max():8.3f}"
                if len(vals)
                else f"{'-':>8} {'-':>8} {'-':>8}"
            )
            lines.append(f"{name:<20} {passed:>7} {fig:<26} {bar:>9} {stats} {timing}")
            name, passed, timing = "", "", ""
    failed = [r for r in results if not r["passed"]]
    for r in failed:
        lines.append(f"FAILED {r['test']} seed {r['seed']} (rc {r['rc']}): {r['tail'][-400:]}")
    return "\n".join(lines)


def markdown(results: list[dict]) -> str:
    """The same summary as a Markdown table (for docs/learning_tests.md)."""
    alias = {v: k for k, v in LEARNING_TESTS.items()}
    by_test: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_test[r["test"]].append(r)
    lines = [
        "| test | repeats passed | figure | bar | min | median | max | s/repeat (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for test, runs in by_test.items():
        secs = float(np.median([r["seconds"] for r in runs]))
        passed = f"{sum(r['passed'] for r in runs)}/{len(runs)}"
        figs: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            for f in r["figures"]:
                figs[f["figure"]].append(f)
        for fig, rows in figs.items():
            v = np.array([f["value"] for f in rows], float)
            lines.append(
                f"| {alias.get(test, test)} | {passed} | {fig} | {rows[0]['op']} {rows[0]['bar']:g} "
                f"| {v.min():.3f} | {np.median(v):.3f} | {v.max():.3f} | {secs:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tests", nargs="*", default=list(LEARNING_TESTS), help="aliases or node ids")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=1200.0, help="per repeat")
    ap.add_argument("--jsonl", help="append one JSON line per repeat here")
    ap.add_argument("--from-jsonl", nargs="*", help="only print the table of earlier runs")
    ap.add_argument("--markdown", action="store_true", help="with --from-jsonl: Markdown")
    args = ap.parse_args(argv)
    if args.from_jsonl:
        results = [
            json.loads(line) for p in args.from_jsonl for line in Path(p).read_text().splitlines()
        ]
        print(markdown(results) if args.markdown else table(results))
        return 0
    tests = [LEARNING_TESTS.get(t, t) for t in args.tests]
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    results = []
    for nodeid in tests:
        for seed in range(args.first_seed, args.first_seed + args.repeats):
            r = run_one(nodeid, seed, args.timeout_s)
            results.append(r)
            figs = ", ".join(f"{f['figure']}={f['value']}" for f in r["figures"])
            ok = "pass" if r["passed"] else "FAIL"
            print(f"{ok} {nodeid.split('::')[-1]} seed {seed}: {r['seconds']} s {figs}", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
