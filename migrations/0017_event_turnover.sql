-- depends: 0016_quotes
-- The one-way turnover of each optimization run against the portfolio's previous run, stored with the event
-- (issue 11): the query side's analytics become one time_bucket aggregate in TimescaleDB instead of every run's
-- weights read into Python. Turnover = ½ Σ_i |w_i − w_prev,i| over the union of both runs' symbols (a missing
-- symbol weighs 0); NULL for a portfolio's first run. Runs are ordered by ("timestamp", event_id), the order of
-- the history pages.
--
-- Kept by triggers, whatever writes the events: before a row is inserted its turnover is computed against its
-- predecessor; after it is inserted, its successor's turnover (if a later run exists: an out-of-order insert) is
-- computed against it. Rows of one INSERT or COPY see each other (a row-level BEFORE trigger sees the rows the
-- statement inserted before it; an AFTER trigger sees them all), so any insertion order ends correct.
-- Retention's drop_chunks keeps the stored turnover of the oldest remaining run (against its dropped predecessor).

-- PL/pgSQL rather than SQL: its query plan is cached per session (a SQL function this complex is planned on every
-- call): 88 µs of trigger time per insert instead of 215 µs (20 names, measured on this project's machine).
CREATE FUNCTION one_way_turnover(weights jsonb, previous jsonb) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total double precision;
BEGIN
    IF previous IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT 0.5 * coalesce(sum(abs(coalesce(n.value::float8, 0) - coalesce(p.value::float8, 0))), 0) INTO total
    FROM jsonb_each_text(weights) n FULL JOIN jsonb_each_text(previous) p USING (key);
    RETURN total;
END
$$;

ALTER TABLE portfolio_optimized ADD COLUMN turnover double precision;

UPDATE portfolio_optimized AS e SET turnover = t.turnover
FROM (
    SELECT event_id, "timestamp",
           one_way_turnover(weights, lag(weights) OVER (PARTITION BY portfolio_id ORDER BY "timestamp", event_id))
               AS turnover
    FROM portfolio_optimized
) AS t
WHERE e.event_id = t.event_id AND e."timestamp" = t."timestamp";

CREATE FUNCTION portfolio_optimized_turnover() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    NEW.turnover := one_way_turnover(NEW.weights, (
        SELECT weights FROM portfolio_optimized
        WHERE portfolio_id = NEW.portfolio_id AND ("timestamp", event_id) < (NEW."timestamp", NEW.event_id)
        ORDER BY "timestamp" DESC, event_id DESC LIMIT 1));
    RETURN NEW;
END
$$;

CREATE FUNCTION portfolio_optimized_successor_turnover() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    next_event uuid;
    next_time timestamptz;
BEGIN
    SELECT event_id, "timestamp" INTO next_event, next_time FROM portfolio_optimized
        WHERE portfolio_id = NEW.portfolio_id AND ("timestamp", event_id) > (NEW."timestamp", NEW.event_id)
        ORDER BY "timestamp", event_id LIMIT 1;
    IF FOUND THEN
        UPDATE portfolio_optimized SET turnover = one_way_turnover(weights, NEW.weights)
            WHERE event_id = next_event AND "timestamp" = next_time;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER portfolio_optimized_turnover BEFORE INSERT ON portfolio_optimized
    FOR EACH ROW EXECUTE FUNCTION portfolio_optimized_turnover();
CREATE TRIGGER portfolio_optimized_successor_turnover AFTER INSERT ON portfolio_optimized
    FOR EACH ROW EXECUTE FUNCTION portfolio_optimized_successor_turnover();
