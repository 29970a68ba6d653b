"""Every SQL statement kongtask runs, kept apart from the code that runs them.

One module per concern, each building its statements once per schema (the
schema name quoted by :func:`kongtask.db.quote_ident`, every value a bind
parameter): ``jobs`` holds what clients and worker pools run against the
queue, ``cron`` the scheduler's, ``inspect`` those of ``kongtask jobs`` and
the Prometheus gauges, ``schema`` those around migrations, ``session`` the
lease's transaction control, ``dashboard`` the web dashboard's. The DDL
(schema and migrations) lives in the top-level ``sql/``.
``tests/test_sql_location.py`` fails on SQL anywhere else in the package.
"""

from __future__ import annotations

from .jobs import Queries

__all__ = ["Queries"]
