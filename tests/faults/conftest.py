"""Fixtures of the fault suite: private clusters, and a scenario per test.

Every fault test runs against PostgreSQL clusters it created (``tests/pgcluster.py``):
one shared by the tests that leave the server alone, in a database of each
test's own, and one per test for those that restart or kill the server.
Locally a machine without ``initdb`` skips them; under ``CI=true`` it fails.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .. import pgcluster
from ..interop.support import in_ci
from .harness import (
    TASKS_MODULE,
    WORKER_APP,
    Fleet,
    ObserverLog,
    Verdict,
    analyse,
    wait_for,
)

SCHEMA = "graphile_worker"
#: Every log line names its database, so a test can read its own lines of a shared server.
CLUSTER_SETTINGS = {"max_connections": "300", "log_line_prefix": "'%m [%p] db=%d '"}


def _require_clusters() -> None:
    problem = pgcluster.available()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"fault tests must run in CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[pgcluster.Cluster]:
    """A private cluster for every fault test that does not restart or reconfigure it."""
    _require_clusters()
    with pgcluster.private_cluster(CLUSTER_SETTINGS) as cluster:
        yield cluster


@pytest.fixture
def own_cluster() -> Iterator[pgcluster.Cluster]:
    """A private cluster for one test that restarts or kills it."""
    _require_clusters()
    with pgcluster.private_cluster(CLUSTER_SETTINGS) as cluster:
        yield cluster


def database_dsn(cluster: pgcluster.Cluster, database: str, port: int | None = None) -> str:
    return f"postgresql://postgres@127.0.0.1:{port or cluster.port}/{database}"


class Scenario:
    """One test's database (migrated), observer log, task module and workers."""

    def __init__(
        self, cluster: pgcluster.Cluster, database: str, workdir: Path, conn: asyncpg.Connection
    ) -> None:
        self.cluster = cluster
        self.database = database
        self.dsn = database_dsn(cluster, database)
        self.worker_dsn = f"{self.dsn}?application_name={WORKER_APP}"
        self.workdir = workdir
        self.conn = conn
        self.schema = SCHEMA
        self.observer = ObserverLog(workdir / "observer.log")
        (workdir / "faults_tasks.py").write_text(TASKS_MODULE)
        self.fleet = Fleet(self.worker_dsn, SCHEMA, workdir, self.observer.path)
        self.job_ids: list[int] = []

    async def add(self, specs: Sequence[JobSpec]) -> list[int]:
        """Add jobs in one statement; their ids, also remembered for the verdict."""
        async with WorkerUtils(self.dsn, schema=SCHEMA, max_pool_size=1) as utils:
            jobs = await utils.add_jobs(list(specs))
        ids = sorted(job.id for job in jobs)
        self.job_ids.extend(ids)
        return ids

    async def query(self, sql: str, *args: Any) -> Any:
        """One value, reconnecting once if the server restarted under the connection."""
        try:
            return await self.conn.fetchval(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.reconnect()
            return await self.conn.fetchval(sql, *args)

    async def reconnect(self) -> None:
        if not self.conn.is_closed():
            self.conn.terminate()
        self.conn = await asyncpg.connect(self.dsn)

    async def jobs_left(self) -> int:
        return int(await self.query(f"select count(*) from {quote_ident(SCHEMA)}._private_jobs"))

    async def remaining(self) -> set[int]:
        rows = await self.conn.fetch(f"select id from {quote_ident(SCHEMA)}._private_jobs")
        return {row["id"] for row in rows}

    async def job(self, job_id: int) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            f"select * from {quote_ident(SCHEMA)}._private_jobs where id = $1", job_id
        )

    async def wait_drained(self, timeout: float, left: int = 0) -> None:
        """Until at most ``left`` jobs remain, the workers staying alive."""

        async def drained() -> bool:
            return await self.jobs_left() <= left

        what = f"the queue to drain to {left} job(s)"
        await wait_for(drained, what, timeout=timeout, fleet=self.fleet, interval=0.1)

    async def verdict(self) -> Verdict:
        """What the log says, once the workers are gone; with the locks left behind."""
        verdict = analyse(
            self.observer.read(), self.fleet.deaths(), self.job_ids, await self.remaining()
        )
        s = quote_ident(SCHEMA)
        verdict.locked = await self.conn.fetchval(
            f"select (select count(*) from {s}._private_jobs where locked_at is not null)"
            f" + (select count(*) from {s}._private_job_queues where locked_at is not null)"
        )
        return verdict

    def server_log(self) -> list[str]:
        """The cluster's log lines about this test's database."""
        return [line for line in self.cluster.log().splitlines() if f"db={self.database} " in line]


ScenarioFactory = Callable[..., AbstractAsyncContextManager[Scenario]]


@pytest.fixture
def scenarios(tmp_path: Path) -> ScenarioFactory:
    """``async with scenarios(cluster, settings) as s``: a scenario on ``cluster``,
    its database created with ``settings`` (``ALTER DATABASE ... SET``), dropped after."""

    @asynccontextmanager
    async def make(
        cluster: pgcluster.Cluster, settings: Mapping[str, str] | None = None
    ) -> AsyncIterator[Scenario]:
        database = f"faults_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(cluster.dsn)
        try:
            await admin.execute(f"create database {quote_ident(database)}")
            for name, value in (settings or {}).items():
                # A test's own constants; ALTER DATABASE takes no bind parameters.
                await admin.execute(
                    f"alter database {quote_ident(database)} set {quote_ident(name)} = '{value}'"
                )
        finally:
            await admin.close()
        dsn = database_dsn(cluster, database)
        async with WorkerUtils(dsn, schema=SCHEMA, max_pool_size=1) as utils:
            await utils.migrate()
        workdir = tmp_path / database
        workdir.mkdir()
        workdir.chmod(0o777)
        scenario = Scenario(cluster, database, workdir, await asyncpg.connect(dsn))
        try:
            yield scenario
        finally:
            await scenario.fleet.close()
            await scenario.conn.close()
            if cluster.pid() is not None:
                admin = await asyncpg.connect(cluster.dsn)
                try:
                    await admin.execute(
                        f"drop database if exists {quote_ident(database)} with (force)"
                    )
                finally:
                    await admin.close()

    return make


@pytest.fixture
async def scenario(
    shared_cluster: pgcluster.Cluster, scenarios: ScenarioFactory
) -> AsyncIterator[Scenario]:
    async with scenarios(shared_cluster) as made:
        yield made


def work(count: int, *, ms: float = 0, **options: Any) -> list[JobSpec]:
    """``count`` jobs of the observed task running ``ms`` each (options go to JobSpec)."""
    return [JobSpec("work", {"ms": ms}, **options) for _ in range(count)]
