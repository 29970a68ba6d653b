"""kongtask's web dashboard: see the queue, the workers and the failures, and act on them.

Install the extra (``pip install "kongtask[dashboard]"``: Starlette, Jinja2,
uvicorn), then either serve it by itself::

    kongtask dashboard -c postgresql://... [--port 8080] [--read-only]

or mount it in your own Starlette/FastAPI application, behind your own auth::

    from kongtask.dashboard import create_app
    app.mount("/jobs", create_app(pool_or_dsn, schema="graphile_worker"))

Importing this package needs nothing beyond kongtask itself (the CLI imports
it for its ``dashboard`` command); :func:`create_app` imports the web stack.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import asyncpg

    from ..crontab import CronItem
    from .app import Dashboard


class DashboardNotInstalled(ConfigError, ImportError):
    """The web stack of the ``dashboard`` extra is missing (the CLI's exit code 2)."""


#: What the ``dashboard`` extra installs (python-multipart is imported as ``multipart``
#: by older releases, ``python_multipart`` by newer ones).
WEB_STACK = (("starlette",), ("jinja2",), ("uvicorn",), ("python_multipart", "multipart"))


def require_web_stack() -> None:
    """Raise DashboardNotInstalled, naming the missing package, unless the extra is there."""
    for names in WEB_STACK:
        if not any(importlib.util.find_spec(name) for name in names):
            raise DashboardNotInstalled(
                f"the dashboard needs its extra: pip install 'kongtask[dashboard]' "
                f"(missing: {names[0]})"
            )


def create_app(
    dsn_or_pool: str | asyncpg.Pool | None = None,
    *,
    schema: str | None = None,
    read_only: bool = False,
    crontab: str | Sequence[CronItem] | None = None,
    secret: bytes | str | None = None,
    refresh_seconds: float = 5.0,
    dead_worker_timeout: float = 30.0,
    exact_count_limit: int = 100_000,
    sample_rows: int = 30_000,
    page_size: int = 50,
    query_timeout: float = 10.0,
    throughput_interval: float = 5.0,
    history_seconds: float = 600.0,
) -> Dashboard:
    """The dashboard as an ASGI application.

    ``dsn_or_pool``: a DSN (the dashboard opens a pool of up to 4 connections
    on its first request and closes it with :meth:`Dashboard.aclose`, or at
    shutdown when it is the top-level app) or an ``asyncpg.Pool`` it borrows
    and never closes; None reads ``DATABASE_URL`` / ``PG*``.

    * ``read_only``: no buttons, and every POST refused.
    * ``crontab``: the workers' crontab (text or items), for each item's next
      tick and whether it is behind.
    * ``secret``: signs the CSRF tokens; random per process by default, so
      give one when several processes serve the same dashboard.
    * ``refresh_seconds``: how often open pages refresh their live parts.
    * ``dead_worker_timeout``: heartbeat silence after which a worker is shown
      dead (the pools' own default is 30 s).
    * ``exact_count_limit``: up to this many jobs (PostgreSQL's estimate) the
      overview counts exactly; above it, from a block sample of about
      ``sample_rows`` rows, shown as estimates.
    * ``page_size``: jobs per page of the list (at most 500).
    * ``query_timeout``: seconds a page's query may take before the page says so.
    * ``throughput_interval`` / ``history_seconds``: how often the row
      counters behind the jobs/s chart are sampled, and how much is kept.
    """
    require_web_stack()
    from .app import Dashboard, make_options

    options = make_options(
        schema,
        read_only=read_only,
        refresh_seconds=refresh_seconds,
        dead_worker_timeout=dead_worker_timeout,
        exact_count_limit=exact_count_limit,
        sample_rows=sample_rows,
        page_size=page_size,
        query_timeout=query_timeout,
        throughput_interval=throughput_interval,
        history_seconds=history_seconds,
    )
    return Dashboard(dsn_or_pool, options, crontab=crontab, secret=secret)


__all__ = ["DashboardNotInstalled", "create_app", "require_web_stack"]
