-- depends: 0022_order_lots
-- Who stored a portfolio's rebalance policy (the authenticated principal of UpsertRebalancePolicy). The policy's
-- approval limit approves in advance whatever trades it covers; where a generator may not approve its own
-- recommendations (the four-eyes rule), a limit the generator set itself no longer auto-approves them
-- (command_side/rebalancing.py). NULL for policies stored before this migration.
ALTER TABLE rebalance_policies ADD COLUMN updated_by text;
