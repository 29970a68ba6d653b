"""Where options come from: explicit arguments, then the environment, then defaults."""

from __future__ import annotations

import os

DEFAULT_SCHEMA = "graphile_worker"


def resolve_schema(schema: str | None = None) -> str:
    """Schema name: argument, ``KONGTASK_SCHEMA``, ``GRAPHILE_WORKER_SCHEMA``, default.

    graphile-worker's variable is honoured so a mixed Node/Python deployment
    can share one setting.
    """
    if schema:
        return schema
    return (
        os.environ.get("KONGTASK_SCHEMA")
        or os.environ.get("GRAPHILE_WORKER_SCHEMA")
        or DEFAULT_SCHEMA
    )


def env_int(name: str, default: int) -> int:
    """An integer option from the environment, with an error naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        from .errors import ConfigError

        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
