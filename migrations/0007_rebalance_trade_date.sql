-- depends: 0006_trading
-- The trade date (as_of) of each rebalance recommendation: the wash-sale checks of a later GenerateRebalance
-- read the realised losses and buys of the portfolio's approved recommendations dated within the window.
ALTER TABLE rebalance_recommendations ADD COLUMN as_of timestamptz;
CREATE INDEX rebalance_recommendations_portfolio_as_of_idx
    ON rebalance_recommendations (portfolio_id, as_of) WHERE status IN ('APPROVED', 'AUTO_APPROVED');
