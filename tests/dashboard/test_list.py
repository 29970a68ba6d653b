"""The jobs list: keyset pages that neither skip nor repeat, and filters whose text
is matched literally (never as SQL, LIKE patterns or markup)."""

from __future__ import annotations

import asyncpg

from kongtask import JobSpec, WorkerUtils
from kongtask.dashboard.filters import JobFilter
from kongtask.db import quote_ident
from kongtask.queries.dashboard import DashboardQueries

from .support import shape_job


async def _page(
    conn: asyncpg.Connection,
    q: DashboardQueries,
    job_filter: JobFilter,
    size: int,
    *,
    after: int | None = None,
    before: int | None = None,
) -> list[int]:
    at = before if before is not None else after
    shape = job_filter.shape(cursor=at is not None, backwards=before is not None)
    rows = await conn.fetch(
        q.job_list(shape), *job_filter.values(), *([at] if at is not None else []), size
    )
    ids = [r["id"] for r in rows]
    return ids[::-1] if before is not None else ids


async def test_pages_walk_every_job_once_both_ways(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    await utils.add_jobs([JobSpec("t", {"n": n}) for n in range(237)])
    q = DashboardQueries(schema)
    for oldest_first in (False, True):
        all_ids = sorted(
            r["id"] for r in await conn.fetch(f"select id from {quote_ident(schema)}._private_jobs")
        )
        job_filter = JobFilter(oldest_first=oldest_first)
        pages = [await _page(conn, q, job_filter, 50)]
        late: list[int] = []
        while len(pages[-1]) == 50:
            # Jobs added while paging get higher ids: newest first they land before
            # the first page, oldest first after the last; never inside the walk.
            late.append((await utils.add_job("t", {"late": True})).id)
            pages.append(await _page(conn, q, job_filter, 50, after=pages[-1][-1]))
        walked = [i for page in pages for i in page]
        assert walked == (all_ids + late if oldest_first else all_ids[::-1])
        # Back from the last page, a page at a time, gives the same pages.
        back = [pages[-1]]
        while back[-1][0] != pages[0][0]:
            back.append(await _page(conn, q, job_filter, 50, before=back[-1][0]))
        assert back[::-1] == pages


async def test_filters_match_their_text_literally(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    specs = [
        JobSpec("mail", {}, queue_name="q1", job_key="k-1"),
        JobSpec("mail", {}, queue_name="q2"),
        JobSpec("sms", {}, queue_name="q1"),
        JobSpec("sms", {}),
        JobSpec("pct%_task", {}),
        JobSpec("pctXXtask", {}),
    ]
    jobs = {(j.task_identifier, j.queue_name, j.key): j.id for j in await utils.add_jobs(specs)}
    mail_q1 = jobs[("mail", "q1", "k-1")]
    errors = {
        mail_q1: "Timeout: SMTP 100% busy",
        jobs[("sms", "q1", None)]: "ValueError: bad 'quote' \\ here",
        jobs[("sms", None, None)]: "timeout: 100x busy",
    }
    for job_id, message in errors.items():
        await shape_job(conn, schema, job_id, attempts=1, last_error=message, run_at="1 hour")
    held = jobs[("mail", "q2", None)]
    await shape_job(conn, schema, held, attempts=1, locked_at="0 s", locked_by="pool 'x'")
    q = DashboardQueries(schema)

    async def ids(**params: str) -> set[int]:
        return set(await _page(conn, q, JobFilter.from_params(params), 100))

    assert await ids(task="mail") == {mail_q1, jobs[("mail", "q2", None)]}
    assert await ids(queue="q1") == {mail_q1, jobs[("sms", "q1", None)]}
    assert await ids(task="mail", queue="q1") == {mail_q1}
    assert await ids(key="k-1") == {mail_q1}
    assert await ids(key="k-") == set()  # keys match exactly
    # Case-insensitive substring; % and _ are plain characters, not patterns.
    assert await ids(error="100% BUSY") == {mail_q1}
    assert await ids(error="'quote' \\") == {jobs[("sms", "q1", None)]}
    assert await ids(error="timeout") == {mail_q1, jobs[("sms", None, None)]}
    assert await ids(task="pct%_task") == {jobs[("pct%_task", None, None)]}
    assert await ids(task="no such task") == set()
    assert await ids(worker="pool 'x'") == {held}
    assert await ids(worker="pool", state="running") == set()
    assert await ids(state="retrying", task="sms") == {
        jobs[("sms", "q1", None)],
        jobs[("sms", None, None)],
    }
