-- depends: 0011_stored_symbol_keys
-- One Optimize run of an unchanged configuration stored in one statement (one round trip, its own transaction):
-- the portfolio's advisory lock, a check that the configuration head is still the version the caller computed,
-- the run's timestamp (written into the two JSON documents), the result row, the portfolio_optimized event, the
-- latest read model, the notification, and a refusal to commit past the caller's deadline. A changed head
-- returns NULL and writes nothing: the caller then takes the transactional path (command_side.repository).
-- PL/pgSQL takes a new snapshot for each statement under READ COMMITTED, so the head is read after the lock.
CREATE FUNCTION store_optimization_run(
    p_portfolio_id text, p_version integer, p_content_hash text, p_commit_within_s double precision,
    p_result_id uuid, p_request_id text, p_request_hash text, p_event_id uuid,
    p_objective text, p_method text, p_weights jsonb, p_expected_return double precision,
    p_volatility double precision, p_sharpe_ratio double precision, p_objective_value double precision,
    p_solver text, p_constraints_satisfied boolean, p_result jsonb, p_run_inputs jsonb, p_metadata jsonb,
    p_channel text
) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_version integer;
    head_hash text;
    now_ timestamptz;
    stamp jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_portfolio_id));
    SELECT version, content_hash INTO head_version, head_hash FROM optimization_configurations
        WHERE portfolio_id = p_portfolio_id ORDER BY version DESC LIMIT 1;
    IF head_version IS DISTINCT FROM p_version OR head_hash IS DISTINCT FROM p_content_hash THEN
        RETURN NULL;
    END IF;
    now_ := clock_timestamp();
    -- RFC 3339 in UTC as command_side.result_records.encode_instant writes it: no fraction when it is 0.
    stamp := to_jsonb(to_char(now_ AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN to_char(now_, 'US') = '000000' THEN '' ELSE '.' || to_char(now_, 'US') END || 'Z');
    p_metadata := jsonb_set(p_metadata, '{timestamp}', stamp);
    p_result := jsonb_set(p_result, '{metadata,timestamp}', stamp);
    INSERT INTO optimization_results (result_id, portfolio_id, configuration_version, request_id, request_hash,
        event_id, created_at, objective, method, weights, expected_return, volatility, sharpe_ratio,
        objective_value, solver, constraints_satisfied, result, run_inputs)
    VALUES (p_result_id, p_portfolio_id, p_version, p_request_id, p_request_hash, p_event_id, now_, p_objective,
        p_method, p_weights, p_expected_return, p_volatility, p_sharpe_ratio, p_objective_value, p_solver,
        p_constraints_satisfied, p_result, p_run_inputs);
    INSERT INTO portfolio_optimized (event_id, "timestamp", portfolio_id, result_id, configuration_version,
        request_id, objective, method, weights, expected_return, volatility, sharpe_ratio, metadata)
    VALUES (p_event_id, now_, p_portfolio_id, p_result_id, p_version, p_request_id, p_objective, p_method,
        p_weights, p_expected_return, p_volatility, p_sharpe_ratio, p_metadata);
    INSERT INTO latest_portfolio_optimizations AS latest (event_id, "timestamp", portfolio_id, result_id,
        configuration_version, request_id, objective, method, weights, expected_return, volatility,
        sharpe_ratio, metadata)
    VALUES (p_event_id, now_, p_portfolio_id, p_result_id, p_version, p_request_id, p_objective, p_method,
        p_weights, p_expected_return, p_volatility, p_sharpe_ratio, p_metadata)
    ON CONFLICT (portfolio_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, "timestamp" = EXCLUDED."timestamp",
        result_id = EXCLUDED.result_id, configuration_version = EXCLUDED.configuration_version,
        request_id = EXCLUDED.request_id, objective = EXCLUDED.objective,
        method = EXCLUDED.method, weights = EXCLUDED.weights,
        expected_return = EXCLUDED.expected_return, volatility = EXCLUDED.volatility,
        sharpe_ratio = EXCLUDED.sharpe_ratio, metadata = EXCLUDED.metadata
    WHERE (latest."timestamp", latest.event_id) <= (EXCLUDED."timestamp", EXCLUDED.event_id);
    PERFORM pg_notify(p_channel, p_portfolio_id || ' ' || p_event_id::text);
    -- The deadline: p_commit_within_s seconds after the statement arrived (NULL: none). Raising rolls it all back.
    IF p_commit_within_s IS NOT NULL
            AND clock_timestamp() > statement_timestamp() + make_interval(secs => p_commit_within_s) THEN
        RAISE EXCEPTION 'the call''s deadline passed before its result was stored' USING ERRCODE = 'SD001';
    END IF;
    RETURN now_;
END
$$;
