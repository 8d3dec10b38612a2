-- depends: 0019_recompute
-- Recompute on drift (issue 11): a recompute policy's drift_threshold re-runs a configuration when its stored
-- holdings drift from the latest run's weights beyond it; the workers check at each new market data version and
-- enqueue a DRIFT job (command_side/recompute.py).
ALTER TABLE recompute_jobs DROP CONSTRAINT recompute_jobs_trigger_check;
ALTER TABLE recompute_jobs ADD CONSTRAINT recompute_jobs_trigger_check
    CHECK (trigger IN ('MARKET_DATA', 'SCHEDULE', 'DRIFT'));
CREATE INDEX optimization_configurations_on_drift ON optimization_configurations (portfolio_id, version)
    WHERE enabled AND (recompute #>> '{policy,drift_threshold}') IS NOT NULL;
