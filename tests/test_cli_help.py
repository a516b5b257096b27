"""Every command line of the project answers ``--help`` with its usage on stdout and exit code 0,
and writes nothing (``deploy.ops.dashboard --help`` once regenerated the dashboard JSON)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIS = [
    "deploy.train",
    "deploy.tools.evaluate",
    "deploy.tools.export",
    "deploy.tools.replay_dump",
    "deploy.ops.cluster",
    "deploy.ops.local_cluster",
    "deploy.ops.prometheus",
    "deploy.tools.metrics_png",
    "deploy.ops.dashboard",
    "benchmarks.test_repeats",
]


@pytest.mark.parametrize("module", CLIS)
def test_help_exits_zero_and_prints_usage(module, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.lower()
    assert "usage" in out or "python -m" in out or "powered by hydra" in out, proc.stdout[:500]
    assert "wrote" not in out and "error" not in proc.stderr.lower()
