"""Brings a schema to graphile-worker 0.17's layout, or says why it cannot.

kongtask knows the schema as it stands after graphile-worker's migration 19
and installs it in one transaction, recording migrations 1-19 with
graphile-worker's ``breaking`` flags so a graphile-worker 0.17 pool sees a
database it migrated itself.

Decision on older graphile-worker schemas (migration < 19): refuse, naming
the version found. Upgrading them step by step would mean re-implementing
every historical data migration of graphile-worker; its own
``graphile-worker --schema-only`` (0.17) does that correctly, after which
kongtask accepts the database.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from .db import quote_ident
from .errors import InstallIncomplete, SchemaTooNew, SchemaTooOld
from .queries import schema as q
from .record import FrozenRecord

#: The newest graphile-worker migration whose schema kongtask reproduces.
LATEST_MIGRATION = 19
#: Migrations graphile-worker marks as breaking: older workers must stop.
BREAKING_MIGRATIONS = (1, 3, 11, 13, 14, 16, 19)
#: kongtask's own track (objects graphile-worker never touches), applied in order.
KONGTASK_MIGRATIONS = (
    "kongtask_0001_workers.sql",
    "kongtask_0002_fetch_indexes.sql",
    "kongtask_0003_worker_processes.sql",
)
#: Objects of kongtask's track; everything else in the schema is graphile-worker's.
KONGTASK_OBJECTS = (
    "_kongtask_jobs_claim_index",
    "_kongtask_jobs_lease_index",
    "_kongtask_migrations",
    "_kongtask_migrations_pkey",
    "_kongtask_workers",
    "_kongtask_workers_pkey",
)

#: What a migration meets when another installed the same objects while it
#: waited for the lock (see :func:`migrate`).
_CREATED_MEANWHILE = (
    asyncpg.DuplicateSchemaError,
    asyncpg.DuplicateTableError,
    asyncpg.DuplicateObjectError,
    asyncpg.DuplicateFunctionError,
    asyncpg.UniqueViolationError,
)


class MigrationResult(FrozenRecord):
    """What :func:`migrate` found and did.

    ``installed`` is True only when this call created the schema;
    ``kongtask_applied`` counts the migrations of kongtask's own track this
    call applied (to a schema installed before, by graphile-worker or an
    older kongtask).
    """

    __slots__ = ("schema", "installed", "version", "kongtask_version", "kongtask_applied")  # noqa: RUF023
    schema: str
    installed: bool
    version: int
    kongtask_version: int
    kongtask_applied: int

    def __init__(
        self,
        schema: str,
        installed: bool,
        version: int,
        kongtask_version: int = len(KONGTASK_MIGRATIONS),
        kongtask_applied: int = 0,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "schema", schema)
        set_field(self, "installed", installed)
        set_field(self, "version", version)
        set_field(self, "kongtask_version", kongtask_version)
        set_field(self, "kongtask_applied", kongtask_applied)

    @property
    def action(self) -> str:
        """``installed``, ``upgraded`` or ``none``: what this call changed."""
        if self.installed:
            return "installed"
        return "upgraded" if self.kongtask_applied else "none"

    def summary(self) -> str:
        """One sentence saying what happened, for people (``kongtask migrate``)."""
        name = f"schema {self.schema!r}"
        at = f"graphile-worker migration {self.version}, kongtask migration {self.kongtask_version}"
        if self.installed:
            return f"installed {name} at {at}"
        if self.kongtask_applied:
            count = self.kongtask_applied
            return f"upgraded {name} to {at} ({count} kongtask migration(s) applied)"
        return f"{name} is already at {at}: nothing to do"


#: Where the SQL files are looked for, in this order. The repository keeps the one
#: copy in its top-level ``sql/``; the build copies it into the package (``kongtask/sql``
#: inside a wheel, or an install built from the sdist), while a source checkout or an
#: editable install finds it beside the package. The packaged copy comes first so an
#: installed kongtask never reads a stray ``site-packages/sql`` of another project.
SQL_DIRS: tuple[Path, ...] = (
    Path(__file__).parent / "sql",
    Path(__file__).parent.parent / "sql",
)


def read_sql(filename: str) -> str:
    """The text of one of kongtask's SQL files; says every place it looked when missing.

    Plain paths rather than ``importlib.resources``: kongtask ships compiled
    extensions, so it never runs from a zip, and that import would add ~3 ms to
    every start (measured with ``-X importtime`` on top of kongtask's own imports).
    """
    for folder in SQL_DIRS:
        path = folder / filename
        if path.is_file():
            return path.read_text("utf-8")
    tried = ", ".join(str(folder / filename) for folder in SQL_DIRS)
    raise InstallIncomplete(
        f"kongtask's SQL file {filename!r} is missing (looked in: {tried}); the install is "
        "incomplete: reinstall kongtask, or in a source checkout restore the top-level sql/"
    )


def schema_sql(schema: str, filename: str = "schema_0_17.sql") -> str:
    """A DDL file with the schema name substituted as a quoted identifier."""
    template = read_sql(filename)
    quoted = quote_ident(schema)
    tag = "$kongtask$"
    counter = 0
    while tag in quoted:  # a dollar-quote tag must not occur inside the body
        counter += 1
        tag = f"$kongtask{counter}$"
    return template.replace("$__BODY__$", tag).replace("__SCHEMA__", quoted)


async def read_version(conn: asyncpg.Connection, schema: str) -> tuple[int, int] | None:
    """``(latest, latest_breaking)`` migration ids, or None if never migrated."""
    table = f"{quote_ident(schema)}.migrations"
    exists = await conn.fetchval(q.TABLE_EXISTS, table)
    if not exists:
        return None
    row = await conn.fetchrow(q.versions_sql(schema))
    assert row is not None
    return int(row["latest"]), int(row["breaking"])


def check_version(schema: str, version: tuple[int, int]) -> None:
    """Raise if kongtask cannot work on a schema at ``version``."""
    latest, latest_breaking = version
    if latest_breaking > LATEST_MIGRATION:
        raise SchemaTooNew(
            f"schema {schema!r} has breaking migration {latest_breaking}, newer than "
            f"migration {LATEST_MIGRATION} that this kongtask understands; upgrade kongtask"
        )
    if latest < LATEST_MIGRATION:
        raise SchemaTooOld(
            f"schema {schema!r} is at graphile-worker migration {latest}; kongtask needs "
            f"{LATEST_MIGRATION}. Run graphile-worker 0.17's migration once "
            f"(npx graphile-worker@0.17 --schema-only) to upgrade it"
        )


async def installed_track(conn: asyncpg.Connection, schema: str) -> int:
    """Check a schema without changing it (raising what :func:`check_version` raises,
    or SchemaTooOld when it is not installed); returns how far kongtask's own track
    is applied (0 for a schema migrated only by graphile-worker), read in the same
    round trip."""
    current = await _installed_versions(conn, schema)
    if current is None:
        raise SchemaTooOld(f"schema {schema!r} is not installed; run `kongtask migrate` first")
    check_version(schema, current[0])
    return current[1]


async def migrate(conn: asyncpg.Connection, schema: str = "graphile_worker") -> MigrationResult:
    """Install the schema if missing; refuse unknown breaking or too-old versions.

    Safe to run from many processes at once: a transaction-scoped advisory
    lock on the schema name serialises them, and the loser finds the schema
    installed.

    Unlike graphile-worker, a fresh install sends no ``worker:migrate``
    notification: no pool can be working on a schema that did not exist, and
    the channel is not schema-scoped, so the message would only stop pools
    on *other* schemas of the same database.
    """
    current = await _installed_versions(conn, schema)
    if current is not None and current[1] >= len(KONGTASK_MIGRATIONS):
        # Fast path for every start of an installed schema: two reads, no lock.
        check_version(schema, current[0])
        return MigrationResult(schema=schema, installed=False, version=current[0][0])
    try:
        return await _migrate_locked(conn, schema)
    except _CREATED_MEANWHILE:
        # Waiting for the lock does not refresh this backend's catalog caches
        # (a transaction's start does): after waiting for another installer,
        # they can still say "no such schema" and the attempt meets the objects
        # it tried to create. The next transaction sees them.
        return await _migrate_locked(conn, schema)


async def _migrate_locked(conn: asyncpg.Connection, schema: str) -> MigrationResult:
    """Install or upgrade in one transaction, under a lock on the schema's name.

    The lock belongs to the transaction, so a transaction-pooling proxy
    (PgBouncer), which may run each transaction on another server connection,
    can neither leave it behind on one nor release it early.
    """
    async with conn.transaction():
        await conn.execute(q.MIGRATION_LOCK, "kongtask:migrate:" + schema)
        return await _install_or_upgrade(conn, schema)


async def _install_or_upgrade(conn: asyncpg.Connection, schema: str) -> MigrationResult:
    version = await read_version(conn, schema)
    if version is not None:
        check_version(schema, version)
        applied = await _migrate_kongtask_track(conn, schema)
        return MigrationResult(
            schema=schema, installed=False, version=version[0], kongtask_applied=applied
        )
    await conn.execute(q.create_schema_sql(schema))
    await conn.execute(schema_sql(schema))
    await conn.execute(
        q.record_migrations_sql(schema),
        list(BREAKING_MIGRATIONS),
        LATEST_MIGRATION,
    )
    applied = await _migrate_kongtask_track(conn, schema)
    return MigrationResult(
        schema=schema, installed=True, version=LATEST_MIGRATION, kongtask_applied=applied
    )


async def _installed_versions(
    conn: asyncpg.Connection, schema: str
) -> tuple[tuple[int, int], int] | None:
    """((latest, latest_breaking), kongtask track version), or None when graphile-worker's
    part is missing; the track version is 0 when kongtask's table is missing."""
    if not conn.is_in_transaction():
        # Every start of an installed schema comes here: one read of both tables,
        # and the careful existence checks only when it fails. (Inside a
        # transaction a failed statement would abort it, so there the checks go first.)
        try:
            versions = await conn.fetchrow(q.versions_sql(schema, track=True))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            pass
        else:
            assert versions is not None
            return (int(versions["latest"]), int(versions["breaking"])), int(versions["track"])
    quoted = quote_ident(schema)
    row = await conn.fetchrow(
        q.TABLES_EXIST,
        f"{quoted}.migrations",
        f"{quoted}._kongtask_migrations",
    )
    assert row is not None
    if not row["gw"]:
        return None
    versions = await conn.fetchrow(q.versions_sql(schema, track=row["kt"]))
    assert versions is not None
    return (int(versions["latest"]), int(versions["breaking"])), int(versions["track"])


async def _migrate_kongtask_track(conn: asyncpg.Connection, schema: str) -> int:
    """Apply kongtask's own migrations that are missing (inside the caller's transaction);
    returns how many it applied.

    A database migrated by a newer kongtask may hold numbers we do not know;
    those only ever add objects, so an older kongtask keeps working without them.
    """
    await conn.execute(q.create_track_table_sql(schema))
    applied = {row[0] for row in await conn.fetch(q.applied_track_sql(schema))}
    count = 0
    for number, filename in enumerate(KONGTASK_MIGRATIONS, start=1):
        if number in applied:
            continue
        await conn.execute(schema_sql(schema, filename))
        await conn.execute(q.record_track_sql(schema), number)
        count += 1
    return count
