-- depends: 0018_backtests
-- Recompute when data arrives (issue 11): a configuration's recompute policy says when the server re-runs it by
-- itself (on new market data for its symbols, on a schedule), and recompute_jobs is the outbox the ingest
-- transaction writes and the recompute workers claim (command_side/recompute_store.py, README "Recompute when data
-- arrives").

-- The policy: {"schema_version": 2, "policy": recompute policy object or null} (docs/storage_schema.md). Part of
-- the versioned content only when set, so the stored content hashes stay valid.
ALTER TABLE optimization_configurations
    ADD COLUMN recompute jsonb NOT NULL DEFAULT '{"schema_version": 2, "policy": null}'::jsonb;

-- The versions that re-run on market data or on a schedule (few of all versions): the enqueue statements look
-- only at these, then keep those that are their portfolio's latest version (the primary key).
CREATE INDEX optimization_configurations_on_market_data ON optimization_configurations (portfolio_id, version)
    WHERE enabled AND (recompute #>> '{policy,on_market_data}')::boolean;
CREATE INDEX optimization_configurations_on_schedule ON optimization_configurations (portfolio_id, version)
    WHERE enabled AND (recompute #>> '{policy,schedule_interval_seconds}')::float8 > 0;

-- One number per ingest transaction that enqueues: the data version of its market-data jobs.
CREATE SEQUENCE market_data_versions;

-- A plain table (not a hypertable): DONE jobs are purged by the workers after a week, DEAD ones stay for operators.
CREATE TABLE recompute_jobs (
    job_id       uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    portfolio_id text        NOT NULL,
    trigger      text        NOT NULL CHECK (trigger IN ('MARKET_DATA', 'SCHEDULE')),
    data_version bigint      NOT NULL, -- market_data_versions, or the schedule slot (unix seconds / interval)
    status       text        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'RUNNING', 'DONE', 'DEAD')),
    attempts     integer     NOT NULL DEFAULT 0,
    not_before   timestamptz NOT NULL, -- debounce, then the back-off before a retry
    not_after    timestamptz NOT NULL, -- the debounce never pushes not_before past this
    lease_until  timestamptz,          -- RUNNING: claimed until then; an expired lease is claimed again
    claimed_by   text        NOT NULL DEFAULT '',
    last_error   text        NOT NULL DEFAULT '',
    result_id    uuid,                 -- DONE: the stored run
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (portfolio_id, trigger, data_version)
);
-- At most one job per portfolio and trigger waits for its first attempt: later data coalesces into it (debounce).
CREATE UNIQUE INDEX recompute_jobs_one_waiting ON recompute_jobs (portfolio_id, trigger)
    WHERE status = 'PENDING' AND attempts = 0;
CREATE INDEX recompute_jobs_due ON recompute_jobs (not_before) WHERE status = 'PENDING';
CREATE INDEX recompute_jobs_leased ON recompute_jobs (portfolio_id, lease_until) WHERE status = 'RUNNING';
CREATE INDEX recompute_jobs_by_time ON recompute_jobs (created_at DESC, job_id DESC);
CREATE INDEX recompute_jobs_by_portfolio ON recompute_jobs (portfolio_id, created_at DESC, job_id DESC);
