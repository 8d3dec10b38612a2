-- depends: 0013_rotation
-- The rotation scheduler (command_side/rotation_scheduler.py): when each configuration's next cycle is due, and
-- whether the scheduler is paused (one row: who paused or resumed it, when, why).
CREATE TABLE rotation_schedule (
    portfolio_id     text        PRIMARY KEY,
    enabled          boolean     NOT NULL,
    interval_minutes integer     NOT NULL CHECK (interval_minutes > 0),
    next_run_at      timestamptz NOT NULL,
    claimed_at       timestamptz
);
CREATE INDEX rotation_schedule_due_idx ON rotation_schedule (next_run_at) WHERE enabled;

CREATE TABLE rotation_scheduler_state (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    paused     boolean     NOT NULL,
    changed_by text        NOT NULL,
    changed_at timestamptz NOT NULL,
    reason     text        NOT NULL
);
INSERT INTO rotation_scheduler_state (paused, changed_by, changed_at, reason)
VALUES (false, 'migration', now(), 'created running');
