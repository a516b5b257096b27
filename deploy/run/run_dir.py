"""What the entrypoint does to a Hydra run directory before and after a run.

- :func:`scrub_secrets`: Hydra writes the composed config and the command line's overrides to
  ``<run dir>/.hydra/`` (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``) before the run
  starts; a password given on the command line (``replay.redis.password=...``, or inside a
  ``redis://user:PASSWORD@host`` URL) would stay there. Every such value is replaced by
  ``***`` (the run's own ``config.yaml`` is written without it in the first place).
- :func:`discard_if_untouched`: a config that fails validation starts nothing, so the run
  directory Hydra made for it (only ``.hydra/`` and Hydra's log file) is removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

SECRET = "***"
# ``password: value`` (YAML), ``password=value`` (an override), ``?password=value`` (a URL);
# the key may be any dotted path ending in "password" (replay.redis.password).
_KEY_VALUE = re.compile(r"(?i)(password\s*[:=]\s*)(['\"]?)([^\s'\",\]\}&]+)(\2)")
# redis://user:PASSWORD@host and rediss://:PASSWORD@host
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)([^\s@/'\"]+)(@)")


def scrub_text(text: str) -> str:
    """``text`` with every password value replaced by ``***``."""
    text = _KEY_VALUE.sub(lambda m: f"{m[1]}{m[2]}{SECRET}{m[4]}", text)
    return _URL.sub(lambda m: f"{m[1]}{SECRET}{m[3]}", text)


def scrub_secrets(hydra_dir: Path) -> list[Path]:
    """Scrub every file under ``hydra_dir`` (Hydra's ``.hydra/``); returns those changed."""
    changed = []
    for path in sorted(Path(hydra_dir).glob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        clean = scrub_text(text)
        if clean != text:
            path.write_text(clean)
            changed.append(path)
    return changed


def discard_if_untouched(run_dir: Path) -> bool:
    """Remove ``run_dir`` when it holds nothing but Hydra's ``.hydra/`` and log files (a run
    that never started); anything else in it (a user's directory given as ``hydra.run.dir``,
    an earlier run's files) keeps it. Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if not (entry.name == ".hydra" or (entry.is_file() and entry.suffix == ".log")):
            return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def save_config(cfg, path: Path) -> None:
    """The resolved config a run uses (``TrainConfig``, derived fields filled in) as YAML,
    without secrets (a password given on the command line is left out, one inside a server
    URL is ``***``: pass it through the environment variable ``deploy.redis_password_env``
    names)."""
    import dataclasses

    from omegaconf import OmegaConf

    from replay_service.config import redact_url

    r = cfg.replay.redis
    redis = dataclasses.replace(
        r, password="", url=redact_url(r.url), shards=[redact_url(u) for u in r.shards]
    )
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, redis=redis))
    OmegaConf.save(OmegaConf.structured(cfg), path)
