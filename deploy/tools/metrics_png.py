"""``make metrics-png``: the dashboard's key panels for a short real training run, as a real
Prometheus recorded them, rendered to PNG (``docs/metrics.png``).

A Prometheus on 127.0.0.1 (1 s scrapes) watches ``deploy.metrics_sd_dir``; a training run
(``python -m deploy.train``, a child process) lists its processes there; afterwards the panels'
own PromQL (deploy/ops/dashboard.py, Grafana variables substituted) is evaluated over the run with
``query_range`` and plotted with matplotlib.

    python -m deploy.tools.metrics_png --out docs/metrics.png [hydra overrides...]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.net import free_port
from deploy.ops.dashboard import Panel, concrete_expr, panels
from deploy.ops.prometheus import PrometheusClient, PrometheusConfig, PrometheusServer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OVERRIDES = ("run.max_seconds=150", "run.eval_every_s=10", "run.log_every_s=5")
# A run of a few seconds that still exercises every component (tests): its budget is in
# learner updates, so the learner has reported before it ends.
SMOKE_OVERRIDES = (
    "run.max_env_steps=0",
    "run.max_updates=200",
    "run.max_seconds=240",
    "run.updates_per_call=10",
    "run.eval_every_s=2",
    "run.eval_episodes=8",
    "run.final_eval_episodes=8",
    "run.log_every_s=1",
    "run.plot=false",
    "actors.num_actors=2",
    "replay.rate_limit.min_size_steps=300",
)


@dataclass
class RecordedRun:
    """A finished training run and the Prometheus that scraped it (still running)."""

    prometheus: PrometheusClient
    run_name: str  # the `run` label of its series
    start: float  # unix time the run was started
    end: float  # unix time it ended
    run_dir: Path
    summary: dict
    scrape_interval_s: float

    def rate_interval(self) -> str:
        """What Grafana's $__rate_interval is for this scrape interval (4 scrapes)."""
        return f"{max(4 * self.scrape_interval_s, 4.0):.0f}s"


@contextmanager
def recorded_run(
    workdir: str | Path,
    overrides: list[str],
    scrape_interval_s: float = 1.0,
    timeout_s: float = 900.0,
) -> Iterator[RecordedRun]:
    """Run ``python -m deploy.train <overrides>`` under a Prometheus; yield the result while
    that Prometheus still serves queries (it stops when the context exits)."""
    workdir = Path(workdir)
    targets, runs = workdir / "targets", workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    targets.mkdir(parents=True, exist_ok=True)
    cfg = PrometheusConfig(listen=f"127.0.0.1:{free_port()}", scrape_interval_s=scrape_interval_s)
    with PrometheusServer(
        workdir / "prometheus", {"amago": [str(targets / "*.json")]}, cfg
    ) as prom:
        cmd = [
            sys.executable,
            "-m",
            "deploy.train",
            *overrides,
            f"deploy.metrics_sd_dir={targets}",
            f"run.out_dir={runs}",
        ]
        start = time.time()
        with (workdir / "train.log").open("w") as log:
            res = subprocess.run(
                cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        end = time.time()
        if res.returncode != 0:
            tail = (workdir / "train.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"training run failed (exit {res.returncode}):\n{tail}")
        summary_file = next(runs.glob("*/*/summary.json"))
        summary = json.loads(summary_file.read_text())
        run_name = summary_file.parent.parent.name
        yield RecordedRun(
            prom.client, run_name, start, end, summary_file.parent, summary, scrape_interval_s
        )


def panel_series(
    run: RecordedRun, panel: Panel, step_s: float = 2.0
) -> list[tuple[str, list[float], list[float]]]:
    """``(legend, t since start, values)`` of every series of ``panel``'s queries."""
    out = []
    for q in panel.queries:
        expr = concrete_expr(q.expr, run=run.run_name, rate_interval=run.rate_interval())
        for s in run.prometheus.query_range(expr, run.start, run.end + 2 * step_s, step_s):
            legend = q.legend or expr
            for k, v in s["metric"].items():
                legend = legend.replace("{{" + k + "}}", v)
            ts = [float(t) - run.start for t, _ in s["values"]]
            vs = [float(v) for _, v in s["values"]]
            out.append((legend, ts, vs))
    return out


def render_png(run: RecordedRun, out: str | Path, only_key: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [p for p in panels() if p.key or not only_key]
    cols = 4
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, chosen):
        for legend, ts, vs in panel_series(run, panel):
            ax.plot(ts, vs, label=legend, linewidth=1.2)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("seconds since start", fontsize=8)
        if panel.unit == "bytes":
            ax.set_ylabel("bytes", fontsize=8)
        elif panel.unit == "s":
            ax.set_ylabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    s = run.summary
    fig.suptitle(
        f"amago-ray, {s.get('env_id')}: {s.get('env_steps'):,} env steps, "
        f"{s.get('updates'):,} updates in {s.get('train_seconds', 0):.0f} s "
        f"(Prometheus, {run.scrape_interval_s:g} s scrapes; 2-core CPU)",
        fontsize=11,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "metrics.png"))
    p.add_argument("--workdir", default=str(REPO / ".state" / "metrics-png"))
    p.add_argument("--scrape-interval-s", type=float, default=1.0)
    p.add_argument("overrides", nargs="*", help=f"Hydra overrides (default: {DEFAULT_OVERRIDES})")
    a = p.parse_args(argv)
    overrides = a.overrides or list(DEFAULT_OVERRIDES)
    print(f"training with {overrides} under Prometheus (log: {a.workdir}/train.log)", flush=True)
    with recorded_run(a.workdir, overrides, a.scrape_interval_s) as run:
        out = render_png(run, a.out)
    print(f"wrote {out} (run directory {run.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
