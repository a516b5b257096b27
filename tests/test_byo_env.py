"""Bring your own env, as a user does: a gymnasium env in a module of one's own (written here
into a fresh directory, defined nowhere in the package), trained from that directory with
``python -m deploy.train env.id=<module>:<Id> env.max_episode_steps=<limit>`` and nothing
else: the generic defaults, the real distributed path (Ray actors importing the user's module,
embedded Valkey, learner actor). The run is its own process, so it has its own Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import seed_overrides

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

#: A cue among 4 at t=0 only, DELAY blank steps, then the agent must name the cue (reward 1).
#: No time limit of its own: the run must give one. A memoryless policy scores 0.25.
USER_MODULE = textwrap.dedent(
    """
    import gymnasium as gym
    import numpy as np

    CUES, DELAY = 4, 6


    class CueRecall(gym.Env):
        def __init__(self):
            self.observation_space = gym.spaces.Box(0.0, 1.0, (CUES + 1,), np.float32)
            self.action_space = gym.spaces.Discrete(CUES)

        def _obs(self, cue_visible):
            o = np.zeros(CUES + 1, np.float32)
            if cue_visible:
                o[self.cue] = 1.0
            o[CUES] = float(self.t == DELAY)  # "answer now"
            return o

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.cue, self.t = int(self.np_random.integers(CUES)), 0
            return self._obs(True), {}

        def step(self, action):
            if self.t == DELAY:
                return self._obs(False), float(int(action) == self.cue), True, False, {}
            self.t += 1
            return self._obs(False), 0.0, False, False, {}


    gym.register("CueRecall-v0", entry_point=CueRecall)
    """
)

MEMORYLESS = 0.25
THRESHOLD = 0.9


def test_own_module_env_learns_with_the_generic_defaults(tmp_path, learning_seed, figure):
    """Stops at the first greedy evaluation at 1.0 (above the bar 0.9); budget 6,000 updates
    (``run.max_seconds`` only guards against a hang). 10 repeats: 10/10, final return 1.0."""
    (tmp_path / "user_envs.py").write_text(USER_MODULE)
    cmd = [
        sys.executable,
        "-m",
        "deploy.train",
        "env.id=user_envs:CueRecall-v0",
        "env.max_episode_steps=10",
        # test harness only: stop once shown, bounded time, no plot or metrics endpoints
        "run.stop_at_return=1.0",  # above the bar: the final evaluation is not a coin flip
        "run.eval_every_s=10",
        "run.max_updates=6000",
        "run.max_env_steps=0",
        "run.max_seconds=600",
        *seed_overrides(learning_seed),
        "run.plot=false",
        "deploy.serve_metrics=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "derived: learner.max_seq_len=11" in proc.stdout  # the time limit 10 + 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    print({k: summary[k] for k in ("env_steps", "updates", "train_seconds", "final_eval_return")})
    assert THRESHOLD > MEMORYLESS
    figure("final_eval_return", summary["final_eval_return"], ">=", THRESHOLD)
