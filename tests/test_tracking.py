"""Experiment tracking (deploy/run/tracking.py): metrics.jsonl rows fanned out to TensorBoard (read
back with TensorBoard's own EventAccumulator: scalars and hparams), wandb (offline: its run file
read back) and MLflow (its file store read back with MlflowClient); ``run.tracking`` validated
at start-up in one line. Rows here are a fake stream shaped like the ones RunLog writes; the
real entrypoint's TensorBoard files are checked by tests/test_sweeps.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config_utils import ConfigError
from deploy.config import compose, prepare
from deploy.run.tracking import (
    MlflowTracker,
    RunLog,
    TensorBoardTracker,
    TrackerSet,
    WandbTracker,
    check_backends,
    flat_config,
    make_trackers,
    row_scalars,
)

REPO = Path(__file__).resolve().parent.parent

#: rows as RunLog writes them: progress (learner means + driver fields), periodic eval, final
ROWS = [
    {"time_s": 1.0, "env_steps": 512, "updates": 0, "return_mean": -0.8, "replay_timesteps": None},
    {"time_s": 1.5, "env_steps": 512, "updates": 0, "eval_return": float("nan")},
    {"time_s": 2.0, "loss": 3.5, "grad_norm": 9.0, "env_steps": 2048, "updates": 10,
     "return_mean": -0.5, "data_age": 2.0},
    {"time_s": 3.0, "env_steps": 4096, "updates": 20, "eval_return": 0.25, "eval_success": None},
    {"time_s": 4.0, "env_steps": 4096, "updates": 20, "eval_return": 0.75, "final": True},
]  # fmt: skip

CONFIG = {"learner.lr": 3e-4, "env.id": "amago/TMaze-v0", "run.plot": False, "actors.n": 2}


class Recorder:
    def __init__(self):
        self.logged, self.closed = [], False

    def log(self, step, scalars):
        self.logged.append((step, dict(scalars)))

    def close(self):
        self.closed = True


def test_row_scalars_rules():
    assert row_scalars(ROWS[0]) == (512, {"charts/return_mean": -0.8})  # clock, count dropped
    assert row_scalars(ROWS[1]) == (512, {})  # NaN left out
    assert row_scalars(ROWS[2])[1] == {
        "losses/loss": 3.5,
        "learner/grad_norm": 9.0,
        "charts/return_mean": -0.5,
        "replay/data_age": 2.0,
    }
    step, final = row_scalars(ROWS[4])
    assert step == 4096 and final == {"charts/final_eval_return": 0.75}  # the flag is no scalar


def test_tags_are_grouped_and_constants_dropped():
    row = {"env_steps": 10, "time_s": 1.0, "updates": 4, "step": 4.0, "seq_timesteps": 288}
    row.update(valid_timesteps=288, actors_desired=2, filter_frac_main=0.3, filter_frac=0.3)
    row.update({"critic_loss": 1.0, "bc_loss": 0.5, "eval_return/tmaze4": 1.0, "lr": 3e-4})
    row.update(env_steps_per_s=500.0, actor_policy_lag=3.0, actors_alive=2, replay_timesteps=9)
    assert row_scalars(row)[1] == {
        "learner/filter_frac": 0.3,
        "losses/critic_loss": 1.0,
        "losses/bc_loss": 0.5,
        "charts/eval_return/tmaze4": 1.0,
        "learner/lr": 3e-4,
        "actors/env_steps_per_s": 500.0,
        "actors/actor_policy_lag": 3.0,
        "actors/actors_alive": 2.0,
        "replay/replay_timesteps": 9.0,
    }


def test_flat_config_is_dotted_and_secret_free():
    cfg = compose(
        [
            "replay.redis.url=redis://user:hunter2@127.0.0.1:6379/0",
            "replay.redis.password=hunter2",
            "learner.lr=1e-3",
        ]
    )
    flat = flat_config(cfg)
    assert flat["learner.lr"] == 1e-3 and flat["env.id"] == cfg.env.id
    assert flat["run.tracking"] == '["tensorboard"]'
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert "hunter2" not in json.dumps(flat)
    assert flat["replay.redis.url"] == "redis://127.0.0.1:6379/0"
    assert not any("password" in k.rsplit(".", 1)[-1] for k in flat)


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return ea


def _hparams(ea) -> tuple[dict, list[str], bool]:
    """(hparams of the session, the metric tags the experiment declares, session ended)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    data = {t: plugin_data_pb2.HParamsPluginData.FromString(c) for t, c in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info
    exp = data["_hparams_/experiment"].experiment
    hp = {}
    for k, v in start.hparams.items():
        kind = v.WhichOneof("kind")
        hp[k] = getattr(v, kind)
    return hp, [m.name.tag for m in exp.metric_infos], "_hparams_/session_end_info" in data


def test_tensorboard_scalars_and_hparams_read_back(tmp_path):
    runlog = RunLog(tmp_path, [TensorBoardTracker(tmp_path, CONFIG)])
    for row in ROWS:
        runlog.row(**{k: v for k, v in row.items() if k != "time_s"})
    runlog.close()
    ea = _events(tmp_path)
    scalars = set(ea.Tags()["scalars"])
    assert {
        "charts/return_mean",
        "charts/eval_return",
        "losses/loss",
        "learner/grad_norm",
        "charts/final_eval_return",
    } <= scalars
    assert not {"env_steps", "final", "time_s", "updates"} & {t.split("/")[-1] for t in scalars}
    assert [(e.step, e.value) for e in ea.Scalars("charts/return_mean")] == [
        (512, pytest.approx(-0.8)),
        (2048, pytest.approx(-0.5)),
    ]
    assert [(e.step, e.value) for e in ea.Scalars("charts/eval_return")] == [(4096, 0.25)]
    assert [(e.step, e.value) for e in ea.Scalars("charts/final_eval_return")] == [(4096, 0.75)]
    hp, metric_tags, ended = _hparams(ea)
    assert hp["learner.lr"] == pytest.approx(3e-4) and hp["env.id"] == "amago/TMaze-v0"
    assert hp["actors.n"] == 2 and hp["run.plot"] in (False, 0.0)
    assert {"charts/eval_return", "charts/final_eval_return"} <= set(metric_tags) and ended
    # metrics.jsonl still holds every row as written
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(ROWS) and json.loads(lines[-1])["final"] is True


def test_make_trackers_from_the_run_config(tmp_path):
    cfg = compose(["learner.lr=1e-3"])
    (tb,) = make_trackers(cfg, tmp_path)
    assert isinstance(tb, TensorBoardTracker)
    tb.log(7, {"return_mean": 0.5})
    tb.close()
    ea = _events(tmp_path)
    assert [(e.step, e.value) for e in ea.Scalars("return_mean")] == [(7, 0.5)]
    hp, _, _ = _hparams(ea)
    assert hp["learner.lr"] == pytest.approx(1e-3) and hp["env.id"] == cfg.env.id
    assert make_trackers(compose(["run.tracking=[]"]), tmp_path / "none") == []


def test_a_failing_tracker_is_dropped_not_fatal(tmp_path, caplog):
    class Broken(Recorder):
        def log(self, step, scalars):
            raise OSError("disk full")

    good, bad = Recorder(), Broken()
    runlog = RunLog(tmp_path, [bad, good])
    for row in ROWS:
        runlog.row(**row)
    runlog.close()
    assert "tracker Broken failed in log" in caplog.text
    assert [s for s, _ in good.logged] == [512, 2048, 4096, 4096] and good.closed  # 2nd: empty
    assert not bad.closed  # dropped at its first failure
    assert TrackerSet().log_row(ROWS[0]) is None  # no trackers: nothing to do


def test_bad_tracking_values_name_the_field(monkeypatch):
    for value, words in (
        ("[nope]", "unknown backend 'nope'"),
        ("[tensorboard,tensorboard]", "twice"),
    ):
        with pytest.raises(ConfigError) as err:
            prepare(compose([f"run.tracking={value}"]))
        assert err.value.field == "run.tracking" and words in str(err.value)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m: None if m == "mlflow" else real(m))
    with pytest.raises(ConfigError) as err:
        prepare(compose(["run.tracking=[tensorboard,mlflow]"]))
    assert err.value.field == "run.tracking"
    assert "amago-ray[tracking]" in str(err.value) and "not installed" in str(err.value)
    assert check_backends(["tensorboard"]) is None


def test_missing_backend_package_fails_at_startup_in_one_line(tmp_path):
    """The real entrypoint with wandb made unimportable: exit 2, one line naming run.tracking,
    nothing started."""
    code = (
        "import sys, runpy; sys.modules['wandb'] = None; "
        "sys.argv = ['deploy.train', *sys.argv[1:]]; "
        "runpy.run_module('deploy.train', run_name='__main__')"
    )
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "run.tracking=[tensorboard,wandb]",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: config field 'run.tracking': wandb needs")
    assert "Traceback" not in proc.stdout + proc.stderr and "Ray" not in proc.stdout
    assert not (run_dir / "config.yaml").exists()


# --- optional backends, offline -----------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """Records of a wandb offline run file: a 7-byte header (':W&B', magic, version), then
    LevelDB-log framing (32 KiB blocks; chunks of crc32, length, type FULL/FIRST/MIDDLE/LAST)
    around protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, out, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
    return [pb.Record.FromString(c) for c in out]


def _wandb_history_and_config(run_file: Path) -> tuple[dict, dict]:
    """history (step -> {key: value}) and config ({key: value}) of an offline run file."""
    history: dict[int, dict[str, float]] = {}
    config: dict[str, object] = {}
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            history.setdefault(rec.history.step.num, {}).update(items)
        elif kind in ("run", "config"):  # the run's config, then any updates to it
            for i in (rec.run.config if kind == "run" else rec.config).update:
                config[i.key] = json.loads(i.value_json)
    return history, config


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'amago-ray[tracking]'")
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_offline_run_reads_back(tmp_path, wandb_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t = WandbTracker(run_dir, "amago-test", CONFIG)
    sets = TrackerSet([t])
    for row in ROWS:
        sets.log_row(row)
    sets.close()
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    # wandb's service process may still be writing the offline file when finish() returns
    # (seen once in a clean-clone CI run): read it until its history is whole, up to 15 s
    deadline = time.monotonic() + 15
    while True:
        try:
            history, config = _wandb_history_and_config(run_file)
        except Exception:  # a record still being written
            if time.monotonic() > deadline:
                raise
            history, config = {}, {}
        if sorted(history) == [512, 2048, 4096] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert sorted(history) == [512, 2048, 4096]
    assert history[2048]["losses/loss"] == 3.5 and history[2048]["charts/return_mean"] == -0.5
    assert history[4096]["charts/eval_return"] == 0.25
    assert history[4096]["charts/final_eval_return"] == 0.75
    assert config["learner.lr"] == 3e-4 and config["env.id"] == "amago/TMaze-v0"


@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed: pip install 'amago-ray[tracking]'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    had = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    yield
    if had is None:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    else:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = had


def test_mlflow_file_store_reads_back(tmp_path, mlflow_env):
    from mlflow.tracking import MlflowClient

    cfg = compose(["learner.lr=1e-3", "run.name=mltest", "run.tracking=[mlflow]"])
    (t,) = make_trackers(cfg, tmp_path)
    assert isinstance(t, MlflowTracker) and t.uri == (tmp_path / "mlruns").resolve().as_uri()
    sets = TrackerSet([t])
    for row in ROWS:
        sets.log_row(row)
    sets.close()
    client = MlflowClient(tracking_uri=t.uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "mltest"
    assert float(run.data.params["learner.lr"]) == 1e-3
    assert len(run.data.params) == len(flat_config(cfg)) > 100  # more than one batch
    hist = client.get_metric_history(t.run_id, "charts/return_mean")
    assert [(m.step, m.value) for m in hist] == [(512, -0.8), (2048, -0.5)]
    assert run.data.metrics["charts/final_eval_return"] == 0.75
