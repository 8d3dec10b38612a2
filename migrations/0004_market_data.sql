-- depends: 0001_timescaledb
-- Stored prices, one row per symbol and observation, in a TimescaleDB hypertable.
--
-- Chunk interval 365 days: daily bars for a few hundred symbols are ~100k rows a year (~10-20 MB with the
-- index), so one chunk a year keeps chunk counts low for multi-year estimation windows.

CREATE TABLE market_data (
    symbol      text             NOT NULL,
    "timestamp" timestamptz      NOT NULL,
    price       double precision NOT NULL CHECK (price > 0 AND price < 'Infinity'::double precision),
    volume      double precision CHECK (volume IS NULL OR volume >= 0),
    PRIMARY KEY (symbol, "timestamp")
);
DO $$ BEGIN PERFORM create_hypertable('market_data', by_range('timestamp', INTERVAL '365 days')); END $$;
