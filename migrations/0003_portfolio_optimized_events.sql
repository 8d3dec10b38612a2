-- depends: 0002_configurations_and_results
-- The event store: one portfolio_optimized row per successful run, in a TimescaleDB hypertable.
--
-- Chunk interval 7 days: the expected write rate is thousands of portfolios re-optimized a few times a day
-- (10k-50k rows a day of 1-10 kB, weights included), so a week's chunk with its indexes stays within a few GB,
-- inside TimescaleDB's guideline of a quarter of the database host's memory; history and analytics queries
-- cover weeks to years and touch few chunks; retention drops whole weeks with drop_chunks.

CREATE TABLE portfolio_optimized (
    event_id              uuid             NOT NULL,
    "timestamp"           timestamptz      NOT NULL,
    portfolio_id          text             NOT NULL,
    result_id             uuid             NOT NULL,
    configuration_version integer          NOT NULL,
    request_id            text,
    objective             text             NOT NULL,
    method                text             NOT NULL,
    weights               jsonb            NOT NULL, -- {strategy_id: weight}
    expected_return       double precision NOT NULL,
    volatility            double precision NOT NULL,
    sharpe_ratio          double precision NOT NULL,
    metadata              jsonb            NOT NULL, -- stratopt.v1.OptimizationMetadata (protobuf JSON mapping)
    PRIMARY KEY (event_id, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('portfolio_optimized', by_range('timestamp', INTERVAL '7 days')); END $$;
-- History and analytics read one portfolio over a time range, newest first, keyset-paginated on (timestamp, event_id).
CREATE INDEX portfolio_optimized_portfolio_time_idx
    ON portfolio_optimized (portfolio_id, "timestamp" DESC, event_id DESC);

-- Read model: the latest event of each portfolio, upserted in the same transaction as the event.
CREATE TABLE latest_portfolio_optimizations (
    portfolio_id          text             PRIMARY KEY,
    event_id              uuid             NOT NULL,
    "timestamp"           timestamptz      NOT NULL,
    result_id             uuid             NOT NULL,
    configuration_version integer          NOT NULL,
    request_id            text,
    objective             text             NOT NULL,
    method                text             NOT NULL,
    weights               jsonb            NOT NULL,
    expected_return       double precision NOT NULL,
    volatility            double precision NOT NULL,
    sharpe_ratio          double precision NOT NULL,
    metadata              jsonb            NOT NULL
);
