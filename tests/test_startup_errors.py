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
