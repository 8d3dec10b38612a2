-- depends: 0014_rotation_schedule
-- Orders claimed by a broker adapter (ClaimOrders): who claimed them, and the SENT execution event.
ALTER TABLE order_outbox ADD COLUMN claimed_by text;
ALTER TABLE execution_events DROP CONSTRAINT execution_events_event_type_check;
ALTER TABLE execution_events ADD CONSTRAINT execution_events_event_type_check
    CHECK (event_type IN ('SENT', 'FILLED', 'PARTIALLY_FILLED', 'CANCELLED', 'REJECTED'));
