"""``python -m deploy.tools.evaluate``: in-process evaluation of a run, a checkpoint or an exported
policy (no Ray, no Redis), env overrides, sampled actions, per-episode returns of meta-RL
trials, videos through gymnasium's RecordVideo (the built-in tasks' ``rgb_array`` rendering);
and the training side: ``run.eval_env`` / ``run.eval_sample`` for the evaluation actor.

Run directories are built directly (``config.yaml`` + a learner checkpoint after a few updates
on random batches: ``test_export.make_run``), so every test takes seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_export import make_run

import common.envs  # noqa: F401  (registers the amago/ ids)
from common.config_utils import ConfigError
from deploy.config import compose, eval_env_config, prepare
from deploy.tools.evaluate import evaluate, format_result
from deploy.tools.evaluate import main as evaluate_main
from deploy.tools.export import main as export_main
from learner.checkpoint import checkpoint_name

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tmaze_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tmaze") / "run"
    make_run(run, "experiment=tmaze")
    return run


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bandit") / "run"
    make_run(run, "experiment=bandit")
    return run


def _cli(capsys, *args) -> tuple[int, str, str]:
    try:
        evaluate_main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ evaluating


def test_a_run_dir_evaluates_without_ray_or_redis(tmaze_run):
    """The real command in a fresh process: it prints the mean return, and neither Ray nor
    Redis is ever imported."""
    code = (
        "import sys\n"
        "from deploy.tools.evaluate import main\n"
        f"main([{str(tmaze_run)!r}, 'episodes=10'])\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'redis'}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^10 episodes: return mean -?\d+\.\d{3} ", proc.stdout, re.M), proc.stdout
    assert "LOADED []" in proc.stdout
    assert "greedy actions" in proc.stdout and "ckpt_00000003.pt (version 3)" in proc.stdout


def test_results_are_the_rollouts_of_the_actors_loop(tmaze_run):
    """N rollouts, each a whole T-Maze episode; greedy and seeded, so a rerun gives the same
    numbers; the returns lie in T-Maze's range."""
    r = evaluate([str(tmaze_run), "episodes=12", "seed=4"])
    assert r["episodes"] == 12 and r["actions"] == "greedy"
    assert 1 <= r["steps_mean"] <= 11 and -1.1 - 1e-6 <= r["return_mean"] <= 1.0
    assert r["success_rate"] is not None  # T-Maze reports success
    assert evaluate([str(tmaze_run), "episodes=12", "seed=4"]) == r
    assert r["by_episode"] is None  # not a trial env


def test_sample_true_samples_actions(tmaze_run):
    greedy = [evaluate([str(tmaze_run), "episodes=8", f"seed={s}"]) for s in range(3)]
    sampled = [
        evaluate([str(tmaze_run), "episodes=8", "sample=true", f"seed={s}"]) for s in range(3)
    ]
    assert {r["actions"] for r in sampled} == {"sampled"}
    # a barely trained greedy policy does the same thing every episode; sampling does not
    assert len({r["return_mean"] for r in greedy}) == 1 and greedy[0]["return_std"] == 0
    assert any(r["return_std"] > 0 for r in sampled)


def test_env_overrides_change_the_evaluated_env(tmaze_run, capsys):
    r = evaluate([str(tmaze_run), "episodes=4", "env.kwargs.corridor_length=20"])
    assert r["env"]["kwargs"] == {"corridor_length": 20}
    assert r["steps_mean"] <= 21 and r["episodes"] == 4
    code, out, _ = _cli(capsys, str(tmaze_run), "episodes=4", "+env.kwargs.corridor_length=20")
    assert code == 0 and "env: amago/TMaze-v0 {'corridor_length': 20}" in out


def test_meta_rl_trials_print_the_return_of_each_episode_index(bandit_run, capsys):
    """Bandit trials of 20 one-pull episodes: the mean return of the k-th pull, over trials."""
    r = evaluate([str(bandit_run), "episodes=10"])
    assert r["episodes"] == 10 and len(r["by_episode"]) == 20
    assert all(0.0 <= v <= 1.0 for v in r["by_episode"])
    assert sum(r["by_episode"]) == pytest.approx(r["return_mean"])
    assert r["success_rate"] is None  # the bandit reports no success flag
    code, out, _ = _cli(capsys, str(bandit_run), "episodes=10")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("return per episode"))
    assert line.startswith("return per episode of the trial (1..20): ")
    values = [float(v) for v in line.split(": ", 1)[1].split()]
    assert values == pytest.approx(r["by_episode"], abs=0.005)
    assert "10 trials: return mean" in out and "trials of 20 episodes" in out


def test_a_checkpoint_file_and_an_exported_policy_evaluate_the_same(tmaze_run, tmp_path):
    ckpt = tmaze_run / "checkpoints" / checkpoint_name(3)
    export_main([str(tmaze_run), f"out={tmp_path / 'policy'}"])
    results = [
        evaluate([str(p), "episodes=6", "sample=true", "seed=2"])
        for p in (tmaze_run, ckpt, tmp_path / "policy")
    ]
    keys = ("return_mean", "return_std", "success_rate", "steps_mean", "episodes")
    assert len({tuple(r[k] for k in keys) for r in results}) == 1, results
    assert results[2]["artifact"] == str(tmp_path / "policy") and results[0]["artifact"] is None
    assert format_result(results[2]).startswith(f"policy: {tmp_path / 'policy'} (exported from ")


def test_format_result_reads_well(bandit_run):
    text = format_result(evaluate([str(bandit_run), "episodes=2"]))
    assert text.splitlines()[1].startswith("env: amago/MetaBandit-v0 {'arms': 5")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "args,words",
    [
        (["{tmp}/missing"], "no such file or directory: "),
        (["{empty}"], "no checkpoint in"),
        (["{lone}"], "no config.yaml for"),
        (["{run}", "episodes=0"], "episodes=0: must be >= 1"),
        (["{run}", "episodes=many"], "episodes='many': expected an integer"),
        (["{run}", "sample=perhaps"], "expected true or false"),
        (["{run}", "episodes=10", "envs=3"], "envs=3 must divide episodes=10"),
        (["{run}", "colour=blue"], "unknown argument 'colour'"),
        (["{run}", "env.foo=1"], "bad override 'env.foo=1'"),
        (["{run}", "env.trial_episodes=abc"], "bad override 'env.trial_episodes=abc'"),
        (["{run}", "env.kwargs.nope=1"], "config field 'env.kwargs': 'amago/TMaze-v0' rejected"),
        (["{run}", "env.id=amago/MetaBandit-v0"], "does not fit the policy: observations"),
        (["{run}", "env.trial_episodes=0"], "config field 'env.trial_episodes'"),
        (["{run}", "video=sometimes"], "video='sometimes': expected true, false, mp4 or gif"),
        ([], "usage: python -m deploy.tools.evaluate"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, tmaze_run, capsys, args, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lone").mkdir()
    src = tmaze_run / "checkpoints" / checkpoint_name(3)
    (tmp_path / "lone" / checkpoint_name(3)).write_bytes(src.read_bytes())
    fill = {
        "tmp": tmp_path,
        "empty": tmp_path / "empty",
        "lone": tmp_path / "lone",
        "run": tmaze_run,
    }
    code, out, err = _cli(capsys, *[a.format(**fill) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_an_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.tools.evaluate", str(tmp_path / "nope"), "episodes=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no such file or directory")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ rendering and video

ENVS = ["amago/TMaze-v0", "amago/MetaBandit-v0", "amago/DarkKeyToDoor-v0", "amago/GoalGrid-v0"]


@pytest.mark.parametrize("env_id", ENVS)
def test_built_in_tasks_render_rgb_array_frames(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    rng = np.random.default_rng(0)
    for t in range(12):
        action = 0 if t < 2 else int(rng.integers(env.action_space.n))  # TMaze: 0 = right
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
        frames.append(env.render())
    for f in frames:
        assert isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3
        assert f.shape[2] == 3 and f.shape[0] % 2 == 0 and f.shape[1] % 2 == 0  # mp4-friendly
        assert f.shape == frames[0].shape and len(np.unique(f.reshape(-1, 3), axis=0)) >= 3
    assert any(not np.array_equal(f, frames[0]) for f in frames[1:])  # it shows the state
    assert gym.make(env_id).unwrapped.render() is None  # no render mode: no frames
    with pytest.raises(ValueError, match="render_mode"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's own "not in render_modes" warning
        gym.make(env_id, render_mode="ansi")


def _same_obs(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    else:
        np.testing.assert_array_equal(a, b)


def test_rendering_leaves_the_dynamics_alone():
    """The same seed and actions give the same transitions with and without rendering."""
    for env_id in ENVS:
        plain, shown = gym.make(env_id), gym.make(env_id, render_mode="rgb_array")
        rng = np.random.default_rng(0)
        _same_obs(plain.reset(seed=3)[0], shown.reset(seed=3)[0])
        for _ in range(30):
            act = int(rng.integers(plain.action_space.n))
            x, y = plain.step(act), shown.step(act)
            shown.render()
            _same_obs(x[0], y[0])
            assert x[1:4] == y[1:4]
            if x[2] or x[3]:
                _same_obs(plain.reset(seed=4)[0], shown.reset(seed=4)[0])


def _gif_ms(path: Path) -> int:
    """Playing time of a GIF (Pillow merges repeated frames into one longer frame)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return sum(frame.info["duration"] for frame in ImageSequence.Iterator(im))


def test_video_gif_goes_into_the_run_dir(tmaze_run):
    r = evaluate([str(tmaze_run), "episodes=4", "video=gif", "video_episodes=2"])
    videos = [Path(v) for v in r["videos"]]
    assert [v.name for v in videos] == ["eval-000.gif"]  # 4 episodes on 4 envs: 1 per env
    assert videos[0].parent == tmaze_run / "videos"
    assert videos[0].stat().st_size > 0
    # the first observation, then a frame per step, at T-Maze's 4 frames per second
    assert _gif_ms(videos[0]) == 250 * (r["steps_mean"] + 1)  # greedy: every episode alike
    plain = evaluate([str(tmaze_run), "episodes=4", "sample=true"])
    filmed = evaluate([str(tmaze_run), "episodes=4", "sample=true", "video=gif"])
    assert {**filmed, "videos": []} == plain  # recording changes no rollout


def test_video_mp4_of_several_trials_into_out(bandit_run, tmp_path, capsys):
    pytest.importorskip("moviepy")
    import imageio.v3 as iio

    out = tmp_path / "videos"
    code, text, err = _cli(
        capsys,
        str(bandit_run),
        "episodes=2",
        "envs=1",
        "video=mp4",
        "video_episodes=2",
        f"out={out}",
    )
    assert code == 0, err
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["eval-000.mp4", "eval-001.mp4"]
    for f in files:
        frames = iio.imread(f)
        assert f.stat().st_size > 0 and frames.shape[0] == 21  # a 20-pull trial: 21 frames
        assert f"video: {f}" in text


def test_video_true_falls_back_to_gif_without_moviepy(tmaze_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # `import moviepy` now fails
    r = evaluate([str(tmaze_run), "episodes=2", "video=true", f"out={tmp_path}"])
    assert [Path(v).suffix for v in r["videos"]] == [".gif"]
    code = None
    try:
        evaluate([str(tmaze_run), "episodes=2", "video=mp4", f"out={tmp_path}"])
    except Exception as e:  # UsageError
        code = str(e)
    assert code is not None and "video=mp4 needs moviepy" in code


def test_video_of_an_env_that_cannot_render_is_an_error(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    make_run(run, "env.id=CartPole-v1", updates=0)
    # CartPole renders through pygame (minigrid brings pygame-ce): hidden here, as on a
    # machine without it, so its render fails
    monkeypatch.setitem(sys.modules, "pygame", None)
    code, _, err = _cli(capsys, str(run), "episodes=1", "video=gif")
    assert code == 2 and err.startswith("error: video: 'CartPole-v1' failed to render: ")
    assert "pygame" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ evaluation during training


def test_eval_env_overrides_merge_into_the_training_env():
    cfg = compose(["experiment=bandit", "+run.eval_env.kwargs.arms=5", "run.eval_sample=true"])
    ev = eval_env_config(cfg)
    assert ev.kwargs == {"arms": 5, "p_hi": 0.9, "p_lo": 0.1} and ev.trial_episodes == 20
    assert cfg.run.eval_sample is True
    assert eval_env_config(compose(["experiment=bandit"])) is not None
    assert eval_env_config(compose([])) == compose([]).env  # default: the training env
    other = compose(["+run.eval_env.id=amago/DarkKeyToDoor-v0", "+run.eval_env.kwargs.size=4"])
    assert eval_env_config(other).kwargs == {"size": 4}  # another id: only its own kwargs
    cfg, _, _ = prepare(compose(["experiment=tmaze", "+run.eval_env.kwargs.corridor_length=30"]))
    assert eval_env_config(cfg).kwargs == {"corridor_length": 30}


@pytest.mark.parametrize(
    "overrides,field,words",
    [
        (["+run.eval_env.colour=1"], "run.eval_env.colour", "not an env field"),
        (["+run.eval_env.kwargs=3"], "run.eval_env.kwargs", "must be a mapping"),
        (["+run.eval_env.kwargs.nope=1"], "run.eval_env.kwargs", "rejected its arguments"),
        (["+run.eval_env.id=amago/Nope-v0"], "run.eval_env.id", "unknown environment id"),
        (["+run.eval_env.trial_episodes=0"], "run.eval_env.trial_episodes", "must be an int"),
        (["+run.eval_env.id=amago/MetaBandit-v0"], "run.eval_env", "observations"),
        (["env=bandit", "+run.eval_env.trial_episodes=1"], "run.eval_env", "observations"),
    ],
)
def test_bad_eval_env_fails_at_startup_naming_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        prepare(compose(overrides))
    assert err.value.field == field and words in str(err.value)
    assert "\n" not in str(err.value)


def test_the_evaluation_actor_gets_the_eval_env_and_sampling(monkeypatch):
    """builder.start_rollout_actor(evaluation=True) hands the evaluation actor the eval env
    (its own spec and horizon) and eval_sample; the rollout actor built from that setup acts
    sampled. Ray is replaced by a stand-in that returns the setup, weights by a stub."""
    import ray

    import actors.worker
    import deploy.run.builder

    class FakeRemote:
        def __init__(self, cls):
            pass

        def options(self, **_):
            return self

        def remote(self, setup, broker):
            return setup

    class NoWeights:
        def __init__(self, *_):
            pass

        def wait(self, policy):
            pass

    monkeypatch.setattr(ray, "remote", FakeRemote)
    monkeypatch.setattr(actors.worker, "WeightClient", NoWeights)
    common = ["experiment=tmaze", "deploy.serve_metrics=false", "actors.envs_per_actor=2"]
    cfg, spec, _ = prepare(
        compose([*common, "+run.eval_env.kwargs.corridor_length=20", "run.eval_sample=true"])
    )
    setup = deploy.run.builder.start_rollout_actor(cfg, None, 5, evaluation=True, spec=spec)
    assert setup.eval_sample and setup.make_writer is None
    assert setup.spec.max_episode_steps == 21 and setup.env_id == "amago/TMaze-v0"
    actor = actors.worker.RolloutActor(setup, None)
    assert actor.evaluating and actor.loop.greedy is False
    assert [env.unwrapped.H for env in actor.loop.envs] == [20, 20]
    collector = deploy.run.builder.start_rollout_actor(cfg, None, 0, spec=spec)
    assert collector.spec is spec and not collector.eval_sample
    assert collector.make_env(0).unwrapped.H == 10  # training keeps the training env

    plain, _, _ = prepare(compose(common))
    setup = deploy.run.builder.start_rollout_actor(plain, None, 5, evaluation=True, spec=spec)
    assert setup.spec is spec and not setup.eval_sample
    assert actors.worker.RolloutActor(setup, None).loop.greedy is True
