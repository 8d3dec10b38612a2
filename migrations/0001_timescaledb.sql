-- TimescaleDB (Apache-2 edition) provides the hypertables of the event store and of market data.
CREATE EXTENSION IF NOT EXISTS timescaledb;
