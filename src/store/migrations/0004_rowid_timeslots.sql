-- Issue 17: timeslots and their revisions as ordinary rowid tables with a separate unique
-- key. As WITHOUT ROWID tables the whole row was the B-tree key, so every lookup by
-- (kind, event_id) read the full content of the rows it passed, and a 1,000-meter group
-- timeslot's content is ~440 KB: each insert read megabytes. Now a lookup reads only the
-- key index. Columns, names and order are unchanged (first_source, from migration 3, last).
CREATE TABLE timeslots_rowid (
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
    first_source    TEXT    NOT NULL DEFAULT 'push',
    PRIMARY KEY (kind, event_id)
);
INSERT INTO timeslots_rowid SELECT * FROM timeslots;
DROP TABLE timeslots;
ALTER TABLE timeslots_rowid RENAME TO timeslots;
CREATE INDEX timeslots_end ON timeslots (end_time);
CREATE INDEX timeslots_first_source ON timeslots (first_source);

CREATE TABLE timeslot_revisions_rowid (
    kind            TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    revision        INTEGER NOT NULL,
    notification_id INTEGER NOT NULL,
    received_at     TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    conflict        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, event_id, revision)
);
INSERT INTO timeslot_revisions_rowid SELECT * FROM timeslot_revisions;
DROP TABLE timeslot_revisions;
ALTER TABLE timeslot_revisions_rowid RENAME TO timeslot_revisions;
