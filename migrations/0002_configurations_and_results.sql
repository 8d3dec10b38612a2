-- depends: 0001_timescaledb
-- Write model of the command side: versioned configurations and one result row per optimization run.

CREATE TABLE optimization_configurations (
    portfolio_id     text        NOT NULL,
    version          integer     NOT NULL CHECK (version >= 1),
    objective        text        NOT NULL,          -- stratopt.v1.Objective enum name
    method           text        NOT NULL,          -- stratopt.v1.OptimizationMethod enum name
    strategies       jsonb       NOT NULL,          -- [Strategy] without returns (protobuf JSON mapping)
    constraints      jsonb       NOT NULL,          -- OptimizationConstraints (protobuf JSON mapping)
    risk_parameters  jsonb       NOT NULL,          -- RiskParameters (protobuf JSON mapping)
    lookback_periods integer     NOT NULL DEFAULT 0,
    market_symbol    text        NOT NULL DEFAULT '',
    enabled          boolean     NOT NULL DEFAULT true,
    content_hash     text        NOT NULL,          -- sha256 of the canonical content; same content = same version
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (portfolio_id, version)
);

CREATE TABLE optimization_results (
    result_id             uuid             PRIMARY KEY,
    portfolio_id          text             NOT NULL,
    configuration_version integer          NOT NULL,
    request_id            text             UNIQUE,   -- idempotency key; NULL when the caller gave none
    request_hash          text             NOT NULL, -- sha256 of the request, to refuse a reused key
    event_id              uuid             NOT NULL,
    created_at            timestamptz      NOT NULL,
    objective             text             NOT NULL,
    method                text             NOT NULL,
    weights               jsonb            NOT NULL, -- {strategy_id: weight}
    expected_return       double precision NOT NULL,
    volatility            double precision NOT NULL,
    sharpe_ratio          double precision NOT NULL,
    objective_value       double precision NOT NULL,
    solver                text             NOT NULL,
    constraints_satisfied boolean          NOT NULL,
    response              bytea            NOT NULL, -- serialized stratopt.v1.OptimizeResponse, for replays
    run_inputs            jsonb            NOT NULL, -- input kind, window and the caller's current weights
    FOREIGN KEY (portfolio_id, configuration_version)
        REFERENCES optimization_configurations (portfolio_id, version)
);
CREATE INDEX optimization_results_portfolio_idx ON optimization_results (portfolio_id, created_at DESC);
