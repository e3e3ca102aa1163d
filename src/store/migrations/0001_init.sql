-- Raw notifications, kept for audit (SPEC §2.5). Credentials are stripped before storage.
CREATE TABLE notifications (
    id                 INTEGER PRIMARY KEY,
    received_at        TEXT    NOT NULL,
    peer               TEXT,
    headers            TEXT    NOT NULL,
    body               TEXT    NOT NULL,
    integration_test   INTEGER NOT NULL,
    communication_test INTEGER NOT NULL,
    new_count          INTEGER NOT NULL,
    updated_count      INTEGER NOT NULL,
    duplicate_count    INTEGER NOT NULL,
    rejected_count     INTEGER NOT NULL
);
CREATE INDEX notifications_received ON notifications (received_at);

-- The effective state of each timeslot (SPEC §2.3): its latest accepted revision.
CREATE TABLE timeslots (
    kind            TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    start_time      TEXT    NOT NULL,
    end_time        TEXT    NOT NULL,
    cancelled_final INTEGER NOT NULL,
    conflict        INTEGER NOT NULL DEFAULT 0,
    revisions       INTEGER NOT NULL,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    first_received  TEXT    NOT NULL,
    last_received   TEXT    NOT NULL,
    PRIMARY KEY (kind, event_id)
) WITHOUT ROWID;
CREATE INDEX timeslots_end ON timeslots (end_time);

-- Every distinct version of a timeslot ever received, in arrival order.
CREATE TABLE timeslot_revisions (
    kind            TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    revision        INTEGER NOT NULL,
    notification_id INTEGER NOT NULL,
    received_at     TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    -- 1 when this revision tried to un-cancel a cancelled timeslot (SPEC §2.4).
    conflict        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, event_id, revision)
) WITHOUT ROWID;

-- Timeslots that could not be accepted (SPEC §2.2), one row per distinct raw object.
CREATE TABLE rejected_timeslots (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    event_id        TEXT,
    meter_ids       TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    raw             TEXT    NOT NULL UNIQUE,
    notification_id INTEGER NOT NULL,
    times_seen      INTEGER NOT NULL,
    first_received  TEXT    NOT NULL,
    last_received   TEXT    NOT NULL
);
