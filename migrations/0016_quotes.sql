-- depends: 0015_order_claims
-- Bid and ask quotes per symbol (issue 10): the rotation policy's spread-blowout check compares a name's latest
-- spread with its median spread over a trailing window. A repeat of (symbol, time) replaces the quote.
CREATE TABLE quotes (
    symbol    text             NOT NULL,
    quoted_at timestamptz      NOT NULL,
    bid       double precision NOT NULL CHECK (bid > 0 AND bid < 'Infinity'::float8),
    ask       double precision NOT NULL CHECK (ask >= bid AND ask < 'Infinity'::float8),
    PRIMARY KEY (symbol, quoted_at)
);
DO $$ BEGIN PERFORM create_hypertable('quotes', by_range('quoted_at', INTERVAL '1 day')); END $$;
