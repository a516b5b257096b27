"""A run stopped by a signal keeps its work: SIGTERM (what ``ray job stop`` and Kubernetes send)
or Ctrl-C (SIGINT to the terminal's whole process group) ends the real entrypoint with a final
checkpoint, ``summary.json`` naming the signal as ``stop_reason``, and the shell's exit code
for that signal (143 / 130), within seconds. The console lines are in ``train.log`` too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _runs import metrics_updates

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("sig, code, group", [("SIGTERM", 143, False), ("SIGINT", 130, True)])
def test_signal_stops_the_run_with_a_checkpoint_and_a_summary(tmp_path, sig, code, group):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.train",
            "experiment=tmaze",
            "run.max_env_steps=0",
            "run.max_updates=0",
            "run.max_seconds=600",  # only the signal ends it
            "run.stop_at_return=null",
            "run.log_every_s=1",
            "run.plot=false",
            "run.tracking=[]",
            "deploy.serve_metrics=false",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 240
        while metrics_updates(run) < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is not None or metrics_updates(run) < 40:  # say why, with its output
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            pytest.fail(
                f"the run never trained (exit {proc.returncode}):\n{out[-2000:]}{err[-4000:]}"
            )
        t0 = time.monotonic()
        signum = getattr(signal, sig)
        if group:  # Ctrl-C: the whole foreground process group gets SIGINT
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    print(f"{sig}: exit {proc.returncode} after {stop_s:.1f} s")
    assert proc.returncode == code, out[-2000:] + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == f"signal:{sig}"
    assert summary["updates"] >= 40
    ckpt = Path(summary["final_checkpoint"])
    assert ckpt.is_file() and ckpt.parent == run / "checkpoints"
    assert summary["final_version"] >= 40
    assert stop_s < 60
    # the console went to train.log too, each progress line with the budget used and an ETA
    log = (run / "train.log").read_text()
    assert "derived: learner.bc_weight=0.1" in log
    progress = [ln for ln in log.splitlines() if "| updates" in ln]
    assert progress and all("| budget" in ln for ln in progress), progress[-3:]
    assert "ETA" in progress[-1]  # once training started (max_seconds counts training time)
