"""Start-up validation helpers shared by every package's config dataclass."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` is its dotted path (e.g. ``replay.max_steps``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field {field!r}: {message}")


def require(ok: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``ok``."""
    if not ok:
        raise ConfigError(field, message)


def prefixed(prefix: str, fn, *args, **kwargs):
    """Run ``fn`` (a nested config's ``validate``) re-raising its errors under ``prefix``."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e.field}", str(e).split(": ", 1)[1]) from None
