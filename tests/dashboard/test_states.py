"""The job-state vocabulary: one definition, mutually exclusive, and the same in
every statement that uses it (counts, list filter, state column)."""

from __future__ import annotations

import asyncpg

from kongtask import WorkerUtils
from kongtask.db import quote_ident
from kongtask.queries.dashboard import JOB_STATES, STATE_CASE, DashboardQueries, ListShape

from .support import shape_job

#: Each case: how to shape the job, and the state it must then be in.
CASES: list[tuple[str, dict[str, object], str]] = [
    ("due, never tried", {}, "available"),
    ("future, never tried", {"run_at": "1 hour"}, "scheduled"),
    ("failed once, in backoff", {"attempts": 1, "run_at": "20 s", "last_error": "x"}, "retrying"),
    ("failed once, retry due", {"attempts": 1, "run_at": "-1 s", "last_error": "x"}, "available"),
    ("out of attempts", {"attempts": 25, "last_error": "boom"}, "failed"),
    ("locked just now", {"attempts": 1, "locked_at": "0 s", "locked_by": "w1"}, "running"),
    (
        "locked while out of attempts",
        {"attempts": 25, "locked_at": "-1 min", "locked_by": "w1"},
        "running",
    ),
    (
        "lock older than 4 h",
        {"attempts": 1, "locked_at": "-5 hours", "locked_by": "w"},
        "available",
    ),
    (
        "stale lock, out of attempts",
        {"attempts": 25, "locked_at": "-5 hours", "locked_by": "w"},
        "failed",
    ),
]


async def _seed(utils: WorkerUtils, conn: asyncpg.Connection, schema: str) -> dict[int, str]:
    expected = {}
    for name, columns, state in CASES:
        job = await utils.add_job("t", {"case": name})
        if columns:
            await shape_job(conn, schema, job.id, **columns)
        expected[job.id] = state
    return expected


async def test_every_row_is_in_exactly_one_state(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    expected = await _seed(utils, conn, schema)
    matches = " + ".join(f"({predicate})::int" for predicate in JOB_STATES.values())
    rows = await conn.fetch(
        f"select j.id, {matches} as matches, {STATE_CASE} as state "
        f"from {quote_ident(schema)}._private_jobs as j"
    )
    assert {r["id"]: r["matches"] for r in rows} == dict.fromkeys(expected, 1)
    assert {r["id"]: r["state"] for r in rows} == expected


async def test_counts_and_list_filter_agree_with_the_state_column(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    expected = await _seed(utils, conn, schema)
    q = DashboardQueries(schema)
    (row,) = await conn.fetch(q.state_counts)
    for state in JOB_STATES:
        want = sorted(i for i, s in expected.items() if s == state)
        assert row[state] == len(want), state
        listed = await conn.fetch(q.job_list(ListShape(state=state, descending=False)), 100)
        assert [r["id"] for r in listed] == want, state
        assert {r["state"] for r in listed} <= {state}


async def test_a_full_sample_counts_what_an_exact_count_does(
    utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    await _seed(utils, conn, schema)
    q = DashboardQueries(schema)
    exact = [dict(r) for r in await conn.fetch(q.state_counts)]
    sampled = [dict(r) for r in await conn.fetch(q.state_counts_sampled, 100.0)]
    for row in exact + sampled:
        row.pop("oldest_due_age")
    assert sampled == exact
