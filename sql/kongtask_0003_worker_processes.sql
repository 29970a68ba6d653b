-- kongtask's own migration track, number 3: where each pool's process runs.
--
-- A pool records its host (the kernel's boot id and its pid namespace, so two
-- containers on one kernel never compare each other's pids) and when its
-- process started. A pool starting, or heartbeating, on the same host can then
-- tell at once that another pool's process is gone (its pid runs no longer, or
-- runs a younger process) and free that pool's jobs, instead of waiting for
-- its heartbeat to go stale. graphile-worker never reads this table.
alter table __SCHEMA__._kongtask_workers
  add column if not exists host_key text,
  add column if not exists process_start bigint;
