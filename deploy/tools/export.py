"""Export a run's policy as an artifact a user loads in a few lines (:mod:`learner.export`).

    python -m deploy.tools.export runs/tmaze/<timestamp>                 # -> <run dir>/policy/
    python -m deploy.tools.export runs/tmaze/<timestamp>/checkpoints/ckpt_00002200.pt out=policy

The newest checkpoint of a run directory (or the checkpoint named) and the run's env section
(its ``config.yaml``) become ``out/model.safetensors`` + ``out/policy.json``. No Ray, no
Redis. ``--help`` prints this text (exit 0). Errors (a missing path, no checkpoint, a bad
argument) print one ``error: ...`` line and exit with code 2.

The helpers here (:func:`resolve_source`, :func:`env_config`, :func:`parse_args`,
:func:`run_cli`) are shared with ``deploy.tools.evaluate``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.envs.config import EnvConfig

T = TypeVar("T")


class UsageError(Exception):
    """A bad command line or input; printed as one ``error: ...`` line (exit code 2)."""


@dataclass
class Source:
    """What a path given on the command line names."""

    path: Path  # as given
    run_dir: Path | None  # the run directory (holding config.yaml), if known
    checkpoint: Path | None  # the checkpoint to read (None for an artifact)
    artifact: Path | None  # an exported policy directory (None for a checkpoint)

    def parts(self):
        """The :class:`learner.export.PolicyParts` it holds (``UsageError`` if unreadable)."""
        from learner.export import ExportError, read_artifact, read_checkpoint

        try:
            if self.artifact is not None:
                return read_artifact(self.artifact)
            return read_checkpoint(self.checkpoint)
        except ExportError as e:
            raise UsageError(str(e)) from None

    @property
    def config_yaml(self) -> Path | None:
        if self.run_dir is None:
            return None
        p = self.run_dir / "config.yaml"
        return p if p.is_file() else None


def resolve_source(path: str) -> Source:
    """A run directory, a ``ckpt_*.pt`` file (its run directory is the one above
    ``checkpoints/``), a checkpoints directory, or an exported policy directory."""
    from learner.checkpoint import latest_checkpoint
    from learner.export import is_artifact

    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file or directory: {path!r}")
    if p.is_dir() and is_artifact(p):
        return Source(p, None, None, p)
    found = latest_checkpoint(str(p))
    if found is None:
        raise UsageError(
            f"no checkpoint in {path!r} (give a run directory, a ckpt_*.pt file or an exported "
            "policy directory)"
        )
    ckpt = Path(found)
    run_dir = None
    for cand in (p if p.is_dir() else p.parent, ckpt.parent, ckpt.parent.parent):
        if (cand / "config.yaml").is_file():
            run_dir = cand
            break
    return Source(p, run_dir, ckpt, None)


def parse_args(
    argv: Sequence[str], options: dict[str, Any], usage: str
) -> tuple[str, dict[str, Any], list[str]]:
    """``PATH key=value ... env.FIELD=VALUE ...`` -> (PATH, options, env overrides).
    ``options`` maps each accepted key to its default (its type converts the value)."""
    if not argv:
        raise UsageError(f"usage: {usage}")
    path, opts, env_overrides = None, dict(options), []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            if path is not None:
                raise UsageError(f"unexpected argument {arg!r} (usage: {usage})")
            path = arg
            continue
        if key.lstrip("+").startswith("env."):
            env_overrides.append(arg.lstrip("+"))
            continue
        if key not in options:
            raise UsageError(f"unknown argument {key!r} (usage: {usage})")
        opts[key] = _convert(key, value, options[key])
    if path is None:
        raise UsageError(f"no path given (usage: {usage})")
    return path, opts, env_overrides


def _convert(key: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = value.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{key}={value!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{key}={value!r}: expected an integer") from None
    return value


def env_config(
    source: Source, overrides: Sequence[str] = (), base: dict | None = None
) -> EnvConfig:
    """The env section of the run (``config.yaml``), or ``base`` (an artifact's), with
    ``env.FIELD=VALUE`` overrides (Hydra-style values: ``env.kwargs.corridor_length=20``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if base is None:
        if source.config_yaml is None:
            raise UsageError(
                f"no config.yaml for {str(source.path)!r}: the env of the run is unknown "
                "(give the run directory, or a checkpoint inside its checkpoints/)"
            )
        try:
            base = OmegaConf.to_container(OmegaConf.load(source.config_yaml).get("env", {}))
        except (OSError, OmegaConfBaseException) as e:
            raise UsageError(f"cannot read {str(source.config_yaml)!r}: {e}") from None
    try:
        node = OmegaConf.merge(OmegaConf.structured(EnvConfig), base or {})
    except OmegaConfBaseException as e:
        raise UsageError(
            f"the env section of {str(source.path)!r} is not an env config: {e}"
        ) from None
    for item in overrides:
        key = item.split("=", 1)[0]
        try:
            node = OmegaConf.merge(node, OmegaConf.from_dotlist([item.removeprefix("env.")]))
        except OmegaConfBaseException as e:
            msg = str(e).splitlines()[0]
            raise UsageError(f"bad override {item!r}: {msg}") from None
        if key.count(".") == 1 and key.split(".", 1)[1] not in EnvConfig.__dataclass_fields__:
            raise UsageError(f"bad override {item!r}: env has no field {key.split('.', 1)[1]!r}")
    return OmegaConf.to_object(node)


USAGE = "python -m deploy.tools.export <run dir | checkpoint> [out=DIR]"


def run_export(argv: Sequence[str]) -> Path:
    """The command line's work; returns the artifact directory."""
    import dataclasses

    path, opts, overrides = parse_args(argv, {"out": ""}, USAGE)
    if overrides:
        raise UsageError(f"export takes no env overrides ({overrides[0]!r}); usage: {USAGE}")
    src = resolve_source(path)
    if src.artifact is not None:
        raise UsageError(f"{path!r} is already an exported policy")
    parts = src.parts()
    env = dataclasses.asdict(env_config(src)) if src.config_yaml is not None else None
    if env is None:
        print(
            f"warning: no config.yaml for {path!r}: the artifact names no env "
            "(load_policy(path, env=...) then needs the env)",
            file=sys.stderr,
        )
    out = Path(opts["out"]) if opts["out"] else (src.run_dir or src.checkpoint.parent) / "policy"
    from learner.export import export_policy

    try:
        return export_policy(parts, out, env)
    except OSError as e:
        raise UsageError(f"cannot write {str(out)!r}: {e}") from None


def run_cli(work: Callable[[list[str]], T], argv: Sequence[str] | None, doc: str) -> T:
    """A command line's frame: ``-h``/``--help`` prints ``doc`` and exits 0; a
    :class:`UsageError` prints one ``error: ...`` line and exits 2; else ``work(args)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(doc.strip())
        sys.exit(0)
    try:
        return work(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    out = run_cli(run_export, argv, __doc__ or USAGE)
    print(f"exported policy: {out} (model.safetensors, policy.json)")


if __name__ == "__main__":
    main()
