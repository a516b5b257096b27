"""Bad env configs stop ``python -m deploy.train`` before Ray or Valkey start: exit code 2 and
one ``error: config field '<field>': ...`` line on stderr, no traceback. Each case runs the real
entrypoint in a subprocess, from a directory holding the user's (broken) env modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

MODULES = {
    "broken_import.py": "raise KeyError('missing setting')\n",
    "user_envs.py": textwrap.dedent(
        """
        import gymnasium as gym
        import numpy as np


        class NoLimit(gym.Env):
            observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
            action_space = gym.spaces.Discrete(2)

            def reset(self, seed=None, options=None):
                return np.zeros(2, np.float32), {}

            def step(self, action):
                return np.zeros(2, np.float32), 0.0, False, False, {}


        class NoLicense(NoLimit):
            def __init__(self):
                raise RuntimeError("no license server")


        class BadReset(NoLimit):
            def reset(self, seed=None, options=None):
                raise OSError("simulator not running")


        gym.register("NoLimit-v0", entry_point=NoLimit)
        gym.register("NoLicense-v0", entry_point=NoLicense, max_episode_steps=10)
        gym.register("BadReset-v0", entry_point=BadReset, max_episode_steps=10)
        """
    ),
}

CASES = [
    (["env.id=Nope-v0"], "env.id", "unknown environment id"),
    (["env.id=not_a_module:Env-v0"], "env.id", "cannot import module 'not_a_module'"),
    (["env.id=broken_import:Env-v0"], "env.id", "KeyError"),
    (["env.id=CartPole-v1", "+env.kwargs.corridor_length=3"], "env.kwargs", "rejected"),
    (["env.id=user_envs:NoLimit-v0"], "env.max_episode_steps", "no time limit"),
    (["env.id=user_envs:NoLicense-v0"], "env.id", "no license server"),
    (["env.id=user_envs:BadReset-v0"], "env.id", "simulator not running"),
    (["env=bandit", "env.trial_episodes=0"], "env.trial_episodes", "must be an int >= 1"),
]


@pytest.mark.parametrize("overrides,field,words", CASES, ids=[c[0][-1] for c in CASES])
def test_bad_env_fails_at_startup_in_one_line(tmp_path, overrides, field, words):
    for name, src in MODULES.items():
        (tmp_path / name).write_text(src)
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: config field '{field}': ") and words in lines[0]
    # nothing was started: no Ray session, no replay server, nothing in the run directory
    assert "Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()  # not even the directory Hydra made for the run


@pytest.mark.slow
def test_a_run_that_never_trained_exits_non_zero_and_writes_no_secret(tmp_path):
    """The real entrypoint, a budget that ends before the replay reaches ``min_size_steps``:
    the run ends with 0 learner updates, says why in one ``error:`` line and exits 1 (a run
    that did not train is not a success). The password given on the command line (the
    embedded server's) is in no file of the run directory, Hydra's ``.hydra/`` included; and
    Ray's warning about restartable actors' constructor arguments is gone."""
    secret = "hunter2-on-the-command-line"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.train",
            "experiment=tmaze",
            "run.max_env_steps=240",  # < min_size_steps=1000: sampling never starts
            "run.eval_every_s=0",
            "run.final_eval_episodes=0",
            "run.plot=false",
            "run.tracking=[]",
            "deploy.serve_metrics=false",
            f"replay.redis.password={secret}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "without a learner update" in errors[0], proc.stderr[-2000:]
    assert "replay.rate_limit.min_size_steps=1000" in errors[0]
    # no handle among a restartable actor's constructor arguments (ray-project/ray#53727)
    assert "constructor arguments in the object store" not in proc.stderr
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.parent.name == ".hydra" for p in files)
    assert [p for p in files if secret.encode() in p.read_bytes()] == []


def test_no_update_reason_names_what_the_replay_saw():
    from deploy.config import TrainConfig
    from deploy.run.progress import no_update_reason

    cfg = TrainConfig()
    assert no_update_reason({"updates": 3}, cfg) is None
    replay = {"timesteps": 0, "bytes": 0, "inserted_trajectories": 0}
    replay.update(evicted_trajectories=0, rejected={"oversize": 40})
    why = no_update_reason({"updates": 0, "env_steps": 480, "replay_final": replay}, cfg)
    assert "480 env steps" in why and "rejected 40 rollouts {'oversize': 40}" in why
    assert f"min_size_steps={cfg.replay.rate_limit.min_size_steps}" in why


def test_time_budget_counts_training_from_the_first_update():
    """``run.max_seconds`` is training time: start-up (Ray, workers, filling the replay to
    ``min_size_steps``) does not use it; ``run.max_startup_s`` bounds the start-up instead."""
    from deploy.config import RunConfig
    from deploy.run.progress import RunProgress

    r = RunConfig(max_env_steps=0, max_seconds=20.0, max_startup_s=300.0)
    p = RunProgress()
    assert p.stop_reason(r, elapsed_s=250.0) is None  # 250 s of start-up, no update yet
    assert p.stop_reason(r, elapsed_s=300.0) == "no_update"
    p.first_update_s = 40.0
    assert p.stop_reason(r, elapsed_s=59.0) is None  # 19 s of training
    assert p.stop_reason(r, elapsed_s=60.0) == "max_seconds"
    assert dict(p.budget_used(60.0))["max_seconds"] == 20.0
