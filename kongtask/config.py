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
