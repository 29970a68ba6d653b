-- kongtask's own migration track, number 2: two partial indexes for its fetch.
--
-- kongtask fetches two kinds of jobs apart (see queries.py):
-- * jobs of a named queue or with a job key are claimed with a committed
--   update, so that every other client sees them locked (a queue must stay
--   serial; add_job must see a running keyed job as locked to replace it);
-- * every other ("plain") job is leased: locked by its fetch transaction,
--   with nothing written until it is done.
-- graphile-worker's indexes serve "all available jobs" and "available jobs of
-- no queue"; with them alone each kind would be found by walking a backlog of
-- the other. Partial: a job enters one of these two, and leaves it when
-- claimed. graphile-worker does not know them and never needs to.
create index if not exists _kongtask_jobs_claim_index
  on __SCHEMA__._private_jobs (priority, run_at, id)
  include (task_id, job_queue_id)
  where is_available = true and (job_queue_id is not null or key is not null);

-- Its key ends with id so that a fetch can resume after the last job it
-- leased (a row comparison on the index order) instead of walking past the
-- rows its own open leases still hold.
create index if not exists _kongtask_jobs_lease_index
  on __SCHEMA__._private_jobs (priority, run_at, id)
  include (task_id)
  where is_available = true and job_queue_id is null and key is null;
