"""Export a run's replay to a dump directory (``replay_service.dump``), for
``replay.prefill.paths`` of later runs; and the run-side steps of offline data.

    python -m deploy.tools.replay_dump runs/tmaze/2026-01-01_00-00-00 dumps/tmaze
    python -m deploy.tools.replay_dump redis://10.0.0.5:6379 dumps/run1 --namespace run1 \\
        --password-env AMAGO_REDIS_PASSWORD

The target is a replay server URL (``--namespace``, default ``amago``; the password from the
variable ``--password-env`` names, if any), or a run directory: its ``config.yaml`` says
where the replay lives: an external server (``replay.redis.url``; the password from the
variable ``deploy.redis_password_env`` names, or ``--password-env``), or the embedded
server's persisted data (``deploy.embedded_data_dir``: a server is started on a copy-free
read of it; only once that run has ended). A run with a private, unpersisted embedded
server takes its replay with it: set ``run.dump_replay_on_exit=true`` to have it write
``<run_dir>/replay_dump`` as it ends. The fresh partition is exported (``--namespace
<ns>.prefill`` exports a prefill partition); records are validated as they are read, and
the env spec (from the run's config when there is one) goes into the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from common.codec import Limits
from common.config_utils import ConfigError
from common.spec import EnvSpec
from replay_service.dump import RUN_DUMP_DIR, DumpError, DumpSummary, dump_namespace

log = logging.getLogger("amago")


# -- in a run (deploy.train) ------------------------------------------------------------------
def load_run_prefill(cfg, spec: EnvSpec) -> dict | None:
    """Load ``replay.prefill.paths`` into the run's prefill partition (when ``mix > 0``);
    prints and returns what was loaded (None when prefill is off)."""
    pre = cfg.replay.prefill
    if not pre.enabled:
        if pre.paths:
            print("prefill: off (replay.prefill.mix=0), paths not loaded", flush=True)
        return None
    from replay_service import connect
    from replay_service.prefill import load_prefill

    report = load_prefill(connect(cfg.replay.redis), cfg.replay, spec)
    print(f"{report.line()}; mix {pre.mix}", flush=True)
    return dataclasses.asdict(report)


def dump_run_replay(cfg, spec: EnvSpec, run_dir: Path) -> dict:
    """``run.dump_replay_on_exit``: the run's replay into ``<run_dir>/replay_dump``."""
    from replay_service import connect

    out = Path(run_dir) / RUN_DUMP_DIR
    limits = Limits(max_steps=cfg.replay.max_traj_steps, max_bytes=cfg.replay.max_record_bytes)
    summary = dump_namespace(
        connect(cfg.replay.redis),
        cfg.replay.redis.namespace,
        out,
        spec=spec,
        limits=limits,
        source={"run_dir": str(run_dir), "env_id": cfg.env.id},
    )
    print(_line(summary), flush=True)
    return dataclasses.asdict(summary)


def _line(s: DumpSummary) -> str:
    skipped = f", skipped {s.rejected}" if s.rejected else ""
    return (
        f"replay dump: {s.records} trajectories ({s.timesteps:,} timesteps, {s.bytes:,} bytes) "
        f"-> {s.path}{skipped}"
    )


# -- the command -------------------------------------------------------------------------------
def _run_spec(env_doc: Any) -> EnvSpec | None:
    """The env spec of a run's ``env`` section (None if it cannot be built here)."""
    try:
        from omegaconf import OmegaConf

        from common.envs.config import EnvConfig
        from common.envs.factory import env_spec

        env = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvConfig), env_doc))
        return env_spec(env)
    except Exception as e:  # noqa: BLE001 - the layout then comes from the records
        log.warning("env spec of the run not available (%s); the manifest has the layout only", e)
        return None


def dump_target(
    target: str,
    out: str | Path,
    namespace: str | None = None,
    password: str = "",
    spec: EnvSpec | None = None,
) -> DumpSummary:
    """Export the replay ``target`` names (a server URL or a run directory) to ``out``.
    Raises ``ConfigError`` / ``DumpError`` (one line) when the target cannot be read."""
    from replay_service import connect
    from replay_service.config import RedisConfig

    if "://" in target:
        rcfg = RedisConfig(url=target, password=password, namespace=namespace or "amago")
        return dump_namespace(
            connect(rcfg), rcfg.namespace, out, spec, Limits(), {"target": _redact(target)}
        )
    return _dump_run(target, out, namespace, password, spec)


def _dump_run(
    target: str, out: str | Path, namespace: str | None, password: str, spec: EnvSpec | None
) -> DumpSummary:
    """``dump_target`` of a run directory: from its server, or its persisted embedded data."""
    from replay_service import connect
    from replay_service.config import RedisConfig

    run_dir = Path(target)
    doc = _run_config(target, run_dir)
    replay, deploy = doc.get("replay") or {}, doc.get("deploy") or {}
    redis_doc = replay.get("redis") or {}
    ns = namespace or redis_doc.get("namespace") or "amago"
    defaults = Limits()
    limits = Limits(
        max_steps=int(replay.get("max_traj_steps", defaults.max_steps)),
        max_bytes=int(replay.get("max_record_bytes", defaults.max_bytes)),
    )
    spec = spec if spec is not None else _run_spec(doc.get("env") or {})
    env_id = (doc.get("env") or {}).get("id", "")
    source: dict[str, Any] = {"target": target, "run_dir": str(run_dir), "env_id": env_id}
    if redis_doc.get("shards") or int(deploy.get("embedded_shards") or 1) > 1:
        raise DumpError(
            f"{target}: its replay is sharded over several servers; dump each shard by URL "
            "(python -m deploy.tools.replay_dump redis://<shard> <out> --namespace <namespace>)"
        )
    url = redis_doc.get("url") or ""
    if url:
        env_var = deploy.get("redis_password_env") or ""
        pw = password or (os.environ.get(env_var, "") if env_var else "")
        rcfg = RedisConfig(url=url, password=pw, namespace=ns, tls=bool(redis_doc.get("tls")))
        source["target"] = _redact(url)
        return dump_namespace(connect(rcfg), ns, out, spec, limits, source)
    data_dir = _embedded_data_dir(target, deploy)
    from replay_service.server import EmbeddedServer

    with EmbeddedServer(data_dir=data_dir) as server:
        return dump_namespace(
            connect(server.redis_config(namespace=ns)), ns, out, spec, limits, source
        )


def _run_config(target: str, run_dir: Path) -> dict:
    """The run's ``config.yaml`` as a dict (``DumpError`` if ``run_dir`` has none)."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DumpError(f"{target}: neither a redis:// URL nor a run directory (no config.yaml)")
    return yaml.safe_load(cfg_path.read_text()) or {}


def _embedded_data_dir(target: str, deploy: dict) -> str:
    """The run's persisted embedded-server data directory (an error if it has none)."""
    data_dir = deploy.get("embedded_data_dir") or ""
    if not data_dir:
        raise ConfigError(
            "deploy.embedded_data_dir",
            f"{target}: the run's embedded replay server was private and unpersisted, its "
            "replay ended with it; run with run.dump_replay_on_exit=true (writes "
            f"<run_dir>/{RUN_DUMP_DIR}) or deploy.embedded_data_dir=<dir>",
        )
    if not Path(data_dir).is_dir():
        raise DumpError(f"{target}: its deploy.embedded_data_dir {data_dir!r} does not exist")
    return data_dir


def _redact(url: str) -> str:
    from replay_service.config import redact_url

    return redact_url(url)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.tools.replay_dump",
        description="Export a run's replay to a dump directory (for replay.prefill.paths).",
    )
    ap.add_argument("target", help="a run directory, or redis://host:port[/db] of a server")
    ap.add_argument("out", help="the dump directory to create (must not exist or be empty)")
    ap.add_argument("--namespace", default=None, help="replay namespace (default: the run's)")
    ap.add_argument(
        "--password-env", default="", help="environment variable holding the server password"
    )
    args = ap.parse_args(argv)
    password = os.environ.get(args.password_env, "") if args.password_env else ""
    try:
        summary = dump_target(args.target, args.out, args.namespace, password)
    except (ConfigError, DumpError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - e.g. the server cannot be reached: one line
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
