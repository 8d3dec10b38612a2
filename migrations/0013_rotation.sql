-- depends: 0012_store_optimization_run
-- The rotation engine (issue 10): signals, rotation configurations, kill-switches with their audit trail, cycle
-- decisions (write model and the rotation_decided hypertable), the order outbox, fills and execution events.

-- Model scores by signal set, symbol, horizon and time; a repeat replaces the score.
CREATE TABLE signals (
    signal_set  text             NOT NULL,
    symbol      text             NOT NULL,
    horizon     text             NOT NULL DEFAULT '',
    "time"      timestamptz      NOT NULL,
    score       double precision NOT NULL CHECK (score = score AND abs(score) < 'Infinity'::float8),
    PRIMARY KEY (signal_set, symbol, horizon, "time")
);
DO $$ BEGIN PERFORM create_hypertable('signals', by_range('time', INTERVAL '7 days')); END $$;

-- Versions of each portfolio's rotation configuration (command_side.rotation_records, schema_version 1).
CREATE TABLE rotation_configurations (
    portfolio_id  text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    enabled       boolean     NOT NULL,
    configuration jsonb       NOT NULL,
    content_hash  text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (portfolio_id, version)
);

-- The current state of each kill-switch: scope '' is the global switch, any other scope a portfolio_id. The
-- global row always exists: a cycle locks it FOR SHARE while it stores its decision and SetKillSwitch locks it
-- FOR UPDATE, so a decision commits either before a switch is engaged or after, seeing it.
CREATE TABLE kill_switches (
    scope      text        PRIMARY KEY,
    engaged    boolean     NOT NULL,
    changed_by text        NOT NULL,
    changed_at timestamptz NOT NULL,
    reason     text        NOT NULL
);
INSERT INTO kill_switches (scope, engaged, changed_by, changed_at, reason)
VALUES ('', false, 'migration', now(), 'created released');

-- Every change of a kill-switch: who, when, why.
CREATE TABLE kill_switch_events (
    event_id    uuid        NOT NULL,
    "timestamp" timestamptz NOT NULL,
    scope       text        NOT NULL,
    engaged     boolean     NOT NULL,
    changed_by  text        NOT NULL,
    reason      text        NOT NULL,
    PRIMARY KEY (event_id, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('kill_switch_events', by_range('timestamp', INTERVAL '365 days')); END $$;

-- Write model of the cycles: one row per decision (command_side.rotation_records), idempotent by request_id.
CREATE TABLE rotation_decisions (
    decision_id           uuid        PRIMARY KEY,
    portfolio_id          text        NOT NULL,
    request_id            text,
    request_hash          text,
    as_of                 timestamptz NOT NULL,
    decided_at            timestamptz NOT NULL,
    decision              jsonb       NOT NULL,
    UNIQUE (portfolio_id, request_id)
);
CREATE INDEX rotation_decisions_portfolio_idx ON rotation_decisions (portfolio_id, decided_at DESC);

-- The rotation_decided events: what the query side reads (latest, history, reason-code counts over time).
CREATE TABLE rotation_decided (
    event_id              uuid        NOT NULL,
    "timestamp"           timestamptz NOT NULL,
    portfolio_id          text        NOT NULL,
    decision_id           uuid        NOT NULL,
    configuration_version integer     NOT NULL,
    as_of                 timestamptz NOT NULL,
    engine                text        NOT NULL CHECK (engine IN ('GREEDY', 'QP')),
    action                text        NOT NULL CHECK (action IN ('TRADE', 'HOLD')),
    policy_reason         text        NOT NULL,
    reason_codes          text[]      NOT NULL,
    orders                integer     NOT NULL,
    turnover              double precision NOT NULL,
    decision              jsonb       NOT NULL,
    PRIMARY KEY (event_id, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('rotation_decided', by_range('timestamp', INTERVAL '7 days')); END $$;
CREATE INDEX rotation_decided_portfolio_idx ON rotation_decided (portfolio_id, "timestamp" DESC, event_id DESC);

-- Orders waiting for execution, written in the transaction of the decision (or approval) that emitted them. The
-- order id is derived from its source and symbol, so the same decision can never queue an order twice.
CREATE TABLE order_outbox (
    order_id        uuid             PRIMARY KEY,
    source          text             NOT NULL CHECK (source IN ('ROTATION', 'REBALANCE')),
    source_id       uuid             NOT NULL,
    portfolio_id    text             NOT NULL,
    symbol          text             NOT NULL,
    side            text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    shares          double precision NOT NULL CHECK (shares > 0),
    reference_price double precision NOT NULL CHECK (reference_price > 0),
    reason          text             NOT NULL,
    status          text             NOT NULL DEFAULT 'NEW'
        CHECK (status IN ('NEW', 'SENT', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED', 'REJECTED')),
    filled_shares   double precision NOT NULL DEFAULT 0 CHECK (filled_shares >= 0),
    average_price   double precision,
    created_at      timestamptz      NOT NULL,
    updated_at      timestamptz      NOT NULL
);
CREATE INDEX order_outbox_new_idx ON order_outbox (created_at) WHERE status = 'NEW';
CREATE INDEX order_outbox_portfolio_idx ON order_outbox (portfolio_id, created_at DESC);

-- Execution (the paper broker and reported fills).
-- Every fill, keyed by the broker's fill id (a repeated report is ignored).
CREATE TABLE fills (
    fill_id       text             PRIMARY KEY,
    order_id      uuid             NOT NULL REFERENCES order_outbox (order_id),
    portfolio_id  text             NOT NULL,
    symbol        text             NOT NULL,
    side          text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    shares        double precision NOT NULL CHECK (shares > 0),
    price         double precision NOT NULL CHECK (price > 0),
    commission    double precision NOT NULL CHECK (commission >= 0),
    filled_at     timestamptz      NOT NULL,
    realised_gain double precision NOT NULL,
    reported_by   text             NOT NULL
);
CREATE INDEX fills_order_idx ON fills (order_id);
CREATE INDEX fills_portfolio_idx ON fills (portfolio_id, filled_at);

-- The execution events (FILLED, PARTIALLY_FILLED, CANCELLED, REJECTED), each with its fill or reason.
CREATE TABLE execution_events (
    event_id     uuid        NOT NULL,
    "timestamp"  timestamptz NOT NULL,
    portfolio_id text        NOT NULL,
    order_id     uuid        NOT NULL,
    event_type   text        NOT NULL CHECK (event_type IN ('FILLED', 'PARTIALLY_FILLED', 'CANCELLED', 'REJECTED')),
    payload      jsonb       NOT NULL,
    PRIMARY KEY (event_id, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('execution_events', by_range('timestamp', INTERVAL '30 days')); END $$;
CREATE INDEX execution_events_portfolio_idx ON execution_events (portfolio_id, "timestamp" DESC);
