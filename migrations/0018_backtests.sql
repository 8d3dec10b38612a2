-- depends: 0017_event_turnover
-- Walk-forward backtests (issue 11). A backtest and its path are written in one transaction when it finishes;
-- both hypertables are partitioned by the backtest's creation time (not the simulated dates, which may be
-- decades old), so retention drops whole old backtests.
CREATE TABLE backtests (
    backtest_id           uuid        NOT NULL,
    created_at            timestamptz NOT NULL,
    portfolio_id          text        NOT NULL,
    configuration_version integer     NOT NULL,
    requested_by          text        NOT NULL,
    symbols               text[]      NOT NULL,
    first_date            timestamptz NOT NULL,
    last_date             timestamptz NOT NULL,
    observations          integer     NOT NULL,
    decisions             integer     NOT NULL,
    failed_decisions      integer     NOT NULL,
    first_failure         text        NOT NULL,
    metrics               jsonb       NOT NULL, -- stratopt.v1.BacktestMetrics (protobuf JSON; NaN as "NaN")
    settings              jsonb       NOT NULL, -- stratopt.v1.BacktestRequest with defaults filled in
    computation_time_ms   double precision NOT NULL,
    PRIMARY KEY (backtest_id, created_at)
);
DO $$ BEGIN PERFORM create_hypertable('backtests', by_range('created_at', INTERVAL '30 days')); END $$;
CREATE INDEX backtests_by_portfolio ON backtests (portfolio_id, created_at DESC, backtest_id DESC);
CREATE INDEX backtests_by_id ON backtests (backtest_id);

CREATE TABLE backtest_points (
    backtest_id  uuid             NOT NULL,
    created_at   timestamptz      NOT NULL, -- the backtest's
    "timestamp"  timestamptz      NOT NULL, -- the simulated close
    equity       double precision NOT NULL,
    cash         double precision NOT NULL,
    weights      double precision[] NOT NULL, -- in the order of backtests.symbols
    rebalanced   boolean          NOT NULL,
    turnover     double precision NOT NULL, -- one-way
    cost         double precision NOT NULL,
    PRIMARY KEY (backtest_id, "timestamp", created_at)
);
DO $$ BEGIN PERFORM create_hypertable('backtest_points', by_range('created_at', INTERVAL '30 days')); END $$;
