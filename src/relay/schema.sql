-- The relay's outbox (its own database file; SPEC §2.12). Version 1 of the relay schema,
-- kept in SQLite's user_version like the gateway's, but in a separate file and sequence.

-- Every notification Leap posted, raw (SPEC §2.5).
CREATE TABLE relay_notifications (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    peer        TEXT,
    headers     TEXT NOT NULL,
    body        TEXT NOT NULL
);

-- One row per dispatch entry (meter_dispatches[i] / group_dispatches[i]).
CREATE TABLE relay_entries (
    id              INTEGER PRIMARY KEY,
    notification_id INTEGER NOT NULL REFERENCES relay_notifications(id) ON DELETE CASCADE,
    array           TEXT NOT NULL,
    idx             INTEGER NOT NULL,
    meter_ids       TEXT NOT NULL,
    -- 1 while no configured gateway serves any of its meters.
    unrouted        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (notification_id, array, idx)
);
CREATE INDEX relay_entries_unrouted ON relay_entries (notification_id) WHERE unrouted = 1;

-- What one gateway receives from one notification, and where its delivery stands.
CREATE TABLE relay_deliveries (
    id              INTEGER PRIMARY KEY,
    notification_id INTEGER NOT NULL REFERENCES relay_notifications(id) ON DELETE CASCADE,
    gateway         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    answer_status   INTEGER,
    answer_body     TEXT,
    finished_at     TEXT
);
CREATE INDEX relay_deliveries_queue ON relay_deliveries (gateway, state, notification_id);
CREATE INDEX relay_deliveries_notification ON relay_deliveries (notification_id);
-- Counts per state and gateway (status, metrics, healthz) from the index alone.
CREATE INDEX relay_deliveries_state ON relay_deliveries (state, gateway);

-- The body a gateway receives, apart so that delivery rows stay small and quick to scan.
CREATE TABLE relay_delivery_bodies (
    delivery_id INTEGER PRIMARY KEY REFERENCES relay_deliveries(id) ON DELETE CASCADE,
    body        TEXT NOT NULL
);

CREATE TABLE relay_delivery_entries (
    delivery_id INTEGER NOT NULL REFERENCES relay_deliveries(id) ON DELETE CASCADE,
    entry_id    INTEGER NOT NULL REFERENCES relay_entries(id) ON DELETE CASCADE,
    PRIMARY KEY (delivery_id, entry_id)
);
CREATE INDEX relay_delivery_entries_entry ON relay_delivery_entries (entry_id);

CREATE TABLE relay_gateways (
    name            TEXT PRIMARY KEY,
    last_success_at TEXT,
    last_error      TEXT,
    last_error_at   TEXT
);
