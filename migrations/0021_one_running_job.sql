-- depends: 0020_recompute_on_drift
-- At most one RUNNING recompute job per portfolio (command_side/recompute_store.py, _CLAIM): two replicas that
-- claimed jobs of one portfolio at the same moment (a MARKET_DATA and a DRIFT job, a retry and a new job) ran the
-- portfolio's configuration twice at once; the claim's NOT EXISTS check could not see a claim not yet committed.
-- The index makes the second claim fail (the claiming replica then claims nothing that time).
--
-- A database that holds more than one already keeps the one with the latest lease RUNNING; the others go back to
-- PENDING, to run again later (a run they had stored is replayed through the job's request id, not stored twice).
UPDATE recompute_jobs SET status = 'PENDING', lease_until = NULL, updated_at = clock_timestamp()
WHERE status = 'RUNNING' AND job_id NOT IN (
    SELECT DISTINCT ON (portfolio_id) job_id FROM recompute_jobs WHERE status = 'RUNNING'
    ORDER BY portfolio_id, lease_until DESC, job_id);

CREATE UNIQUE INDEX recompute_jobs_one_running ON recompute_jobs (portfolio_id) WHERE status = 'RUNNING';
