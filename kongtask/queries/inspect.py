"""The statements of ``kongtask jobs | retry | unlock`` and of the Prometheus queue gauges.

Each builder takes the schema name and quotes it with
:func:`kongtask.db.quote_ident`; every value is a bind parameter. The
commands that run them live in :mod:`kongtask.inspect_cli`; the gauges in
:mod:`kongtask.metrics` share :func:`queue_counts_sql` so both mean the same
thing by *available*, *scheduled*, *locked* and *failed*.
"""

from __future__ import annotations

from ..db import quote_ident
from .schema import TABLE_EXISTS

__all__ = [
    "DATABASE_NOW",
    "TABLE_EXISTS",
    "failed_count_sql",
    "failed_sql",
    "locked_by_sql",
    "oldest_due_sql",
    "queue_counts_sql",
    "workers_sql",
]

#: The database's clock, so a client clock running ahead cannot delay a retry.
DATABASE_NOW = "select now()"


def _task_queue_filter(s: str) -> str:
    """Filters on $1 task identifier and $2 queue name (null = any), resolved to
    ids once, so the scan of the jobs table compares integers."""
    return (
        f"($1::text is null or j.task_id = "
        f"(select t.id from {s}._private_tasks as t where t.identifier = $1::text)) "
        f"and ($2::text is null or j.job_queue_id = "
        f"(select q.id from {s}._private_job_queues as q where q.queue_name = $2::text))"
    )


def queue_counts_sql(schema: str, *, by_queue: bool = True) -> str:
    """Job counts per task (and queue) and state, plus the oldest due job's wait.

    Parameters: ``$1`` task identifier and ``$2`` queue name to filter on, both
    optional (the statement also runs with none). States: *available* is due
    and unlocked; *scheduled* waits for its ``run_at``; *locked* is held by a
    worker (or by a dead one, until its lock is 4 hours old); *failed* has used
    up its attempts and will not run again; *untried* is available and due
    but never attempted (``kongtask jobs`` uses it to spot tasks no worker
    seems to take). Shared by ``kongtask jobs`` and the Prometheus gauges so
    both mean the same thing. One pass over the jobs table; the names are
    joined after grouping.
    """
    s = quote_ident(schema)
    queue_col = "j.job_queue_id" if by_queue else "null::int"
    return f"""
with c as (
  select j.task_id, {queue_col} as job_queue_id,
    count(*) filter (where j.is_available and j.run_at <= now()) as available,
    count(*) filter (where j.is_available and j.run_at > now()) as scheduled,
    count(*) filter (where j.locked_at is not null) as locked,
    count(*) filter (where j.locked_at is null and j.attempts >= j.max_attempts) as failed,
    extract(epoch from now() - min(j.run_at)
      filter (where j.is_available and j.run_at <= now()))::float8 as oldest_due_age,
    count(*) filter (where j.is_available and j.run_at <= now() and j.attempts = 0) as untried,
    extract(epoch from now() - min(j.run_at)
      filter (where j.is_available and j.run_at <= now() and j.attempts = 0))::float8
      as oldest_untried_age
  from {s}._private_jobs as j
  where {_task_queue_filter(s)}
  group by 1, 2
)
select t.identifier as task_identifier, q.queue_name,
  c.available, c.scheduled, c.locked, c.failed, c.oldest_due_age,
  c.untried, c.oldest_untried_age
from c
join {s}._private_tasks as t on t.id = c.task_id
left join {s}._private_job_queues as q on q.id = c.job_queue_id
order by t.identifier, q.queue_name nulls first"""


def oldest_due_sql(schema: str) -> str:
    """The due, unlocked job that has waited longest; $1 task, $2 queue (null = any)."""
    s = quote_ident(schema)
    return f"""
select j.id, t.identifier as task_identifier, q.queue_name, j.run_at, j.attempts,
  j.max_attempts, j.priority, extract(epoch from now() - j.run_at)::float8 as age
from {s}._private_jobs as j
join {s}._private_tasks as t on t.id = j.task_id
left join {s}._private_job_queues as q on q.id = j.job_queue_id
where j.is_available and j.run_at <= now() and {_task_queue_filter(s)}
order by j.run_at, j.id
limit 1"""


def failed_sql(schema: str) -> str:
    """Permanently failed jobs, most recently failed first; $3 limit (null = all)."""
    s = quote_ident(schema)
    return f"""
select j.id, t.identifier as task_identifier, q.queue_name, j.attempts, j.max_attempts,
  j.updated_at, j.key, j.last_error
from {s}._private_jobs as j
join {s}._private_tasks as t on t.id = j.task_id
left join {s}._private_job_queues as q on q.id = j.job_queue_id
where j.locked_at is null and j.attempts >= j.max_attempts and {_task_queue_filter(s)}
order by j.updated_at desc, j.id desc
limit $3::bigint"""


def failed_count_sql(schema: str) -> str:
    """How many jobs :func:`failed_sql` would list without its limit."""
    s = quote_ident(schema)
    return (
        f"select count(*) from {s}._private_jobs as j "
        f"where j.locked_at is null and j.attempts >= j.max_attempts and {_task_queue_filter(s)}"
    )


def workers_sql(schema: str, *, heartbeats: bool) -> str:
    """Who holds locks: kongtask pools from their heartbeat rows (even idle ones),
    then any other lock holder (graphile-worker, or a pool without heartbeats)
    by its ``locked_by``. $1 limit. These ids are what ``kongtask unlock`` takes."""
    s = quote_ident(schema)
    holders = f"""
select j.locked_by as worker_id, null::text as hostname, null::int as pid,
  null::float8 as silent, count(*) as jobs
from {s}._private_jobs as j
where j.locked_by is not null{{exclude}}
group by j.locked_by"""
    if not heartbeats:
        return f"select * from ({holders.format(exclude='')}) as h order by jobs desc limit $1"
    exclude = (
        f" and not exists (select 1 from {s}._kongtask_workers as w "
        "where w.worker_id = j.locked_by)"
    )
    return f"""
select * from (
  select w.worker_id, w.hostname, w.pid,
    extract(epoch from now() - w.last_seen)::float8 as silent,
    (select count(*) from {s}._private_jobs as j where j.locked_by = w.worker_id) as jobs
  from {s}._kongtask_workers as w
  union all
  {holders.format(exclude=exclude)}
) as h
order by silent nulls last, worker_id
limit $1"""


def locked_by_sql(schema: str) -> str:
    """How many jobs and named queues the worker ids in $1 hold."""
    s = quote_ident(schema)
    return (
        f"select (select count(*) from {s}._private_jobs where locked_by = any($1::text[])), "
        f"(select count(*) from {s}._private_job_queues where locked_by = any($1::text[]))"
    )
