-- depends: 0021_one_running_job
-- The tax lots a rebalance SELL order is to relieve, as its recommendation chose them by the policy's lot method
-- (HIFO, TAX_MINIMIZING, ...): [{"lot_id": ..., "shares": ...}, ...] in the order taken. A fill relieves the
-- order's lots first (command_side/execution.py, apply_fill), then first in, first out; without it every fill sold
-- first in, first out, and the gains booked differed from the ones the recommendation reported and was approved
-- on. NULL for BUY orders, rotation orders and the orders queued before this migration.
ALTER TABLE order_outbox ADD COLUMN lots jsonb;
