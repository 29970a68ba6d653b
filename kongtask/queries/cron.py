"""The cron scheduler's statements (see :mod:`kongtask.cron` for the rule they keep).

Values are always bind parameters; the schema name is quoted by
:func:`kongtask.db.quote_ident`.
"""

from __future__ import annotations

from functools import cached_property

from ..db import quote_ident

__all__ = ["CronQueries"]


class CronQueries:
    """The scheduler's SQL for one schema; values are always parameters."""

    def __init__(self, schema: str) -> None:
        self.s = quote_ident(schema)

    @cached_property
    def register(self) -> str:
        """Record unknown identifiers as known since $2; return the rows that were known
        before this statement (its snapshot cannot see its own inserts), which are
        exactly the items eligible for backfill."""
        s = self.s
        return f"""
with inserted as (
  insert into {s}._private_known_crontabs as known_crontabs (identifier, known_since)
  select unnest($1::text[]), $2::timestamptz
  on conflict (identifier) do nothing
)
select identifier, known_since, last_execution
from {s}._private_known_crontabs
where identifier = any($1::text[])"""

    @cached_property
    def schedule(self) -> str:
        """Advance ``last_execution`` and add the jobs of the pairs this call advanced.

        $1 JSON array of pairs {id, ts, task, payload, queue, max, key, mode,
        priority}, in the order the jobs should be added; $2 their distinct
        identifiers. Identifiers with no row (deleted while we ran) are inserted
        and count as advanced unless another pool inserted them first. Returns
        the id of each job added.
        """
        s = self.s
        return f"""
with specs as (
  select
    e.ord,
    e.value->>'id' as identifier,
    (e.value->>'ts')::timestamptz as ts,
    e.value->>'task' as task,
    e.value->'payload' as payload,
    e.value->>'queue' as queue_name,
    (e.value->>'max')::int as max_attempts,
    e.value->>'key' as job_key,
    e.value->>'mode' as job_key_mode,
    (e.value->>'priority')::int as priority
  from json_array_elements($1::json) with ordinality as e(value, ord)
),
locked as materialized (
  select k.identifier, k.last_execution
  from {s}._private_known_crontabs as k
  where k.identifier = any($2::text[])
  order by k.identifier
  for update
),
missing as (
  insert into {s}._private_known_crontabs as k (identifier, known_since, last_execution)
  select specs.identifier, min(specs.ts), max(specs.ts)
  from specs
  where not exists (select 1 from locked where locked.identifier = specs.identifier)
  group by specs.identifier
  on conflict (identifier) do nothing
  returning k.identifier
),
chosen as materialized (
  select specs.*
  from specs join locked on locked.identifier = specs.identifier
  where locked.last_execution is null or specs.ts > locked.last_execution
  union all
  select specs.*
  from specs join missing on missing.identifier = specs.identifier
),
advanced as (
  update {s}._private_known_crontabs as k
  set last_execution = newest.ts
  from (select identifier, max(ts) as ts from chosen group by identifier) as newest
  where k.identifier = newest.identifier
),
keyed as (
  -- One add_job per minute, oldest first, so a job key sees the same sequence of
  -- replacements as under graphile-worker.
  select j.id
  from (select * from chosen where chosen.job_key is not null order by chosen.ts, chosen.ord) as c
  cross join lateral {s}.add_job(
    identifier => c.task,
    payload => c.payload,
    queue_name => c.queue_name,
    run_at => c.ts,
    max_attempts => c.max_attempts,
    job_key => c.job_key,
    priority => c.priority,
    flags => null::text[],
    job_key_mode => coalesce(c.job_key_mode, 'replace')
  ) as j
),
bulk as (
  -- Jobs without a key cannot collide: one add_jobs call, one NOTIFY.
  select j.id
  from (
    select array_agg(
      row(c.task, c.payload, c.queue_name, c.ts, c.max_attempts::smallint, null::text,
          c.priority::smallint, null::text[])::{s}.job_spec
      order by c.ts, c.ord
    ) as specs
    from chosen as c
    where c.job_key is null
    having count(*) > 0
  ) as a
  cross join lateral {s}.add_jobs(a.specs, false) as j
)
select id from keyed
union all
select id from bulk"""
