"""Hydra multirun through the real entrypoint: ``python -m deploy.train -m learner.lr=A,B ...``
runs one job after another, each with its own Ray and embedded Valkey, each in its own run
directory under the configured sweep directory, and leaves no process behind.

The sweep runs under a small wrapper that makes itself the child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``): whatever the sweep starts and orphans (raylet, GCS, Valkey,
wandb's service...) is re-parented to the wrapper instead of init, so the wrapper sees exactly
this sweep's leftovers, unaffected by anything else running on the machine. It waits a few
seconds for them to exit, then kills and reports any that did not.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.config import compose, prepare, resolve_environment
from deploy.tools.metrics_png import SMOKE_OVERRIDES

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the subreaper wrapper is Linux-only"
)

REPO = Path(__file__).resolve().parent.parent

#: The smoke run (deploy/tools/metrics_png.py), shorter: 20 updates, no metrics endpoints.
TINY = [
    *(o for o in SMOKE_OVERRIDES if not o.startswith(("run.max_updates=", "run.max_seconds="))),
    "run.max_updates=20",
    "run.max_seconds=120",
    "deploy.serve_metrics=false",
]

#: Run argv[1:] as the subreaper's child; then print one JSON line {rc, left: [...]}.
REAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
with open(os.environ["SWEEP_LOG"], "wb") as out:
    rc = subprocess.call(sys.argv[1:], stdout=out, stderr=subprocess.STDOUT)

def procs():
    # pid -> (ppid, state, name) of every process, from /proc/<pid>/stat
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            out[int(d.name)] = (int(ppid), state, name)
    return out

def alive():
    while True:  # reap orphans that exited (they are our children now)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    table, mine, found = procs(), {os.getpid()}, True
    while found:
        found = False
        for pid, (ppid, state, _) in table.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                found = True
    mine.discard(os.getpid())
    return {pid: table[pid][2] for pid in mine if table[pid][1] not in "ZX"}

deadline = time.monotonic() + float(os.environ.get("GRACE_S", "15"))
while alive() and time.monotonic() < deadline:
    time.sleep(0.2)
left = []
for pid, name in alive().items():
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
        os.kill(pid, signal.SIGKILL)
    except OSError:
        continue
    left.append({"pid": pid, "name": name, "cmdline": cmdline})
print(json.dumps({"rc": rc, "left": left}))
"""


def run_reaped(cmd: list[str], log: Path, timeout_s: float, grace_s: float = 15.0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", REAPER, *cmd],
        cwd=REPO,
        env={**_env(), "SWEEP_LOG": str(log), "GRACE_S": str(grace_s)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    return {**env, "WANDB_SILENT": "true"}


def _backends() -> list[str]:
    """TensorBoard always; wandb and MLflow too where the tracking extra is installed."""
    return ["tensorboard"] + [m for m in ("wandb", "mlflow") if importlib.util.find_spec(m)]


def _hparams(run_dir: Path) -> tuple[dict, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}, ea


#: The README's sweep commands (no `$ ` prompt: tests/test_readme.py composes those whole).
README_SWEEPS = re.findall(
    r"^python -m deploy\.train -m (.+)$", (REPO / "README.md").read_text(), re.M
)


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of every job a multirun command line makes (Hydra's own override parser;
    an Optuna ``interval(a,b)`` gives its two ends); the sweeper's ``hydra...`` settings are
    left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    axes = []
    for o in OverridesParser.create().parse_overrides(args):
        if o.key_or_group.startswith("hydra"):
            continue
        value = o.value()
        if isinstance(value, IntervalSweep):
            values = [str(value.start), str(value.end)]
        elif o.is_sweep_override():
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        axes.append([f"{o.get_key_element()}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def test_readme_sweep_commands_compose_job_by_job():
    assert len(README_SWEEPS) >= 3 and any("hydra/sweeper=optuna" in c for c in README_SWEEPS)
    for line in README_SWEEPS:
        jobs = sweep_jobs(shlex.split(line))
        assert len(jobs) >= 2, line
        for job in jobs:
            prepare(resolve_environment(compose(job)))


def test_the_wrapper_sees_what_a_command_leaves_running(tmp_path):
    """The check can fail: a command that orphans a daemon is caught (and the daemon ended)."""
    res = run_reaped(
        ["bash", "-c", "setsid sleep 300 & echo started"], tmp_path / "log", 30, grace_s=1
    )
    assert res["rc"] == 0 and (tmp_path / "log").read_text().strip() == "started"
    assert [p["name"] for p in res["left"]] == ["sleep"]
    assert run_reaped(["true"], tmp_path / "log2", 30) == {"rc": 0, "left": []}


@pytest.mark.slow
def test_multirun_runs_jobs_one_after_another_and_leaves_nothing(tmp_path):
    backends = _backends()
    cmd = [
        sys.executable,
        "-m",
        "deploy.train",
        "-m",
        "learner.lr=1e-3,3e-4",
        *TINY,
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=sweeptest",
        f"run.tracking=[{','.join(backends)}]",
    ]
    log = tmp_path / "sweep.log"
    res = run_reaped(cmd, log, timeout_s=540)
    out = log.read_text()
    assert res["rc"] == 0, out[-4000:]
    assert res["left"] == [], f"processes left running after the sweep: {res['left']}"

    # the configured sweep dir: <out_dir>/<name>/multirun/<time>/<job number>
    (sweep_dir,) = (tmp_path / "runs" / "sweeptest" / "multirun").iterdir()
    sweep = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    assert sweep["hydra"]["mode"] == "MULTIRUN"
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]

    # one after another, each with its own Ray and its own embedded Valkey
    assert out.count("Started a local Ray instance") == 2, out[-4000:]
    starts = [out.index(f"#{i} : learner.lr=") for i in range(2)]
    ends = [out.index(f"run directory: {j}") for j in jobs]
    assert starts[0] < ends[0] < starts[1] < ends[1]
    urls = set()
    for job, lr in zip(jobs, (1e-3, 3e-4)):
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        assert cfg["learner"]["lr"] == lr and cfg["run"]["tracking"] == backends
        summary = json.loads((job / "summary.json").read_text())
        assert summary["updates"] >= 20 and summary["run_dir"] == str(job)
        assert (job / "metrics.jsonl").read_text().strip()
        # the tracking of each job: its config as hparams and its metrics rows as scalars
        hp, ea = _hparams(job)
        assert hp["learner.lr"] == pytest.approx(lr) and hp["run.name"] == "sweeptest"
        assert hp["replay.redis.url"].startswith("redis://127.0.0.1:")  # the job's embedded server
        urls.add(hp["replay.redis.url"])
        tags = set(ea.Tags()["scalars"])
        assert {"charts/return_mean", "learner/updates_per_s", "charts/final_eval_return"} <= tags
        if "wandb" in backends:
            assert list(job.glob("wandb/offline-run-*/run-*.wandb"))
        if "mlflow" in backends:
            assert list(job.glob("mlruns/*/*/meta.yaml"))
    assert len(urls) == 2, urls  # a server per job (free ports: different ones)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="Optuna sweeper plugin not installed: pip install 'amago-ray[sweep]'",
)
def test_optuna_sweeper_maximises_the_final_return(tmp_path):
    """hydra/sweeper=optuna: trials through the same entrypoint; the objective is what
    ``deploy.train`` returns (the final greedy evaluation return)."""
    cmd = [
        sys.executable,
        "-m",
        "deploy.train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.seed=0",
        "learner.lr=interval(1e-4,1e-3)",
        *TINY,
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=optunatest",
        "run.tracking=[]",
    ]
    log = tmp_path / "sweep.log"
    res = run_reaped(cmd, log, timeout_s=540)
    out = log.read_text()
    assert res["rc"] == 0, out[-4000:]
    assert res["left"] == [], res["left"]
    (sweep_dir,) = (tmp_path / "runs" / "optunatest" / "multirun").iterdir()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    returns = [
        json.loads((sweep_dir / j / "summary.json").read_text())["final_eval_return"]
        for j in ("0", "1")
    ]
    assert best["best_value"] == pytest.approx(max(returns))
    assert 1e-4 <= best["best_params"]["learner.lr"] <= 1e-3
