"""Learning-curve plot of a run's metrics.jsonl (return vs env steps and vs wall time)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_learning_curve(metrics_jsonl: str | Path, out_png: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    train = [r for r in rows if r.get("return_mean") is not None]
    evals = [r for r in rows if r.get("eval_return") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], "env_steps", "env steps"), (axes[1], "time_s", "wall time (s)")):
        if train:
            ax.plot(
                [r[x] for r in train],
                [r["return_mean"] for r in train],
                label="rollout return (exploring)",
                alpha=0.6,
            )
        if evals:
            ax.plot(
                [r[x] for r in evals],
                [r["eval_return"] for r in evals],
                "o-",
                label="greedy evaluation return",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
