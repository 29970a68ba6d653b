"""Every SQL statement kongtask runs against the queue, in one place.

Values are always bind parameters; the only text substituted is the schema
name, quoted by :func:`kongtask.db.quote_ident`. Statements are built once per
schema, so asyncpg's statement cache prepares each of them once per
connection.

Rows describing jobs are always selected in ``decode.JOB_COLUMNS`` order so
``_core.decode.decode_jobs`` can turn a whole batch into objects in one call.
"""

from __future__ import annotations

from functools import cached_property

from ..db import quote_ident

# The select list of a job in JOB_COLUMNS order, given the alias `j` for the
# job row; queue name and task identifier come from scalar lookups so that
# the same list works after INSERT/UPDATE/DELETE ... RETURNING in a CTE.
_JOB_FIELDS = """
  j.id,
  (select q.queue_name from {s}._private_job_queues as q where q.id = j.job_queue_id),
  (select t.identifier from {s}._private_tasks as t where t.id = j.task_id),
  j.payload, j.priority, j.run_at, j.attempts, j.max_attempts, j.last_error,
  j.created_at, j.updated_at, j.key, j.locked_at, j.locked_by, j.revision, j.flags"""


class Queries:
    """The statements for one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.s = quote_ident(schema)

    def _fields(self) -> str:
        return _JOB_FIELDS.format(s=self.s)

    def _from_function(self, call: str) -> str:
        """Select jobs returned by a queue function, in JOB_COLUMNS order."""
        return (
            f"with j as ({call}) "
            f"select {self._fields()} from j where j.id is not null order by j.id"
        )

    # ----------------------------------------------------------------- client
    @cached_property
    def add_job(self) -> str:
        # Rows the function inserts into _private_tasks/_private_job_queues are
        # not visible to this statement's own snapshot, so a lookup can miss a
        # task or queue created by this very call; those names are the ones we
        # passed in ($1, $3).
        s = self.s
        return f"""
with j as (
  select * from {s}.add_job(identifier => $1::text, payload => $2::json,
    queue_name => $3::text, run_at => $4::timestamptz, max_attempts => $5::int,
    job_key => $6::text, priority => $7::int, flags => $8::text[], job_key_mode => $9::text)
)
select
  j.id,
  case when j.job_queue_id is not null then coalesce(
    (select q.queue_name from {s}._private_job_queues as q where q.id = j.job_queue_id), $3)
  end,
  coalesce((select t.identifier from {s}._private_tasks as t where t.id = j.task_id), $1),
  j.payload, j.priority, j.run_at, j.attempts, j.max_attempts, j.last_error,
  j.created_at, j.updated_at, j.key, j.locked_at, j.locked_by, j.revision, j.flags
from j where j.id is not null"""

    def _specs_from_json(self) -> str:
        # One JSON text carries every spec: one parameter, parsed by PostgreSQL
        # in C, instead of eight parallel arrays or a composite-array codec.
        return (
            f"array(select s from json_populate_recordset(null::{self.s}.job_spec, $1::json) as s)"
        )

    @cached_property
    def add_jobs(self) -> str:
        """The added jobs in ``decode.STORED_COLUMNS`` order: task and queue as ids.

        Naming them here would cost a lookup per row, and could not see the
        tasks and queues the function creates in this very statement; the
        client names them from a cache instead (``task_and_queue_names``).
        ``created_at`` comes as null when it equals ``run_at`` and
        ``updated_at`` when it equals ``created_at`` (a job added for now):
        two of three timestamp decodes saved cut the client's CPU per job from
        5.2 to 3.7 us.
        """
        return f"""
select
  j.id, j.job_queue_id, j.task_id, j.payload, j.priority, j.run_at, j.attempts,
  j.max_attempts, j.last_error, nullif(j.created_at, j.run_at),
  nullif(j.updated_at, j.created_at), j.key, j.locked_at,
  j.locked_by, j.revision, j.flags
from {self.s}.add_jobs({self._specs_from_json()}, $2::boolean) as j
where j.id is not null"""

    @cached_property
    def task_and_queue_names(self) -> str:
        """Identifiers of task ids $1 and names of queue ids $2 (array literals)."""
        s = self.s
        return f"""
select false as is_queue, t.id, t.identifier as name
from {s}._private_tasks as t where t.id = any($1::text::int[])
union all
select true, q.id, q.queue_name
from {s}._private_job_queues as q where q.id = any($2::text::int[])"""

    @cached_property
    def add_jobs_count(self) -> str:
        return f"select count(*) from {self.s}.add_jobs({self._specs_from_json()}, $2::boolean)"

    @cached_property
    def complete_jobs(self) -> str:
        return self._from_function(f"select * from {self.s}.complete_jobs($1::bigint[])")

    @cached_property
    def permanently_fail_jobs(self) -> str:
        return self._from_function(
            f"select * from {self.s}.permanently_fail_jobs($1::bigint[], $2::text)"
        )

    @cached_property
    def reschedule_jobs(self) -> str:
        return self._from_function(
            f"select * from {self.s}.reschedule_jobs($1::bigint[], run_at => $2::timestamptz, "
            "priority => $3::int, attempts => $4::int, max_attempts => $5::int)"
        )

    @cached_property
    def remove_job(self) -> str:
        return self._from_function(f"select * from {self.s}.remove_job($1::text)")

    @cached_property
    def force_unlock_workers(self) -> str:
        return f"select {self.s}.force_unlock_workers($1::text[])"

    @cached_property
    def get_jobs(self) -> str:
        """Jobs by id (admin and tests); the view has no payload, so read the table."""
        return (
            f"select {self._fields()} from {self.s}._private_jobs as j "
            "where j.id = any($1::bigint[]) order by j.id"
        )

    @cached_property
    def gc_task_identifiers(self) -> str:
        return (
            f"delete from {self.s}._private_tasks as tasks "
            f"where not exists (select 1 from {self.s}._private_jobs as jobs "
            "where jobs.task_id = tasks.id) "
            "and tasks.identifier <> all($1::text[])"
        )

    @cached_property
    def gc_job_queues(self) -> str:
        return (
            f"delete from {self.s}._private_job_queues as job_queues "
            "where job_queues.locked_at is null "
            f"and not exists (select 1 from {self.s}._private_jobs as jobs "
            "where jobs.job_queue_id = job_queues.id)"
        )

    @cached_property
    def delete_permafailed_jobs(self) -> str:
        return (
            f"delete from {self.s}._private_jobs as jobs "
            "where jobs.attempts >= jobs.max_attempts and jobs.locked_at is null"
        )

    # ----------------------------------------------------------------- worker
    @cached_property
    def unhandled_waiting_tasks(self) -> str:
        """Identifiers other than $1's that have waiting jobs (unlocked, attempts
        left); at most $2 of them, in name order.

        Cheap in the usual case: the tasks table is small and the filter on
        identifiers comes first, so only tasks this worker lacks probe the jobs
        table, and each probe stops at its first waiting job (the partial
        index of available jobs carries task_id).
        """
        return (
            f"select t.identifier from {self.s}._private_tasks as t "
            "where t.identifier <> all($1::text[]) "
            f"and exists (select 1 from {self.s}._private_jobs as j "
            "where j.task_id = t.id and j.is_available) "
            "order by t.identifier limit $2"
        )

    @cached_property
    def register_tasks(self) -> str:
        """Make sure every task identifier has a row; return all their ids.

        ``do update`` (a no-op change) rather than ``do nothing``: it returns
        rows that another pool inserted concurrently, which a separate select
        in the same statement could not see.
        """
        return (
            f"insert into {self.s}._private_tasks as tasks (identifier) "
            "select unnest($1::text[]) "
            "on conflict (identifier) do update set identifier = excluded.identifier "
            "returning tasks.id, tasks.identifier"
        )

    #: Jobs that must be claimed visibly: a named queue must look locked to
    #: every client while its job runs, and ``add_job`` must see a running
    #: keyed job as locked to replace it (it waits for a leased row, then
    #: finds it unlocked and would add nothing). Everything else is "plain".
    _CLAIMED_KIND = "(jobs.job_queue_id is not null or jobs.key is not null)"
    _PLAIN_KIND = "jobs.job_queue_id is null and jobs.key is null"

    def _available_priorities(self, kind: str) -> str:
        """A recursive CTE ``priorities`` listing the distinct priorities of available
        jobs of one kind (``"true"``: of all kinds).

        A loose index scan: one probe of the partial index of that kind per
        distinct priority. The fetches then read each priority's due range
        (``priority = any(...) and run_at <= now()``, both index conditions),
        so a backlog of future jobs is never walked: a plain ``order by
        priority, run_at`` with ``run_at <= now()`` as a filter read all 300,000
        future jobs of a priority before finding that none was due.
        """
        s = self.s
        return f"""priorities as (
  (select jobs.priority from {s}._private_jobs as jobs
   where jobs.is_available = true and {kind}
   order by jobs.priority limit 1)
  union all
  select (select jobs.priority from {s}._private_jobs as jobs
          where jobs.is_available = true and {kind} and jobs.priority > p.priority
          order by jobs.priority limit 1)
  from priorities as p where p.priority is not null
)"""

    @staticmethod
    def _flags_filter(with_flags: bool, param: int) -> str:
        return f"and (jobs.flags ?| ${param}::text[]) is not true" if with_flags else ""

    def _plain_candidates(
        self,
        with_flags: bool,
        columns: str,
        tasks: int,
        limit: int,
        flags: int,
        after: int | None,
    ) -> str:
        """Due plain jobs of the tasks in $``tasks``, at most $``limit``, locked.

        Without ``after``: every priority's due range, from the top (needs the
        ``priorities`` CTE). With it: one priority ($``after``), from just
        after the job ($``after+1`` run_at, $``after+2`` id) this pool fetched
        last, in the index's order. A resumed fetch never walks what lies
        before that point: rows this pool holds (each skipped row costs a lock
        attempt) and the index entries of jobs already claimed or deleted,
        which stay in the index until a vacuum and made every full scan walk
        the whole processed backlog (a millisecond per fetch 100,000 jobs into
        a drain).
        """
        if after is None:
            where_priority = """jobs.priority = any(array(select p.priority from priorities as p
                                where p.priority is not null))"""
        else:
            where_priority = (
                f"jobs.priority = ${after}::smallint "
                f"and (jobs.run_at, jobs.id) > (${after + 1}::timestamptz, ${after + 2}::bigint)"
            )
        return f"""
select {columns}
from {self.s}._private_jobs as jobs
where jobs.is_available = true
  and {self._PLAIN_KIND}
  and {where_priority}
  and jobs.run_at <= now()
  and jobs.task_id = any(${tasks}::text::int[])
  {self._flags_filter(with_flags, flags)}
order by jobs.priority, jobs.run_at, jobs.id
limit ${limit}::int
for update of jobs skip locked"""

    #: A plain job's row as the worker needs it (``decode.LEASED_COLUMNS``):
    #: only what differs from job to job, with this attempt counted. No queue,
    #: no key; the worker fills in task names, itself and the time.
    #: ``created_at`` comes as null when it equals ``run_at``, ``updated_at``
    #: when it equals ``created_at`` (a job added for now and never changed):
    #: each timestamp costs the worker a codec call, a null nothing. The last
    #: column is the row's ``ctid``: a success is deleted by that address,
    #: without a primary-key probe.
    _PLAIN_ROW = """{j}.id, {j}.task_id, {j}.payload, {j}.priority, {j}.run_at,
  {j}.attempts{plus}, {j}.max_attempts, {j}.last_error,
  nullif({j}.created_at, {j}.run_at), nullif({j}.updated_at, {j}.created_at),
  {j}.revision, {j}.flags, {j}.ctid::text"""

    def _with_priorities(self, resume: bool) -> str:
        """The head of a plain fetch: a full scan needs the ``priorities`` CTE."""
        if resume:
            return "with"
        return f"with recursive {self._available_priorities(self._PLAIN_KIND)},"

    def lease_plain(self, *, with_flags: bool, resume: bool = False) -> str:
        """Lock up to $2 due plain jobs (no queue, no key), writing nothing.

        Runs inside a transaction that stays open while the jobs run (a
        *lease*, opt-in: see docs/guarantees.md): the row locks alone keep
        every other fetcher, kongtask's or graphile-worker's (both ``skip
        locked``), away from these jobs, so the usual claim (an UPDATE: a new
        row version and new index entries per job) is skipped. When the batch
        settles, successes are deleted, failures recorded and anything still
        running is claimed the classic way, all in that transaction.

        $1 task ids (an array literal, see ``_core.dispatch.ids_literal``), $2
        batch size, $3 forbidden flags (when given); with ``resume``, the next
        three: see :meth:`_plain_candidates`. Rows in ``decode.LEASED_COLUMNS``
        order; the ``ctid`` is the address of the version this statement
        locked (a row updated meanwhile is re-read at its new version before
        it is locked), and the lease's row locks keep it valid.
        """
        flags = 3
        after = (4 if with_flags else 3) if resume else None
        columns = self._PLAIN_ROW.format(j="jobs", plus=" + 1")
        candidates = self._plain_candidates(with_flags, columns, 1, 2, flags, after)
        if resume:
            return candidates
        return f"with recursive {self._available_priorities(self._PLAIN_KIND)}" + candidates

    def claim_plain(self, *, with_flags: bool, resume: bool = False) -> str:
        """Claim up to $2 due plain jobs the way graphile-worker does: attempts + 1,
        ``locked_by`` ($3), ``locked_at``, committed before any of them starts.

        The default way to fetch plain jobs (claim mode). $1 task ids (an array
        literal), $2 batch size, $3 worker id, $4 forbidden flags (when given);
        with ``resume``, the next three (:meth:`_plain_candidates`). Rows in
        ``decode.LEASED_COLUMNS`` order, sorted as the index is; the ``ctid``
        is the claimed version's, which nobody else updates while this worker
        holds the job.

        The candidates are found and locked by address and updated by address
        (a TID scan): joining them back by id had the planner of a generic
        plan, which cannot see the batch size, hash the whole table (370 ms a
        fetch at 1,000,000 jobs), and even a primary-key probe per job cost more
        than the address.
        """
        flags = 4
        after = (5 if with_flags else 4) if resume else None
        candidates = self._plain_candidates(with_flags, "jobs.ctid", 1, 2, flags, after)
        columns = self._PLAIN_ROW.format(j="jobs", plus="")
        return f"""
{self._with_priorities(resume)} candidates as ({candidates}
),
claimed as (
  update {self.s}._private_jobs as jobs
  set attempts = jobs.attempts + 1, locked_by = $3::text, locked_at = now()
  where jobs.ctid = any(array(select candidates.ctid from candidates))
  returning {columns}
)
select * from claimed order by 4, 5, 1"""

    def claim_keyed_or_queued(self, *, with_flags: bool) -> str:
        """Claim up to $3 due jobs that have a named queue or a job key, and lock
        their queues; committed at once (never leased, see ``_CLAIMED_KIND``).

        Candidates come in (priority, run_at, id) order from kongtask's partial
        index of this kind, so jobs of one queue added together run in the
        order they were added. Of each named queue only the first candidate is
        kept, so a batch never holds two jobs of one queue (graphile-worker's
        batch fetch can); the other candidates were only row-locked for this
        statement and stay untouched. Parameters as :meth:`claim_plain`.
        """
        s = self.s
        return f"""
with recursive {self._available_priorities(self._CLAIMED_KIND)},
candidates as (
  select jobs.id, jobs.job_queue_id, jobs.priority, jobs.run_at
  from {s}._private_jobs as jobs
  where jobs.is_available = true
    and {self._CLAIMED_KIND}
    and jobs.priority = any(array(select p.priority from priorities as p
                                  where p.priority is not null))
    and jobs.run_at <= now()
    and jobs.task_id = any($2::text::int[])
    and (
      jobs.job_queue_id is null
      or jobs.job_queue_id in (
        select job_queues.id from {s}._private_job_queues as job_queues
        where job_queues.is_available = true
        for update skip locked
      )
    )
    {self._flags_filter(with_flags, 5)}
  order by jobs.priority, jobs.run_at, jobs.id
  limit $3::int
  for update skip locked
),
picked as (
  select c.id, c.job_queue_id from candidates as c where c.job_queue_id is null
  union all
  select * from (
    select distinct on (c.job_queue_id) c.id, c.job_queue_id
    from candidates as c
    where c.job_queue_id is not null
    order by c.job_queue_id, c.priority, c.run_at, c.id
  ) as first_of_queue
),
locked_queues as (
  update {s}._private_job_queues as job_queues
  set locked_by = $1::text, locked_at = now()
  from picked
  where job_queues.id = picked.job_queue_id
),
j as (
  update {s}._private_jobs as jobs
  set attempts = jobs.attempts + 1, locked_by = $1::text, locked_at = now()
  from picked
  where jobs.id = picked.id
  returning jobs.*
)
select
  j.id,
  (select q.queue_name from {s}._private_job_queues as q where q.id = j.job_queue_id),
  ($4::text[])[array_position($2::text::int[], j.task_id)],
  j.payload, j.priority, j.run_at, j.attempts, j.max_attempts, j.last_error,
  j.created_at, j.updated_at, j.key, j.locked_at, j.locked_by, j.revision, j.flags
from j
order by j.priority, j.run_at, j.id"""

    @cached_property
    def settle_lease(self) -> str:
        """Write a lease's outcomes inside its own transaction (which then commits).

        $1 addresses (ctids, a ``tid[]`` literal) of the rows whose jobs
        succeeded: deleted by a TID scan, without a primary-key probe per job
        (a fifth of the server's CPU per job in a drain). The lease's row locks
        keep every address valid: no other transaction can update or delete a
        locked row, and this one has not touched it (a row updated between the
        fetch's snapshot and its lock is returned at its new version). The
        plain-kind test is a second guard: an address could never delete a
        claimed, keyed or queued job. $2/$3/$4 ids, messages and replacement
        payloads (JSON text or null) of failures, $5 ids still unfinished, $6
        worker id; id lists are array literals (``_core.dispatch.ids_literal``).
        The rows are row-locked by this transaction and were never
        claimed, so no ``locked_by`` checks are needed: a failure counts its
        attempt here (the classic claim counted it at fetch) and backs off per
        the contract; unfinished jobs are claimed the classic way, after which
        their outcomes go through the ordinary completion statements.
        Times are ``clock_timestamp()``: the transaction's ``now()`` is when the
        lease began, up to ``lease_time`` ago, and a backoff counted from it
        would come due early.
        """
        s = self.s
        return f"""
with done as (
  delete from {s}._private_jobs as jobs
  where jobs.ctid = any($1::text::tid[])
    and jobs.locked_by is null and {self._PLAIN_KIND}
),
f as (
  select * from unnest($2::text::bigint[], $3::text[], $4::text[]) as f(id, message, payload)
),
failed as (
  update {s}._private_jobs as jobs
  set
    attempts = jobs.attempts + 1,
    last_error = f.message,
    run_at = greatest(clock_timestamp(), jobs.run_at)
             + exp(least(jobs.attempts + 1, 10)) * interval '1 second',
    updated_at = clock_timestamp(),
    payload = coalesce(f.payload::json, jobs.payload)
  from f
  where jobs.id = f.id
),
claimed as (
  update {s}._private_jobs as jobs
  set attempts = jobs.attempts + 1, locked_by = $6::text, locked_at = clock_timestamp()
  where jobs.id = any($5::text::bigint[])
)
select 1"""

    @cached_property
    def complete_batch(self) -> str:
        """Delete finished jobs ($1, an array literal) and free their queues."""
        return f"""
with j as (
  delete from {self.s}._private_jobs as jobs
  where jobs.id = any($1::text::bigint[])
  returning jobs.job_queue_id
)
update {self.s}._private_job_queues as job_queues
set locked_by = null, locked_at = null
from j
where job_queues.id = j.job_queue_id and job_queues.locked_by = $2::text"""

    @cached_property
    def complete_by_address(self) -> str:
        """Delete finished plain jobs by row address: $1 ctids (a ``tid[]``
        literal), $2 their ids (an array literal), pairwise.

        A TID scan per job instead of a primary-key probe. The pair must match:
        a row updated since this worker claimed it (its lock refreshed after an
        hour, ``remove_job`` on a running keyed job) has moved, and is left for
        :attr:`complete_batch`, by id, which the caller runs when fewer rows
        than expected were deleted. Plain jobs have no queue to unlock.
        """
        return f"""
delete from {self.s}._private_jobs as jobs
using unnest($1::text::tid[], $2::text::bigint[]) as done(row_address, id)
where jobs.ctid = done.row_address and jobs.id = done.id"""

    @cached_property
    def fail_batch(self) -> str:
        """Record failures with per-job messages and the contract's backoff.

        $1 ids (an array literal), $2 messages, $3 replacement payloads (JSON text or null, for
        batch jobs that keep only their failed entries), $4 worker id. Only
        jobs this worker still holds are touched; returns id, attempts and
        max_attempts so the caller knows which failures were final.
        """
        s = self.s
        return f"""
with f as (
  select * from unnest($1::text::bigint[], $2::text[], $3::text[]) as f(id, message, payload)
),
j as (
  update {s}._private_jobs as jobs
  set
    last_error = f.message,
    run_at = greatest(now(), jobs.run_at) + exp(least(jobs.attempts, 10)) * interval '1 second',
    locked_by = null,
    locked_at = null,
    updated_at = now(),
    payload = coalesce(f.payload::json, jobs.payload)
  from f
  where jobs.id = f.id and jobs.locked_by = $4::text
  returning jobs.id, jobs.job_queue_id, jobs.attempts, jobs.max_attempts
),
q as (
  update {s}._private_job_queues as job_queues
  set locked_by = null, locked_at = null
  from j
  where job_queues.id = j.job_queue_id and job_queues.locked_by = $4::text
)
select id, attempts, max_attempts from j"""

    @cached_property
    def return_jobs(self) -> str:
        """Give back jobs fetched but never started, undoing their attempt."""
        s = self.s
        return f"""
with j as (
  update {s}._private_jobs as jobs
  set attempts = greatest(jobs.attempts - 1, 0), locked_by = null, locked_at = null
  where jobs.id = any($1::text::bigint[]) and jobs.locked_by = $2::text
  returning jobs.job_queue_id
)
update {s}._private_job_queues as job_queues
set locked_by = null, locked_at = null
from j
where job_queues.id = j.job_queue_id and job_queues.locked_by = $2::text"""

    @cached_property
    def return_orphans(self) -> str:
        """Give back every job $1 holds except the ids in $2, undoing their attempt.

        For jobs locked by a fetch whose result never arrived (its connection
        died after the commit), and at shutdown for anything still held.
        """
        s = self.s
        return f"""
with j as (
  update {s}._private_jobs as jobs
  set attempts = greatest(jobs.attempts - 1, 0), locked_by = null, locked_at = null
  where jobs.locked_by = $1::text and not (jobs.id = any($2::text::bigint[]))
  returning jobs.job_queue_id
)
update {s}._private_job_queues as job_queues
set locked_by = null, locked_at = null
from j
where job_queues.id = j.job_queue_id and job_queues.locked_by = $1::text"""

    @cached_property
    def sweep_stale_locks(self) -> str:
        """Free locks older than 4 hours: their holders are presumed dead."""
        s = self.s
        return f"""
with j as (
  update {s}._private_jobs as jobs set locked_at = null, locked_by = null
  where jobs.locked_at < now() - interval '4 hours'
  returning 1
), q as (
  update {s}._private_job_queues as job_queues set locked_at = null, locked_by = null
  where job_queues.locked_at < now() - interval '4 hours'
  returning 1
)
select (select count(*) from j) + (select count(*) from q)"""

    # ------------------------------------------------------------- heartbeats
    @cached_property
    def _worker_upsert(self) -> str:
        """This pool's row ($1-$5 as in :attr:`heartbeat`): made, or its ``last_seen``
        renewed; the first heartbeat (in :attr:`join`) and every later one."""
        return f"""\
  insert into {self.s}._kongtask_workers as w (worker_id, hostname, pid, host_key, process_start)
  values ($1::text, $2::text, $3::int, $4::text, $5::bigint)
  on conflict (worker_id) do update set last_seen = now()"""

    @cached_property
    def heartbeat(self) -> str:
        """Say this pool is alive ($1 worker id, $2 host name, $3 pid, $4 host key,
        $5 process start: see :mod:`kongtask.liveness`) and keep the locks of its
        long-running jobs ($6 ids) younger than the 4-hour rule, so neither
        kongtask's nor graphile-worker's stale-lock sweep frees them.

        Returns whether the row was missing: another pool had declared this
        one dead (and freed its jobs) while it could not reach the database.

        The ids travel as ``text[]``: the heartbeat's connection is fresh at its
        first beat, and a ``bigint[]`` parameter would first cost asyncpg a
        type-introspection query (5-15 ms here)."""
        s = self.s
        return f"""
with me as (
{self._worker_upsert}
  returning (xmax = 0) as was_missing
), fresh as (
  update {s}._private_jobs as jobs set locked_at = now()
  where jobs.id = any($6::text[]::bigint[]) and jobs.locked_by = $1::text
    and jobs.locked_at < now() - interval '1 hour'
  returning jobs.job_queue_id
), queues as (
  update {s}._private_job_queues as job_queues set locked_at = now()
  from fresh
  where job_queues.id = fresh.job_queue_id and job_queues.locked_by = $1::text
)
select was_missing from me"""

    @cached_property
    def join(self) -> str:
        """A pool's whole start-up in one statement, for a schema whose heartbeat
        table exists: the first heartbeat ($1-$5 as in :attr:`heartbeat`), a row
        for each task identifier in $6, the other pools on this host (to check
        against ``/proc``), whether any pool has been silent for more than $7
        seconds, and the backend's pid (the transaction-pooling probe).

        It never reads the jobs table: on a fresh connection the planner's first
        look at a table loads every index of it into the backend's caches, and
        for ``_private_jobs`` that cost 1.1 ms of the 3 ms this statement took
        (measured). The fetch pays it after ready; the warning about jobs no
        worker handles (:attr:`unhandled_waiting_tasks`) runs after ready too.

        One result row per task (``task_id``, ``task_name``; a single row of nulls
        when $6 is empty), each carrying the rest. No ``int4[]`` or ``int8[]``
        column: asyncpg meets those with a type-introspection query on a fresh
        connection (8-10 ms here, measured; see :attr:`heartbeat`), so ids stay
        in rows and the peers' pids and start times travel as ``text[]``.

        Recovery itself (:attr:`recover_dead_workers`) runs only when the peers or
        the silent flag show it has something to free: a fresh pool on a healthy
        fleet is ready after one statement. Each statement on a fresh connection
        costs a prepare and an execute; this replaces five (task rows,
        heartbeat, peers, recovery, the proxy probe).
        """
        s = self.s
        return f"""
with me as (
{self._worker_upsert}
), registered as (
  insert into {s}._private_tasks as tasks (identifier)
  select unnest($6::text[])
  on conflict (identifier) do update set identifier = excluded.identifier
  returning tasks.id, tasks.identifier
), peers as (
  select w.worker_id, w.pid, w.process_start
  from {s}._kongtask_workers as w
  where w.host_key = $4::text and w.worker_id <> $1::text
), found as (
  select
    array(select worker_id from peers order by worker_id) as peer_ids,
    array(select pid::text from peers order by worker_id) as peer_pids,
    array(select process_start::text from peers order by worker_id) as peer_starts,
    exists (select 1 from {s}._kongtask_workers as w
            where w.worker_id <> $1::text
              and w.last_seen < now() - $7::float8 * interval '1 second') as silent,
    pg_backend_pid() as backend_pid
)
select registered.id as task_id, registered.identifier as task_name, found.*
from found left join registered on true"""

    @cached_property
    def workers_on_host(self) -> str:
        """Other pools recorded on this host ($1 host key; $2 this pool's id):
        their pid and process start, to check against ``/proc``."""
        return f"""
select w.worker_id, w.pid, w.process_start
from {self.s}._kongtask_workers as w
where w.host_key = $1::text and w.worker_id <> $2::text"""

    @cached_property
    def recover_dead_workers(self) -> str:
        """Free the jobs and queues of dead pools: those silent for more than $1
        seconds, and those in $2 (pools on this host whose process is gone).

        Dying counts as a failed attempt: the attempt was counted when the job
        was claimed, and the job now backs off as after any failure, with
        ``last_error`` naming the dead pool. A job that has used its last
        attempt stays, failed for good. The dead pool's row is deleted in the
        same statement, so concurrent sweepers recover each pool once.
        """
        s = self.s
        return f"""
with dead as (
  delete from {s}._kongtask_workers as w
  where w.last_seen < now() - $1::float8 * interval '1 second'
     or w.worker_id = any($2::text[])
  returning w.worker_id, w.worker_id = any($2::text[]) as exited
), jobs_freed as (
  update {s}._private_jobs as jobs
  set locked_at = null, locked_by = null, updated_at = now(),
      run_at = greatest(now(), jobs.run_at) + exp(least(jobs.attempts, 10)) * interval '1 second',
      last_error = 'Worker ' || jobs.locked_by || case when dead.exited
        then ' died while holding this job (its process is gone)'
        else ' stopped heartbeating while holding this job' end
  from dead
  where jobs.locked_by = dead.worker_id
  returning jobs.id
), queues_freed as (
  update {s}._private_job_queues as job_queues
  set locked_at = null, locked_by = null
  from dead
  where job_queues.locked_by = dead.worker_id
  returning job_queues.id
)
select
  coalesce((select array_agg(worker_id) from dead), '{{}}'::text[]) as workers,
  (select count(*) from jobs_freed) as jobs"""

    @cached_property
    def forget_worker(self) -> str:
        return f"delete from {self.s}._kongtask_workers where worker_id = $1::text"

    @cached_property
    def next_run_at(self) -> str:
        """Seconds until the earliest future job of these tasks is due (for the timer).

        Measured against the database clock, so a skewed local clock does not
        make scheduled jobs early or late. A loose index scan: one probe of
        the (priority, run_at) index per distinct priority, instead of reading
        every available job (a million future jobs took 140 ms as a plain min).
        """
        s = self.s
        return f"""
with recursive {self._available_priorities("true")}
select extract(epoch from min(soonest.run_at) - now())::float8
from priorities as p
cross join lateral (
  select jobs.run_at from {s}._private_jobs as jobs
  where jobs.is_available = true and jobs.priority = p.priority
    and jobs.run_at > now() and jobs.task_id = any($1::text::int[])
  order by jobs.run_at limit 1
) as soonest"""
