"""Evaluate a trained policy in-process: no Ray, no Redis.

    python -m deploy.tools.evaluate <run dir | checkpoint | exported policy dir> [episodes=N]
        [sample=true] [seed=N] [envs=N] [env.FIELD=VALUE ...]
        [video=true|mp4|gif] [video_episodes=N] [out=DIR]

Loads the run's ``config.yaml`` (its env section) and newest checkpoint (or the checkpoint
named, or an artifact of ``deploy.tools.export``), builds the env as the rollout actors do
(``common.envs.factory.make_env``) and the policy as they do (``InferencePolicy``, the
training window, exact mode), and runs ``episodes`` fresh rollouts (meta-RL trials for envs
with ``trial_episodes > 1``) through the actors' own loop (``actors.rollout.RolloutLoop``)
with greedy actions (``sample=true``: sampled from the policy). Prints the mean return and
success rate and, for trials, the mean return of each episode index within the trial.

``env.FIELD=VALUE`` overrides the run's env (``env.kwargs.corridor_length=20``: a longer
T-Maze than trained on); the env must keep the policy's observation and action spaces.

A multi-task run (``env.tasks``) is evaluated on every task, ``episodes`` rollouts each
(``task=NAME``: that task only): the result holds each task's under ``by_task`` and, as
``return_mean``, their mean (each task counted once). Overrides apply to every task's env.

``video=true`` records the first ``video_episodes`` rollouts of env copy 0 with gymnasium's
``RecordVideo`` into ``<run dir>/videos`` (or ``out=DIR``): MP4 when ``moviepy`` is installed
(the ``video`` extra), else GIF through Pillow (which matplotlib already brings);
``video=mp4`` / ``video=gif`` choose. The env must render ``rgb_array`` frames (every
built-in task does).

Errors (a missing path, no checkpoint, a bad override, an env that does not fit the policy)
print one ``error: ...`` line and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.tools.export import UsageError, env_config, parse_args, resolve_source, run_cli

USAGE = (
    "python -m deploy.tools.evaluate <run dir | checkpoint | exported policy dir> [episodes=N] "
    "[sample=true] [seed=N] [envs=N] [env.FIELD=VALUE ...] [video=true|mp4|gif] "
    "[video_episodes=N] [out=DIR] [task=NAME]"
)
OPTIONS: dict[str, Any] = {
    "episodes": 50,
    "sample": False,
    "seed": 0,
    "envs": 0,  # env copies stepped together; 0 = the largest divisor of episodes <= 16
    "video": "false",
    "video_episodes": 1,
    "out": "",
    "task": "",  # multi-task runs: evaluate this task only ("" = every task)
}
MAX_ENVS = 16


def video_format(choice: str) -> str | None:
    """``video=`` -> "mp4", "gif" or None (no video); "true" = mp4 if moviepy imports."""
    c = choice.lower()
    if c in ("false", "0", "no", "off", ""):
        return None
    if c in ("true", "1", "yes", "on"):
        try:
            import moviepy  # noqa: F401
        except ImportError:
            return "gif"
        return "mp4"
    if c in ("mp4", "gif"):
        if c == "mp4":
            try:
                import moviepy  # noqa: F401
            except ImportError:
                raise UsageError(
                    "video=mp4 needs moviepy (pip install -e '.[video]'); video=gif needs nothing"
                ) from None
        return c
    raise UsageError(f"video={choice!r}: expected true, false, mp4 or gif")


def _recorder(env, folder: Path, fmt: str, episodes: int):
    """``env`` wrapped in gymnasium's ``RecordVideo``, recording its rollouts 1..``episodes``
    (rollout 0 is the reset the rollout loop does when it is built, dropped before
    evaluating) as ``eval-000.<fmt>``, ...; GIFs are written with Pillow."""
    from gymnasium.error import DependencyNotInstalled
    from gymnasium.wrappers import RecordVideo

    class Recorder(RecordVideo):
        def __init__(self, env):
            self.fmt, self.written, self._count = fmt, [], 0
            try:
                super().__init__(
                    env,
                    str(folder),
                    episode_trigger=lambda ep: 1 <= ep <= episodes,
                    name_prefix="eval",
                )
            except DependencyNotInstalled:  # raised last in __init__: only mp4 needs moviepy
                if fmt == "mp4":
                    raise

        def start_recording(self, video_name: str) -> None:
            super().start_recording(f"{self.name_prefix}-{self._count:03d}")
            self._count += 1

        def stop_recording(self) -> None:
            frames, name = self.recorded_frames, self._video_name
            path = Path(self.video_folder) / f"{name}.{self.fmt}"
            if frames and self.fmt == "gif":
                from PIL import Image

                images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
                images[0].save(
                    path,
                    save_all=True,
                    append_images=images[1:],
                    duration=max(int(1000 / self.frames_per_sec), 20),
                    loop=0,
                )
                self.recorded_frames = []
                self.recording, self._video_name = False, None
            else:  # mp4 through moviepy; libx264 needs even frame sizes
                self.recorded_frames = [_even(f) for f in frames]
                super().stop_recording()
            if frames:
                self.written.append(path)

    return Recorder(env)


class _SuccessSeen:
    """Whether any env copy's step info carried a ``success`` flag (else success is not
    reported: the rollout loop counts 0 for envs that have none)."""

    seen = False


def _watch_success(env, seen: _SuccessSeen):
    import gymnasium as gym

    class WatchSuccess(gym.Wrapper):
        def step(self, action):
            out = self.env.step(action)
            info = out[4]
            if "success" in info or "success" in info.get("final_info", {}):
                seen.seen = True
            return out

    return WatchSuccess(env)


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _num_envs(episodes: int, requested: int) -> int:
    """Env copies stepped together: each runs the same number of rollouts (so short rollouts
    are not over-represented), so a divisor of ``episodes``."""
    if requested:
        if episodes % requested:
            raise UsageError(f"envs={requested} must divide episodes={episodes}")
        return requested
    return max(d for d in range(1, min(episodes, MAX_ENVS) + 1) if episodes % d == 0)


def evaluate(argv: Sequence[str]) -> dict[str, Any]:
    """Run the evaluation the command line asks for; returns its results (what it prints)."""
    path, opts, overrides = parse_args(argv, OPTIONS, USAGE)
    if opts["episodes"] < 1:
        raise UsageError(f"episodes={opts['episodes']}: must be >= 1")
    if opts["video_episodes"] < 1:
        raise UsageError(f"video_episodes={opts['video_episodes']}: must be >= 1")
    fmt = video_format(opts["video"])
    src = resolve_source(path)
    parts = src.parts()
    if src.artifact is not None and parts.env is None:
        raise UsageError(f"the exported policy {path!r} names no env")
    env_cfg = env_config(src, overrides, base=parts.env if src.artifact is not None else None)
    tasks = env_cfg.task_list()
    if opts["task"]:
        tasks = [t for t in tasks if t.name == opts["task"]]
        if not tasks:
            known = [t.name for t in env_cfg.task_list() if t.name]
            raise UsageError(f"task={opts['task']!r}: the run's tasks are {known}")
    if not env_cfg.multi_task:
        return _evaluate_env(src, parts, env_cfg, opts, fmt)
    results = {}
    for i, t in enumerate(tasks):  # a video of the first task only
        results[t.name] = _evaluate_env(src, parts, t.env, opts, fmt if i == 0 else None)
    means = [r["return_mean"] for r in results.values() if r["return_mean"] is not None]
    first = next(iter(results.values()))
    return {
        **{k: first[k] for k in ("source", "artifact", "policy_version", "actions")},
        "env": dataclasses.asdict(env_cfg),
        "episodes": sum(r["episodes"] for r in results.values()),
        "return_mean": float(np.mean(means)) if means else None,
        "by_task": results,
        "videos": first["videos"],
    }


def _evaluate_env(src, parts, env_cfg, opts: dict[str, Any], fmt: str | None) -> dict[str, Any]:
    """One env's evaluation (``evaluate``'s, for one task of a multi-task run)."""
    from actors.rollout import RolloutLoop
    from common.envs.factory import make_env
    from learner.export import ExportError

    spec = _fitting_spec(parts, env_cfg)
    episodes, seed = opts["episodes"], opts["seed"]
    n_envs = _num_envs(episodes, opts["envs"])
    per_slot = episodes // n_envs
    try:
        policy = parts.inference_policy(n_envs, "cpu", seed)
    except ExportError as e:
        raise UsageError(str(e)) from None

    recorder, video_dir = _video_recorder(src, env_cfg, opts, fmt, per_slot)
    envs = [recorder or make_env(env_cfg, seed=seed * 131)]
    envs += [make_env(env_cfg, seed=seed * 131 + i) for i in range(1, n_envs)]
    success = _SuccessSeen()
    envs = [_watch_success(env, success) for env in envs]
    loop = RolloutLoop(
        envs, spec, policy, None, None, env_id=env_cfg.id, seed=seed, greedy=not opts["sample"]
    )
    try:
        st = loop.run_rollouts(per_slot, max_steps=per_slot * (spec.max_episode_steps + 1))
    finally:
        for env in envs:
            env.close()
    result = _env_result(src, parts, env_cfg, opts, policy, st, success, recorder)
    if video_dir is not None and not result["videos"]:
        raise UsageError(f"video: no frames were recorded into {str(video_dir)!r}")
    return result


def _fitting_spec(parts, env_cfg):
    """The env spec of ``env_cfg``, checked to fit the policy (``UsageError`` if not)."""
    from common.config_utils import ConfigError, prefixed
    from common.envs.factory import env_spec
    from common.spec import compatible

    try:
        spec = prefixed("env", env_spec, env_cfg)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    problems = compatible(parts.spec, spec)
    if problems:
        raise UsageError(f"env {env_cfg.id!r} does not fit the policy: " + "; ".join(problems))
    return spec


def _video_recorder(src, env_cfg, opts: dict[str, Any], fmt: str | None, per_slot: int):
    """Env copy 0 recording videos and their directory (``None, None`` when ``fmt`` is None)."""
    if fmt is None:
        return None, None
    default_dir = (src.run_dir or src.artifact or src.checkpoint.parent) / "videos"
    video_dir = Path(opts["out"]) if opts["out"] else default_dir
    env0 = _rendering_env(env_cfg, opts["seed"] * 131)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
        recorder = _recorder(env0, video_dir, fmt, min(opts["video_episodes"], per_slot))
    return recorder, video_dir


def _env_result(
    src, parts, env_cfg, opts: dict[str, Any], policy, st, success: _SuccessSeen, recorder
) -> dict[str, Any]:
    """The results of one env's rollouts ``st`` (what ``evaluate`` prints for it)."""
    from common.reports import EvalReport

    report = EvalReport(
        "", policy.version, st.returns, st.successes, st.lengths, st.episode_returns
    )
    return {
        "source": str(parts.source),
        "artifact": None if src.artifact is None else str(src.artifact),
        "policy_version": parts.version,
        "env": dataclasses.asdict(env_cfg),
        "actions": "sampled" if opts["sample"] else "greedy",
        "episodes": len(st.returns),
        "return_mean": report.mean_return(),
        "return_std": float(np.std(st.returns)) if st.returns else None,
        "success_rate": report.success_rate() if success.seen else None,
        "steps_mean": float(np.mean(st.lengths)) - 1 if st.lengths else None,
        "by_episode": report.by_episode() if env_cfg.trial_episodes > 1 else None,
        "env_faults": st.env_faults,
        "videos": [str(p) for p in getattr(recorder, "written", [])],
    }


def _rendering_env(env_cfg, seed: int):
    """``make_env`` of ``env_cfg`` made with ``render_mode="rgb_array"``, checked to render
    (``UsageError`` in one line if it cannot)."""
    from common.config_utils import ConfigError
    from common.envs.factory import make_env

    cfg = dataclasses.replace(env_cfg, kwargs={**env_cfg.kwargs, "render_mode": "rgb_array"})
    try:
        env = make_env(cfg, seed=seed)
    except ConfigError as e:
        raise UsageError(f"video: {env_cfg.id!r} cannot render rgb_array frames ({e})") from None
    try:  # a probe: the rollout loop seeds every reset itself, so this changes nothing
        env.reset(seed=seed)
        frame = env.render()
    except Exception as e:  # e.g. a renderer whose own dependency is missing
        env.close()
        raise UsageError(
            f"video: {env_cfg.id!r} failed to render: {type(e).__name__}: {e}"
        ) from None
    if env.render_mode != "rgb_array" or not isinstance(frame, np.ndarray):
        env.close()
        raise UsageError(f"video: {env_cfg.id!r} does not render rgb_array frames")
    return env


def format_result(r: dict[str, Any]) -> str:
    if "by_task" in r:  # a multi-task run: each task's block, then the mean over tasks
        blocks = [f"task {name}:\n{format_result(t)}" for name, t in r["by_task"].items()]
        mean = r["return_mean"]
        tail = "-" if mean is None else f"{mean:.3f}"
        return "\n".join([*blocks, f"mean return over {len(r['by_task'])} tasks: {tail}"])
    env = r["env"]
    kwargs = f" {env['kwargs']}" if env["kwargs"] else ""
    trial = f", trials of {env['trial_episodes']} episodes" if env["trial_episodes"] > 1 else ""
    what = "trials" if env["trial_episodes"] > 1 else "episodes"
    policy = f"{r['source']} (version {r['policy_version']})"
    if r.get("artifact"):
        policy = f"{r['artifact']} (exported from {r['source']}, version {r['policy_version']})"
    lines = [
        f"policy: {policy}",
        f"env: {env['id']}{kwargs}{trial}; {r['actions']} actions",
    ]
    if not r["episodes"]:
        lines.append(f"no {what} finished within the step cap")
        return "\n".join(lines)
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    success = "" if r["success_rate"] is None else f", success {fmt(r['success_rate'])}"
    lines.append(
        f"{r['episodes']} {what}: return mean {fmt(r['return_mean'])} "
        f"(std {fmt(r['return_std'])}){success}, steps {fmt(r['steps_mean'])}"
    )
    if r["by_episode"] is not None:
        per = " ".join(f"{v:.2f}" for v in r["by_episode"])
        lines.append(f"return per episode of the trial (1..{len(r['by_episode'])}): {per}")
    if r["env_faults"]:
        lines.append(f"env faults: {r['env_faults']} (those rollouts were dropped)")
    for p in r["videos"]:
        lines.append(f"video: {p}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    print(format_result(run_cli(evaluate, argv, __doc__ or USAGE)))


if __name__ == "__main__":
    main()
