-- depends: 0003_portfolio_optimized_events
-- From weights to trades: the allocation cache, holdings, rebalance policies, rebalance recommendations and
-- the rebalance_events hypertable (every state change of a recommendation, and every recorded allocation).

-- AllocateShares results keyed by the hash of their normalised input; an entry past expires_at is a miss.
CREATE TABLE share_allocations (
    cache_key    text        PRIMARY KEY,
    portfolio_id text        NOT NULL DEFAULT '',
    request      jsonb       NOT NULL, -- the normalised input (protobuf JSON mapping)
    response     bytea       NOT NULL, -- stratopt.v1.AllocateSharesResponse (serialized)
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX share_allocations_expires_idx ON share_allocations (expires_at);

-- The latest holdings snapshot of each portfolio (positions with their tax lots; prices are not stored).
CREATE TABLE portfolio_holdings (
    portfolio_id text             PRIMARY KEY,
    positions    jsonb            NOT NULL, -- [stratopt.v1.Position] (protobuf JSON mapping)
    cash         double precision NOT NULL CHECK (cash >= 0),
    updated_at   timestamptz      NOT NULL DEFAULT now()
);

-- Rebalance policy of each portfolio (stratopt.v1.RebalancePolicy, protobuf JSON mapping).
CREATE TABLE rebalance_policies (
    portfolio_id text        PRIMARY KEY,
    policy       jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Write model of the approval workflow: one row per recommendation, its status moved by Approve/Reject or
-- expiry, each change committed with its rebalance_events row.
CREATE TABLE rebalance_recommendations (
    recommendation_id uuid             PRIMARY KEY,
    portfolio_id      text             NOT NULL,
    request_id        text,
    request_hash      text,
    status            text             NOT NULL
        CHECK (status IN ('AUTO_APPROVED', 'PENDING_APPROVAL', 'APPROVED', 'REJECTED', 'EXPIRED')),
    recommendation    bytea            NOT NULL, -- stratopt.v1.RebalanceRecommendation as created (serialized)
    total_trade_value double precision NOT NULL,
    created_at        timestamptz      NOT NULL,
    expires_at        timestamptz      NOT NULL,
    decided_by        text,
    decided_at        timestamptz,
    reason            text,
    UNIQUE (portfolio_id, request_id)
);
CREATE INDEX rebalance_recommendations_pending_idx
    ON rebalance_recommendations (expires_at) WHERE status = 'PENDING_APPROVAL';

-- Chunk interval 30 days: a few events per rebalance and portfolio (far fewer than portfolio_optimized).
CREATE TABLE rebalance_events (
    event_id          uuid             NOT NULL,
    "timestamp"       timestamptz      NOT NULL,
    portfolio_id      text             NOT NULL,
    recommendation_id uuid,
    event_type        text             NOT NULL
        CHECK (event_type IN ('CREATED', 'APPROVED', 'REJECTED', 'EXPIRED', 'SHARES_ALLOCATED')),
    status            text             NOT NULL,
    actor             text             NOT NULL DEFAULT '',
    total_trade_value double precision NOT NULL,
    payload           jsonb            NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (event_id, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('rebalance_events', by_range('timestamp', INTERVAL '30 days')); END $$;
CREATE INDEX rebalance_events_portfolio_time_idx ON rebalance_events (portfolio_id, "timestamp" DESC, event_id DESC);
