"""Helpers of the end-to-end tests that watch a training run from outside: its progress
(``metrics.jsonl``) and the processes it started (``/proc``, Linux)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def metrics_updates(run: Path) -> int:
    """The highest learner update count in the run's ``metrics.jsonl`` (0 before it exists)."""
    path = run / "metrics.jsonl"
    rows = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(r).get("updates", 0) for r in rows), default=0)


def _parent(pid: int) -> int:
    """The parent process id of ``pid`` (from ``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendant_pids(matches: Callable[[bytes], bool], depth: int = 1) -> list[int]:
    """Live processes whose command line (``/proc/<pid>/cmdline``, raw) ``matches`` and whose
    ``depth``-th ancestor is this process (1: its children, 2: its grandchildren, ...)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if matches((p / "cmdline").read_bytes()):
                    ancestor = int(p.name)
                    for _ in range(depth):
                        ancestor = _parent(ancestor)
                    if ancestor == os.getpid():
                        pids.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids
