-- depends: 0002_configurations_and_results
-- Black-Litterman prior and views are part of a configuration (protobuf JSON mapping; {} for other methods).
ALTER TABLE optimization_configurations ADD COLUMN black_litterman jsonb NOT NULL DEFAULT '{}'::jsonb;
