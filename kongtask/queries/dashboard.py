"""The web dashboard's statements, and the one definition of a job's state.

A job is in exactly one of five states, decided from columns of
``_private_jobs`` in this order (:data:`JOB_STATES`):

* ``running``: locked by a worker, and the lock is younger than 4 hours (the
  contract treats older locks as free);
* ``failed``: not running and out of attempts (``attempts >= max_attempts``):
  failed for good, kept for inspection;
* ``available``: not running, attempts left, and due (``run_at <= now()``): a
  worker may take it now. A failed job whose retry is due counts here: it can
  run now, and this is what ``kongtask jobs`` and the metrics call available;
* ``retrying``: not running, failed at least once, waiting out its backoff;
* ``scheduled``: not running, never attempted, ``run_at`` in the future.

The counts, the list filter, the state column and the badge on every page
all come from :data:`JOB_STATES`, so they cannot disagree.

Everything the dashboard reads is here; what it changes goes through
:class:`kongtask.WorkerUtils` (``jobs.Queries``). Values are bind parameters;
the only text substituted is the schema name, quoted by
:func:`kongtask.db.quote_ident`, and fragments chosen from fixed tables below
(which filters are present, which state, which direction): never request text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import Any, TypeVar

from ..db import quote_ident
from .jobs import Queries

#: A lock younger than this holds its job; older ones count as free (the contract).
_LOCK_ALIVE = "j.locked_at is not null and j.locked_at > now() - interval '4 hours'"
_FREE = "(j.locked_at is null or j.locked_at <= now() - interval '4 hours')"
_CAN_RUN = f"{_FREE} and j.attempts < j.max_attempts"

#: State name -> SQL predicate on a job row aliased ``j``, in precedence order.
#: The predicates are mutually exclusive and together cover every row.
JOB_STATES: dict[str, str] = {
    "running": _LOCK_ALIVE,
    "failed": f"{_FREE} and j.attempts >= j.max_attempts",
    "available": f"{_CAN_RUN} and j.run_at <= now()",
    "retrying": f"{_CAN_RUN} and j.run_at > now() and j.attempts > 0",
    "scheduled": f"{_CAN_RUN} and j.run_at > now() and j.attempts = 0",
}
STATE_NAMES: tuple[str, ...] = tuple(JOB_STATES)

#: The state of row ``j`` as text, for lists and the detail page.
STATE_CASE = (
    "case "
    + " ".join(f"when {predicate} then '{name}'" for name, predicate in JOB_STATES.items())
    + " end"
)

_COUNT_COLUMNS = ",\n  ".join(
    f"count(*) filter (where {predicate}) as {name}" for name, predicate in JOB_STATES.items()
)


Built = TypeVar("Built", bound=Callable[..., str])


def _built_once(method: Built) -> Built:
    """Build a statement once per instance and arguments (its variants are few)."""

    @wraps(method)
    def once(self: DashboardQueries, *args: Any, **kwargs: Any) -> str:
        key = (method.__name__, args, tuple(sorted(kwargs.items())))
        sql = self._built.get(key)
        if sql is None:
            sql = self._built[key] = method(self, *args, **kwargs)
        return sql

    return once  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ListShape:
    """Which parts a jobs-list statement has; values travel as parameters.

    Parameters, in order: the filters that are present (task identifier,
    queue name, key, error text, lock holder), then the cursor id when there
    is one, then the row limit. ``state`` must be one of :data:`STATE_NAMES`.
    """

    task: bool = False
    queue: bool = False
    state: str | None = None
    key: bool = False
    error: bool = False
    worker: bool = False
    descending: bool = True
    cursor: bool = False
    ids_only: bool = False


class DashboardQueries:
    """The dashboard's statements for one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.s = quote_ident(schema)
        #: The jobs table as a ``regclass`` literal's text: a bind parameter
        #: for the statistics functions, never spliced into SQL.
        self.jobs_table = f"{self.s}._private_jobs"
        self.workers_table = f"{self.s}._kongtask_workers"
        self._built: dict[tuple[Any, ...], str] = {}

    # -------------------------------------------------------------- catalog
    @cached_property
    def installed(self) -> str:
        """Whether $1 (the jobs table) and $2 (kongtask's heartbeat table) exist."""
        return "select to_regclass($1::text) is not null, to_regclass($2::text) is not null"

    @cached_property
    def table_stats(self) -> str:
        """The server's clock and cumulative row counters of the jobs table ($1).

        Inserted and deleted rows are counters kept by PostgreSQL's statistics
        system: sampled every few seconds they give jobs added and finished per
        second without reading the table. ``live`` is its running estimate of
        the rows in the table, the size used to choose exact or sampled counts.
        """
        return """
select now() as now,
  pg_stat_get_tuples_inserted($1::text::regclass) as inserted,
  pg_stat_get_tuples_deleted($1::text::regclass) as deleted,
  greatest(pg_stat_get_live_tuples($1::text::regclass),
           (select c.reltuples::bigint from pg_class as c where c.oid = $1::text::regclass),
           0) as live"""

    # ------------------------------------------------------------- overview
    def _state_counts(self, sample: str) -> str:
        s = self.s
        return f"""
with c as (
  select j.task_id, j.job_queue_id,
  {_COUNT_COLUMNS},
  min(j.run_at) filter (where {JOB_STATES["available"]}) as oldest_due
  from {s}._private_jobs as j {sample}
  group by j.task_id, j.job_queue_id
)
select t.identifier as task_identifier, q.queue_name, c.{", c.".join(STATE_NAMES)},
  extract(epoch from now() - c.oldest_due)::float8 as oldest_due_age
from c
join {s}._private_tasks as t on t.id = c.task_id
left join {s}._private_job_queues as q on q.id = c.job_queue_id
order by t.identifier, q.queue_name nulls first"""

    @cached_property
    def state_counts(self) -> str:
        """Jobs per task, queue and state, counted exactly: one pass over the table.

        Used while the table is small (the overview's exact-count limit); past
        that, :attr:`state_counts_sampled`.
        """
        return self._state_counts("")

    @cached_property
    def state_counts_sampled(self) -> str:
        """The same counts over a block sample of $1 percent of the table's pages.

        Reads a fixed number of pages whatever the table's size (the caller
        picks the percentage), so the overview stays fast at millions of jobs;
        the caller scales the counts up and shows them as estimates.
        """
        return self._state_counts("tablesample system ($1::float4)")

    @_built_once
    def summary(self, *, heartbeats: bool) -> str:
        """The overview's header in one statement, exact and cheap.

        The oldest due job comes from a loose scan of graphile-worker's
        available-jobs index (one probe per distinct priority), never a pass
        over the table; the row counters and the size estimate are those of
        :attr:`table_stats`. $1 the jobs table, $2 seconds of silence after
        which a worker is dead (unused without the heartbeat table).
        """
        s = self.s
        # The loose scan over distinct priorities is the fetch's own (jobs.Queries).
        priorities = Queries(self.schema)._available_priorities("true")
        if heartbeats:
            silent = "w.last_seen < now() - $2::float8 * interval '1 second'"
            workers = f"""(select count(*) filter (where not ({silent}))
   from {s}._kongtask_workers as w) as workers_alive,
  (select count(*) filter (where {silent}) from {s}._kongtask_workers as w) as workers_dead"""
        else:
            workers = "null::bigint as workers_alive, null::bigint as workers_dead"
        return f"""
with recursive {priorities},
stats as ({self.table_stats})
select stats.*,
  (select extract(epoch from now() - min(oldest.run_at))::float8
   from priorities as p
   cross join lateral (
     select j.run_at from {s}._private_jobs as j
     where j.is_available = true and j.priority = p.priority and j.run_at <= now()
     order by j.run_at limit 1
   ) as oldest) as oldest_due_age,
  (select count(*) filter (where q.locked_at is not null) from {s}._private_job_queues as q)
    as queues_locked,
  {workers}
from stats"""

    @cached_property
    def names(self) -> str:
        """Task identifiers and queue names, for the filter menus (both small tables)."""
        s = self.s
        return f"""
(select false as is_queue, t.identifier as name from {s}._private_tasks as t
 order by t.identifier limit 1000)
union all
(select true, q.queue_name from {s}._private_job_queues as q order by q.queue_name limit 1000)"""

    # ------------------------------------------------------------ jobs list
    def _list_columns(self) -> str:
        s = self.s
        return f"""j.id,
  (select t.identifier from {s}._private_tasks as t where t.id = j.task_id) as task_identifier,
  (select q.queue_name from {s}._private_job_queues as q where q.id = j.job_queue_id)
    as queue_name,
  {STATE_CASE} as state,
  j.priority, j.attempts, j.max_attempts, j.run_at, j.created_at, j.updated_at, j.key,
  j.locked_at, j.locked_by, left(split_part(j.last_error, E'\\n', 1), 300) as error_line"""

    def _where(self, shape: ListShape) -> tuple[str, int]:
        """The WHERE condition of a shape and the number of parameters it uses."""
        s = self.s
        terms: list[str] = []
        n = 0
        if shape.task:
            n += 1
            terms.append(
                f"j.task_id = (select t.id from {s}._private_tasks as t "
                f"where t.identifier = ${n}::text)"
            )
        if shape.queue:
            n += 1
            terms.append(
                f"j.job_queue_id = (select q.id from {s}._private_job_queues as q "
                f"where q.queue_name = ${n}::text)"
            )
        if shape.key:
            n += 1
            terms.append(f"j.key = ${n}::text")
        if shape.error:
            # A substring test, not LIKE: the operator's text has no wildcards.
            n += 1
            terms.append(f"strpos(lower(j.last_error), lower(${n}::text)) > 0")
        if shape.worker:
            n += 1
            terms.append(f"j.locked_by = ${n}::text")
        if shape.state is not None:
            terms.append(f"({JOB_STATES[shape.state]})")
        if shape.cursor:
            n += 1
            terms.append(f"j.id {'<' if shape.descending else '>'} ${n}::bigint")
        return " and ".join(terms) or "true", n

    @_built_once
    def job_list(self, shape: ListShape) -> str:
        """One page of jobs matching the shape's filters, in id order from a cursor.

        Keyset pagination: a page starts after the last id of the one before
        (``id < $cursor`` newest first), so page 10,000 costs what page 1
        does; the primary key serves the order. Filters are fixed fragments
        chosen by which are present; their values are parameters.
        """
        where, n = self._where(shape)
        columns = "j.id" if shape.ids_only else self._list_columns()
        direction = "desc" if shape.descending else "asc"
        return (
            f"select {columns}\nfrom {self.s}._private_jobs as j\nwhere {where}\n"
            f"order by j.id {direction}\nlimit ${n + 1}::int"
        )

    @_built_once
    def filter_size(self, shape: ListShape) -> str:
        """How many jobs match a filter (no cursor), counting no further than the last
        parameter: a confirmation needs "more than 10,000", not the exact size."""
        where, n = self._where(shape)
        return (
            f"select count(*) from (select 1 from {self.s}._private_jobs as j "
            f"where {where} limit ${n + 1}::int) as m"
        )

    # ----------------------------------------------------------- job detail
    @_built_once
    def job(self, *, heartbeats: bool) -> str:
        """Every column of job $1, its state, and how long its lock holder has been
        silent (seconds since its last heartbeat; null without one, or without the
        heartbeat table)."""
        s = self.s
        return f"""
select j.id, t.identifier as task_identifier, q.queue_name, j.payload::text as payload,
  j.priority, j.run_at, j.attempts, j.max_attempts, j.last_error, j.created_at,
  j.updated_at, j.key, j.locked_at, j.locked_by, j.revision, j.flags::text as flags,
  {STATE_CASE} as state, {self._holder_silent(heartbeats)} as holder_silent
from {s}._private_jobs as j
join {s}._private_tasks as t on t.id = j.task_id
left join {s}._private_job_queues as q on q.id = j.job_queue_id
where j.id = $1::bigint"""

    @_built_once
    def job_states(self, *, heartbeats: bool) -> str:
        """State, lock holder and the holder's silence (as :meth:`job`) of each of
        the jobs $1 that still exist: why an action left them alone."""
        return f"""
select j.id, {STATE_CASE} as state, j.locked_by, {self._holder_silent(heartbeats)} as holder_silent
from {self.s}._private_jobs as j
where j.id = any($1::bigint[])
order by j.id"""

    def _holder_silent(self, heartbeats: bool) -> str:
        """Seconds since the heartbeat of the worker holding row ``j`` (null: none)."""
        if not heartbeats:
            return "null::float8"
        return (
            "(select extract(epoch from now() - w.last_seen)::float8 "
            f"from {self.s}._kongtask_workers as w where w.worker_id = j.locked_by)"
        )

    # -------------------------------------------------------------- workers
    @_built_once
    def workers(self, *, heartbeats: bool) -> str:
        """Every worker: kongtask pools from their heartbeat rows (idle ones too), and
        any other holder of a lock (graphile-worker pools, which keep no heartbeat).

        Jobs and queues held are counted in one pass over the locked jobs
        (no index covers ``locked_by``; locked rows are few, but finding them
        reads the table). $1 seconds of silence after which a pool is dead.
        """
        s = self.s
        holders = f"""
holders as (
  select j.locked_by as worker_id, count(*) as jobs,
    extract(epoch from now() - min(j.locked_at))::float8 as oldest_lock_age
  from {s}._private_jobs as j
  where j.locked_at is not null
  group by j.locked_by
),
queue_holders as (
  select q.locked_by as worker_id, count(*) as queues
  from {s}._private_job_queues as q
  where q.locked_at is not null
  group by q.locked_by
)"""
        if not heartbeats:
            return f"""
with {holders}
select h.worker_id, null::text as hostname, null::int as pid,
  null::timestamptz as started_at, null::timestamptz as last_seen,
  null::float8 as silent, null::boolean as dead, h.jobs,
  coalesce(qh.queues, 0) as queues, h.oldest_lock_age
from holders as h left join queue_holders as qh on qh.worker_id = h.worker_id
order by h.worker_id
limit 1000"""
        return f"""
with {holders}
select coalesce(w.worker_id, h.worker_id) as worker_id, w.hostname, w.pid, w.started_at,
  w.last_seen, extract(epoch from now() - w.last_seen)::float8 as silent,
  w.last_seen < now() - $1::float8 * interval '1 second' as dead,
  coalesce(h.jobs, 0) as jobs, coalesce(qh.queues, 0) as queues, h.oldest_lock_age
from {s}._kongtask_workers as w
full join holders as h on h.worker_id = w.worker_id
left join queue_holders as qh on qh.worker_id = coalesce(w.worker_id, h.worker_id)
order by w.last_seen desc nulls last, 1
limit 1000"""

    @cached_property
    def held_by(self) -> str:
        """How many jobs and named queues worker $1 holds locked."""
        s = self.s
        return (
            f"select (select count(*) from {s}._private_jobs as j where j.locked_by = $1::text)"
            f" as jobs, (select count(*) from {s}._private_job_queues as q"
            " where q.locked_by = $1::text) as queues"
        )

    @cached_property
    def worker_silence(self) -> str:
        """Seconds since worker $1's last heartbeat; no row when it has none."""
        return (
            "select extract(epoch from now() - w.last_seen)::float8 as silent "
            f"from {self.s}._kongtask_workers as w where w.worker_id = $1::text"
        )

    @cached_property
    def now(self) -> str:
        """The database's clock: "retry now" means now for the database, whatever ours says."""
        return "select now()"

    # ----------------------------------------------------------------- cron
    @cached_property
    def known_crontabs(self) -> str:
        """Every cron identifier a pool has registered, with its last tick."""
        return (
            "select k.identifier, k.known_since, k.last_execution "
            f"from {self.s}._private_known_crontabs as k order by k.identifier"
        )


__all__ = [
    "JOB_STATES",
    "STATE_CASE",
    "STATE_NAMES",
    "DashboardQueries",
    "ListShape",
]
