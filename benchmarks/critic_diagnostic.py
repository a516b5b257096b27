"""Offline T-Maze (H=10) diagnostic of the learner alone: greedy return after N updates on the
scripted mixed-quality data of ``tests/test_learner_offline.py``, and, at the junction, the
critic's Q(up) - Q(down) and the actor's pi(up), pi(down) per hint. A critic that has learned
the memory task gives Q(up) - Q(down) > 0 for hint +1 and < 0 for hint -1.

    python -m benchmarks.critic_diagnostic '{"variant": "amago2"}' \
        '{"variant": "amago", "online_actor_weight": 0.0, "bc_weight": 1.0}' [--updates 1500]

Each argument is a JSON dict of LearnerConfig overrides (one run each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_learner_offline import H, greedy_return, scripted_episode, train_offline  # noqa: E402

from common.envs.tmaze import TMaze  # noqa: E402
from learner.agent import categorical_probs  # noqa: E402
from learner.synthetic import collate  # noqa: E402


def junction_report(learner, episodes: int = 40) -> list[str]:
    """Q(up) - Q(down) (mean over critics, main discount) and pi at the junction, per hint."""
    rng, env, eps = np.random.default_rng(5), TMaze(H), []
    while len(eps) < episodes:  # episodes that reached the junction
        t = scripted_episode(env, rng, seed=int(rng.integers(1 << 30)))
        if len(t) == H + 2:
            eps.append(t)
    batch = collate(eps, H + 2)
    t, ag = learner._to_tensors(batch), learner.agent
    with torch.no_grad():
        h = ag.policy.encode(t["obs"], t["prev_action"], t["prev_reward"], t["time_idx"])
        s = h[:, H]  # (B, D) the state at the junction
        q = ag.critics.head(ag.critics.embed_state(s))  # (C, B, G, A, K)
        qv = learner.variant.target_values(ag, q, trailing=1)  # (C, B, G, A) raw
        qv = qv.mean(0)[:, -1]  # (B, A)
        p = categorical_probs(ag.policy.actor(s), learner.cfg.prob_clip)[:, -1]  # (B, A)
    hint = batch.obs["observation"][:, 0, 0]
    out = []
    for sign in (1, -1):
        m = hint == sign
        out.append(
            f"hint {sign:+d}: Q(up)-Q(down) {float((qv[m, 2] - qv[m, 3]).mean()):+.3f}  "
            f"pi(up) {float(p[m, 2].mean()):.3f}  pi(down) {float(p[m, 3].mean()):.3f}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="JSON dicts of LearnerConfig overrides")
    ap.add_argument("--updates", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for arg in args.configs:
        learner, secs = train_offline("transformer", updates=args.updates, **json.loads(arg))
        ret = greedy_return(learner, episodes=50, seed=123)
        print(f"{arg}: greedy return {ret:.3f} after {args.updates} updates ({secs:.0f} s)")
        for line in junction_report(learner):
            print("  " + line, flush=True)


if __name__ == "__main__":
    main()
