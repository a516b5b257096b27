"""Experiment tracking: every ``metrics.jsonl`` row of a run also goes to its trackers.

``run.tracking`` lists the backends (default ``[tensorboard]``; ``[]`` = none):

* ``tensorboard``: event files in the run directory (``tensorboard --logdir runs/``), one
  scalar per row field, and the resolved config as hparams (the HPARAMS tab compares runs,
  e.g. the jobs of a sweep). Needs the ``tensorboard`` package (a dependency).
* ``wandb``: a Weights & Biases run under ``<run_dir>/wandb``, offline unless ``WANDB_MODE``
  says otherwise (``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later); project
  ``WANDB_PROJECT`` or ``amago-ray``. Extra ``amago-ray[tracking]``.
* ``mlflow``: an MLflow run in a file store under ``<run_dir>/mlruns`` (``mlflow ui
  --backend-store-uri <run_dir>/mlruns``), or wherever ``MLFLOW_TRACKING_URI`` points;
  experiment ``run.name``, params = the resolved config. Extra ``amago-ray[tracking]``.

A row becomes scalars at step ``env_steps``: every numeric, finite field but the step itself
(``bool`` flags and ``None``/NaN values are left out), named ``<group>/<field>`` (:func:`tag`:
``charts/`` returns and evaluations, ``losses/``, ``learner/``, ``replay/``, ``actors/``),
without the fields that carry no curve (:data:`DROPPED`: the run clock, constants of the batch
shape or the fleet's target, the learner's own step counter, a duplicate); the final
evaluation's row (``final: true``) is logged with its fields prefixed ``final_``. Secrets (any ``*password*`` field, the
user part of URLs) never reach a tracker. :func:`check_backends` is what start-up validation
runs: an unknown name or a backend whose package is missing fails in one line naming
``run.tracking``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from deploy.config import BACKENDS, check_backends  # noqa: F401  (the backends' table)

log = logging.getLogger("amago.tracking")

#: The tags TensorBoard's HPARAMS tab shows next to each run's config.
HPARAM_METRICS = (
    "charts/eval_return",
    "charts/return_mean",
    "charts/final_eval_return",
    "charts/final_eval_success",
)
STEP_FIELD = "env_steps"
#: Row fields no tracker gets: the wall clock (``time_s``), the update count (the step axis
#: is env steps; ``learner/updates_per_s`` has the rate), the learner's step counter,
#: constants of the batch shape and the fleet's target, and ``filter_frac_main`` (the same
#: as ``filter_frac`` with one discount).
DROPPED = frozenset(
    {"time_s", "updates", "step", "seq_timesteps", "valid_timesteps", "actors_desired"}
    | {"filter_frac_main"}
)
_GROUPS = {
    "charts": ("return_mean", "eval_return", "eval_success"),
    "replay": ("replay_timesteps", "data_age"),
    "actors": ("env_steps_per_s", "actor_policy_lag", "actors_alive"),
}

Scalar = int | float | str | bool


class Tracker(Protocol):
    """One tracking backend of a run."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def tag(field: str) -> str:
    """The tracker name of a row field: ``<group>/<field>`` (a task suffix kept:
    ``charts/eval_return/tmaze4``); the learner's loss terms under ``losses/``, its other
    statistics under ``learner/``."""
    base = field.split("/", 1)[0].removeprefix("final_")
    for group, names in _GROUPS.items():
        if base in names:
            return f"{group}/{field}"
    return f"losses/{field}" if base == "loss" or base.endswith("_loss") else f"learner/{field}"


def row_scalars(row: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, scalars) of one metrics.jsonl row (the rules in the module docstring)."""
    step = int(row.get(STEP_FIELD) or 0)
    prefix = "final_" if row.get("final") is True else ""
    out = {}
    for k, v in row.items():
        if k == STEP_FIELD or k in DROPPED or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[tag(prefix + k)] = float(v)
    return step, out


_URL_USER = re.compile(r"(://)[^/@]*@")


def flat_config(cfg: Any) -> dict[str, Scalar]:
    """The config as ``dotted.key -> int | float | str | bool`` (lists and None as JSON text),
    without secrets. ``cfg``: a config dataclass or a nested mapping."""
    if dataclasses.is_dataclass(cfg):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    out: dict[str, Scalar] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            if not node and prefix:
                out[prefix] = "{}"
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if "password" in prefix.rsplit(".", 1)[-1].lower():
            return
        if isinstance(node, str):
            out[prefix] = _URL_USER.sub(r"\1", node)
        elif isinstance(node, (bool, int, float)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node, default=str)

    walk("", cfg)
    return out


class TensorBoardTracker:
    """Scalars and hparams as TensorBoard event files in ``log_dir``."""

    def __init__(
        self,
        log_dir: str | Path,
        hparams: Mapping[str, Scalar] | None = None,
        metrics: Iterable[str] = HPARAM_METRICS,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._end = None
        if hparams:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            exp, start, end = hparams_summary(dict(hparams), {m: 0.0 for m in metrics})
            writer = self.writer._get_file_writer()
            writer.add_summary(exp)
            writer.add_summary(start)
            self._end = end  # the session's end: written by close()
        self.writer.flush()

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        now = time.time()
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, global_step=step, walltime=now)

    def close(self) -> None:
        if self._end is not None:
            self.writer._get_file_writer().add_summary(self._end)
            self._end = None
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run in ``run_dir/wandb`` (offline unless ``WANDB_MODE`` is set)."""

    def __init__(self, run_dir: str | Path, name: str, config: Mapping[str, Scalar]):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "amago-ray",
            name=name,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE") or "offline",
            config=dict(config),
            reinit="finish_previous",  # sweeps: several runs in one process
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run: experiment ``experiment``, params = ``config``; a file store at
    ``store_dir`` unless ``MLFLOW_TRACKING_URI`` is set."""

    #: MLflow's per-request caps (log_batch)
    PARAMS_PER_BATCH, METRICS_PER_BATCH, PARAM_CHARS = 100, 1000, 500

    def __init__(
        self, store_dir: str | Path, experiment: str, name: str, config: Mapping[str, Scalar]
    ):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path(store_dir).resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: a run's own store is the point here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        params = [Param(k, str(v)[: self.PARAM_CHARS]) for k, v in config.items()]
        for i in range(0, len(params), self.PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + self.PARAMS_PER_BATCH])

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(k, v, ms, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), self.METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.METRICS_PER_BATCH])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_trackers(cfg: Any, run_dir: str | Path) -> list[Tracker]:
    """The trackers ``cfg.run.tracking`` names, writing into ``run_dir``."""
    names = list(cfg.run.tracking)
    if not names:
        return []
    problem = check_backends(names)
    if problem:
        from common.config_utils import ConfigError

        raise ConfigError("run.tracking", problem)
    run_dir = Path(run_dir)
    config = flat_config(cfg)
    out: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                out.append(TensorBoardTracker(run_dir, config))
            elif name == "wandb":
                out.append(WandbTracker(run_dir, f"{cfg.run.name}-{run_dir.name}", config))
            elif name == "mlflow":
                out.append(MlflowTracker(run_dir / "mlruns", cfg.run.name, run_dir.name, config))
    except BaseException:
        TrackerSet(out).close()
        raise
    return out


class TrackerSet:
    """The run's trackers behind one ``log_row``: a tracker that raises is warned about once
    and dropped (tracking never fails a run)."""

    def __init__(self, trackers: Iterable[Tracker] = ()):
        self.trackers = list(trackers)

    def log_row(self, row: Mapping[str, Any]) -> None:
        if not self.trackers:
            return
        step, scalars = row_scalars(row)
        if scalars:
            self._each("log", step, scalars)

    def close(self) -> None:
        self._each("close")
        self.trackers = []

    def _each(self, method: str, *args) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:
                log.warning("tracker %s failed in %s (%r); dropped", type(t).__name__, method, e)
                self.trackers.remove(t)


#: The run directory's console log (Hydra's log goes there too).
CONSOLE_LOG = "train.log"


def console(run_dir: str | Path, text: str) -> None:
    """A console line, also appended to ``<run dir>/train.log``."""
    print(text, flush=True)
    with open(Path(run_dir) / CONSOLE_LOG, "a") as f:
        f.write(text + "\n")


class RunLog:
    """A run's record: ``metrics.jsonl`` rows (each also sent to the run's trackers) stamped
    with the run clock (``time_s``), and console lines (also in ``train.log``)."""

    def __init__(
        self, run_dir: str | Path, trackers: Iterable[Tracker] = (), t0: float | None = None
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.file = self.path.open("a", buffering=1)
        self.console = (self.run_dir / CONSOLE_LOG).open("a", buffering=1)
        self.trackers = TrackerSet(trackers)
        self.t0 = time.monotonic() if t0 is None else t0  # the run's clock (time_s) starts
        self._pending: Future | None = None

    def start_trackers(self, make: Callable[[], list[Tracker]]) -> None:
        """Start the trackers on a thread (TensorBoard's writer imports torch: ~1 s) while
        the run starts its processes; :meth:`adopt_trackers` takes them."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="trackers")
        self._pending = pool.submit(make)
        pool.shutdown(wait=False)

    def adopt_trackers(self) -> None:
        """Log to the trackers :meth:`start_trackers` made (one that failed raises here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.trackers = TrackerSet(pending.result())

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.console.write(text + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def row(self, **fields) -> dict:
        fields = {"time_s": round(self.elapsed(), 3), **fields}
        self.file.write(json.dumps(fields) + "\n")
        self.trackers.log_row(fields)
        return fields

    def close(self) -> None:
        self.file.close()
        self.console.close()
        if self._pending is not None:  # started, never adopted: close what was made
            with contextlib.suppress(Exception):
                self.trackers = TrackerSet(self._pending.result())
        self.trackers.close()
