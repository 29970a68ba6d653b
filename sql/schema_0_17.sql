-- kongtask: the graphile-worker 0.17 schema (its migrations 1-19 applied), built in one step.
--
-- Written from the compatibility contract in DESIGN.md section 2. The catalog
-- (tables, column order, types, defaults, constraint and index names, the view,
-- the composite type, function signatures) must equal what graphile-worker
-- 0.17.3 produces: tests/test_schema_catalog.py compares it with a committed
-- description generated from the real npm package.
--
-- __SCHEMA__ is replaced by the schema name quoted as an identifier, and
-- $__BODY__$ by a dollar-quote tag that does not occur in that name.

create table __SCHEMA__.migrations (
  id integer not null,
  ts timestamp with time zone default now() not null,
  breaking boolean default false not null,
  constraint migrations_pkey primary key (id)
);

create table __SCHEMA__._private_job_queues (
  id integer generated always as identity (sequence name __SCHEMA__.job_queues_id_seq),
  queue_name text not null,
  locked_at timestamp with time zone,
  locked_by text,
  is_available boolean generated always as (locked_at is null) stored not null,
  constraint job_queues_pkey1 primary key (id),
  constraint job_queues_queue_name_key unique (queue_name),
  constraint job_queues_queue_name_check check (length(queue_name) <= 128)
);

create table __SCHEMA__._private_tasks (
  id integer generated always as identity (sequence name __SCHEMA__.tasks_id_seq),
  identifier text not null,
  constraint tasks_pkey primary key (id),
  constraint tasks_identifier_key unique (identifier),
  constraint tasks_identifier_check check (length(identifier) <= 128)
);

create table __SCHEMA__._private_jobs (
  id bigint generated always as identity (sequence name __SCHEMA__.jobs_id_seq1),
  job_queue_id integer,
  task_id integer not null,
  payload json default '{}'::json not null,
  priority smallint default 0 not null,
  run_at timestamp with time zone default now() not null,
  attempts smallint default 0 not null,
  max_attempts smallint default 25 not null,
  last_error text,
  created_at timestamp with time zone default now() not null,
  updated_at timestamp with time zone default now() not null,
  key text,
  locked_at timestamp with time zone,
  locked_by text,
  revision integer default 0 not null,
  flags jsonb,
  is_available boolean generated always as ((locked_at is null) and (attempts < max_attempts)) stored not null,
  constraint jobs_pkey1 primary key (id),
  constraint jobs_key_key1 unique (key),
  constraint jobs_key_check check ((length(key) > 0) and (length(key) <= 512)),
  constraint jobs_max_attempts_check check (max_attempts >= 1)
);

-- The fetch query walks one of these two partial indexes in (priority, run_at)
-- order; INCLUDE lets it find candidates without visiting the heap.
create index jobs_main_index on __SCHEMA__._private_jobs
  using btree (priority, run_at) include (id, task_id, job_queue_id)
  where (is_available = true);
create index jobs_no_queue_index on __SCHEMA__._private_jobs
  using btree (priority, run_at) include (id, task_id)
  where ((is_available = true) and (job_queue_id is null));

create table __SCHEMA__._private_known_crontabs (
  identifier text not null,
  known_since timestamp with time zone not null,
  last_execution timestamp with time zone,
  constraint known_crontabs_pkey primary key (identifier)
);

-- Nobody but the queue's own functions and workers should read these tables
-- through PostgREST-style role setups; graphile-worker enables RLS without
-- policies, and so do we.
alter table __SCHEMA__._private_job_queues enable row level security;
alter table __SCHEMA__._private_jobs enable row level security;
alter table __SCHEMA__._private_known_crontabs enable row level security;
alter table __SCHEMA__._private_tasks enable row level security;

create view __SCHEMA__.jobs as
  select
    jobs.id,
    job_queues.queue_name,
    tasks.identifier as task_identifier,
    jobs.priority,
    jobs.run_at,
    jobs.attempts,
    jobs.max_attempts,
    jobs.last_error,
    jobs.created_at,
    jobs.updated_at,
    jobs.key,
    jobs.locked_at,
    jobs.locked_by,
    jobs.revision,
    jobs.flags
  from __SCHEMA__._private_jobs as jobs
  inner join __SCHEMA__._private_tasks as tasks on tasks.id = jobs.task_id
  left join __SCHEMA__._private_job_queues as job_queues on job_queues.id = jobs.job_queue_id;

create type __SCHEMA__.job_spec as (
  identifier text,
  payload json,
  queue_name text,
  run_at timestamp with time zone,
  max_attempts smallint,
  job_key text,
  priority smallint,
  flags text[]
);

-- Bulk insert. A spec whose job_key matches a job that is running (locked) or
-- used up cannot be updated in place: that job's key is released and it is
-- marked finished, and a fresh job is inserted for the new request. A pending
-- job with the same key is replaced (arrays payloads are concatenated, so
-- batched work accumulates).
create function __SCHEMA__.add_jobs(
  specs __SCHEMA__.job_spec[],
  job_key_preserve_run_at boolean default false
) returns setof __SCHEMA__._private_jobs
language plpgsql
as $__BODY__$
begin
  insert into __SCHEMA__._private_tasks as tasks (identifier)
    select distinct s.identifier from unnest(specs) as s
    on conflict do nothing;

  insert into __SCHEMA__._private_job_queues as job_queues (queue_name)
    select distinct s.queue_name from unnest(specs) as s
    where s.queue_name is not null
    on conflict do nothing;

  update __SCHEMA__._private_jobs as jobs
    set key = null, attempts = jobs.max_attempts, updated_at = now()
    from unnest(specs) as s
    where s.job_key is not null
      and jobs.key = s.job_key
      and jobs.is_available is not true;

  -- The count may overstate what is inserted (conflicts update instead);
  -- listeners only use it as a hint of how much to fetch.
  perform pg_notify(
    'jobs:insert',
    '{"r":' || random()::text || ',"count":' || array_length(specs, 1)::text || '}'
  );

  return query
    insert into __SCHEMA__._private_jobs as jobs (
      job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags
    )
    select
      job_queues.id,
      tasks.id,
      coalesce(s.payload, '{}'::json),
      coalesce(s.run_at, now()),
      coalesce(s.max_attempts, 25),
      s.job_key,
      coalesce(s.priority, 0),
      (select jsonb_object_agg(f, true) from unnest(s.flags) as f)
    from unnest(specs) with ordinality as s
    inner join __SCHEMA__._private_tasks as tasks on tasks.identifier = s.identifier
    left join __SCHEMA__._private_job_queues as job_queues on job_queues.queue_name = s.queue_name
    -- Ids follow the order of the specs (the joins alone may reorder rows), so
    -- jobs added together with equal priority and run_at run in that order.
    order by s.ordinality
    on conflict (key) do update set
      job_queue_id = excluded.job_queue_id,
      task_id = excluded.task_id,
      payload = case
        when json_typeof(jobs.payload) = 'array' and json_typeof(excluded.payload) = 'array'
          then (jobs.payload::jsonb || excluded.payload::jsonb)::json
        else excluded.payload
      end,
      max_attempts = excluded.max_attempts,
      run_at = case
        when job_key_preserve_run_at is true and jobs.attempts = 0 then jobs.run_at
        else excluded.run_at
      end,
      priority = excluded.priority,
      revision = jobs.revision + 1,
      flags = excluded.flags,
      attempts = 0,
      last_error = null,
      updated_at = now()
    where jobs.locked_at is null
    returning *;
end;
$__BODY__$;

create function __SCHEMA__.add_job(
  identifier text,
  payload json default null::json,
  queue_name text default null::text,
  run_at timestamp with time zone default null::timestamp with time zone,
  max_attempts integer default null::integer,
  job_key text default null::text,
  priority integer default null::integer,
  flags text[] default null::text[],
  job_key_mode text default 'replace'::text
) returns __SCHEMA__._private_jobs
language plpgsql
as $__BODY__$
declare
  v_job __SCHEMA__._private_jobs;
begin
  if job_key is null or job_key_mode is null or job_key_mode in ('replace', 'preserve_run_at') then
    select * into v_job
    from __SCHEMA__.add_jobs(
      array[(
        identifier, payload, queue_name, run_at, max_attempts::smallint,
        job_key, priority::smallint, flags
      )::__SCHEMA__.job_spec],
      (job_key_mode = 'preserve_run_at')
    )
    limit 1;
    return v_job;
  elsif job_key_mode = 'unsafe_dedupe' then
    -- Keep whatever job holds this key, even one already running; only a
    -- genuinely new row (revision 0) announces itself.
    insert into __SCHEMA__._private_tasks as tasks (identifier)
      values (add_job.identifier)
      on conflict do nothing;
    if add_job.queue_name is not null then
      insert into __SCHEMA__._private_job_queues as job_queues (queue_name)
        values (add_job.queue_name)
        on conflict do nothing;
    end if;
    insert into __SCHEMA__._private_jobs as jobs (
      job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags
    )
    select
      job_queues.id,
      tasks.id,
      coalesce(add_job.payload, '{}'::json),
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts::smallint, 25::smallint),
      add_job.job_key,
      coalesce(add_job.priority::smallint, 0::smallint),
      (select jsonb_object_agg(f, true) from unnest(add_job.flags) as f)
    from __SCHEMA__._private_tasks as tasks
    left join __SCHEMA__._private_job_queues as job_queues
      on job_queues.queue_name = add_job.queue_name
    where tasks.identifier = add_job.identifier
    on conflict (key) do update set
      revision = jobs.revision + 1,
      updated_at = now()
    returning * into v_job;
    if v_job.revision = 0 then
      perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":1}');
    end if;
    return v_job;
  else
    raise exception 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.'
      using errcode = 'GWBKM';
  end if;
end;
$__BODY__$;

-- Admin functions: each leaves alone jobs that a live worker holds (locked
-- less than 4 hours ago); an older lock belongs to a worker presumed dead.
create function __SCHEMA__.complete_jobs(job_ids bigint[])
returns setof __SCHEMA__._private_jobs
language sql
as $__BODY__$
  delete from __SCHEMA__._private_jobs as jobs
  where id = any(job_ids)
    and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$__BODY__$;

create function __SCHEMA__.permanently_fail_jobs(job_ids bigint[], error_message text default null::text)
returns setof __SCHEMA__._private_jobs
language sql
as $__BODY__$
  update __SCHEMA__._private_jobs as jobs
  set
    last_error = coalesce(error_message, 'Manually marked as failed'),
    attempts = max_attempts,
    updated_at = now()
  where id = any(job_ids)
    and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$__BODY__$;

create function __SCHEMA__.reschedule_jobs(
  job_ids bigint[],
  run_at timestamp with time zone default null::timestamp with time zone,
  priority integer default null::integer,
  attempts integer default null::integer,
  max_attempts integer default null::integer
) returns setof __SCHEMA__._private_jobs
language sql
as $__BODY__$
  update __SCHEMA__._private_jobs as jobs
  set
    run_at = coalesce(reschedule_jobs.run_at, jobs.run_at),
    priority = coalesce(reschedule_jobs.priority::smallint, jobs.priority),
    attempts = coalesce(reschedule_jobs.attempts::smallint, jobs.attempts),
    max_attempts = coalesce(reschedule_jobs.max_attempts::smallint, jobs.max_attempts),
    updated_at = now()
  where id = any(job_ids)
    and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$__BODY__$;

-- A job that is running cannot be deleted under its worker; it is instead
-- stopped from retrying and its key freed for a new job.
create function __SCHEMA__.remove_job(job_key text)
returns __SCHEMA__._private_jobs
language plpgsql strict
as $__BODY__$
declare
  v_job __SCHEMA__._private_jobs;
begin
  delete from __SCHEMA__._private_jobs as jobs
  where key = job_key
    and (locked_at is null or locked_at < now() - interval '4 hours')
  returning * into v_job;
  if not (v_job is null) then
    perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":-1}');
    return v_job;
  end if;
  update __SCHEMA__._private_jobs as jobs
  set key = null, attempts = jobs.max_attempts, updated_at = now()
  where key = job_key
  returning * into v_job;
  return v_job;
end;
$__BODY__$;

create function __SCHEMA__.force_unlock_workers(worker_ids text[])
returns void
language sql
as $__BODY__$
  update __SCHEMA__._private_jobs as jobs
  set locked_at = null, locked_by = null
  where locked_by = any(worker_ids);
  update __SCHEMA__._private_job_queues as job_queues
  set locked_at = null, locked_by = null
  where locked_by = any(worker_ids);
$__BODY__$;
