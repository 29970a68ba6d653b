-- kongtask's own migration track, number 1: worker heartbeats.
--
-- graphile-worker never reads or writes these objects, and nothing here is
-- recorded in __SCHEMA__.migrations, so a graphile-worker pool on the same
-- schema neither migrates nor misreads them. Each kongtask pool keeps a row
-- here fresh; a pool whose row goes stale is presumed dead and its locks are
-- freed by the others within seconds instead of graphile-worker's 4 hours.
create table __SCHEMA__._kongtask_workers (
  worker_id text not null primary key,
  hostname text,
  pid integer,
  started_at timestamp with time zone not null default now(),
  last_seen timestamp with time zone not null default now()
);
