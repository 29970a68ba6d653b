"""The statements that install and inspect the schema itself (``kongtask migrate``).

The DDL of the schema lives in the top-level ``sql/``; here are the small
statements around it: which version is installed, the advisory lock that
serialises migrations, and the records of applied migrations. Every builder
quotes the schema name with :func:`kongtask.db.quote_ident`; values are bind
parameters.
"""

from __future__ import annotations

from ..db import quote_ident

__all__ = [
    "MIGRATION_LOCK",
    "TABLES_EXIST",
    "TABLE_EXISTS",
    "applied_track_sql",
    "create_schema_sql",
    "create_track_table_sql",
    "record_migrations_sql",
    "record_track_sql",
    "versions_sql",
]

#: Whether the relation named by $1 (schema-qualified, quoted) exists.
TABLE_EXISTS = "select to_regclass($1) is not null"
#: Whether graphile-worker's ``migrations`` ($1) and kongtask's track table ($2) exist.
TABLES_EXIST = "select to_regclass($1) is not null as gw, to_regclass($2) is not null as kt"
#: The lock on the key text $1 that serialises migrations, held until the
#: transaction that takes it ends.
MIGRATION_LOCK = "select pg_advisory_xact_lock(hashtext($1))"


def versions_sql(schema: str, *, track: bool | None = None) -> str:
    """``latest`` and ``breaking`` graphile-worker migration ids; with ``track`` given,
    also ``track``, kongtask's own track version (0 when ``track`` is False: its
    table is missing)."""
    s = quote_ident(schema)
    if track is None:
        extra = ""
    elif track:
        extra = f", (select coalesce(max(id), 0) from {s}._kongtask_migrations) as track"
    else:
        extra = ", 0 as track"
    return (
        f"select coalesce(max(id), 0) as latest, "
        f"coalesce(max(id) filter (where breaking), 0) as breaking{extra} "
        f"from {s}.migrations"
    )


def create_schema_sql(schema: str) -> str:
    return f"create schema if not exists {quote_ident(schema)}"


def record_migrations_sql(schema: str) -> str:
    """Record graphile-worker migrations 1..$2 as applied, $1 the breaking ones."""
    return (
        f"insert into {quote_ident(schema)}.migrations (id, breaking) "
        "select n, n = any($1::int[]) from generate_series(1, $2::int) as n"
    )


def create_track_table_sql(schema: str) -> str:
    return (
        f"create table if not exists {quote_ident(schema)}._kongtask_migrations ("
        "id integer not null primary key, ts timestamp with time zone not null default now())"
    )


def applied_track_sql(schema: str) -> str:
    return f"select id from {quote_ident(schema)}._kongtask_migrations"


def record_track_sql(schema: str) -> str:
    """Record kongtask track migration $1 as applied."""
    return f"insert into {quote_ident(schema)}._kongtask_migrations (id) values ($1)"
