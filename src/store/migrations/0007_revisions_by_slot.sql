-- Issue 17: a revision is found through its timeslot's rowid (`slot`), not through
-- (kind, event_id) a second time. Event ids are random UUIDs, so an index ordered by them
-- puts every new row on a random page; ordered by `slot`, the first revisions of new
-- timeslots land together at the end of the index. A notification of three new timeslots
-- writes about a third fewer WAL pages. kind and event_id are the timeslot's, so they are
-- not stored again (join on `slot`).
-- Timeslot rows are never deleted (they are the dispatch record), so a slot is never reused,
-- and every revision has its timeslot (ingest writes both in one transaction).
CREATE TABLE timeslot_revisions_v7 (
    slot            INTEGER NOT NULL,
    revision        INTEGER NOT NULL,
    notification_id INTEGER NOT NULL,
    received_at     TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    conflict        INTEGER NOT NULL DEFAULT 0,
    meter_group     TEXT,
    UNIQUE (slot, revision)
);
INSERT INTO timeslot_revisions_v7 (slot, revision, notification_id, received_at, content,
    conflict, meter_group)
  SELECT t.rowid, r.revision, r.notification_id, r.received_at, r.content, r.conflict,
    r.meter_group
  FROM timeslot_revisions r JOIN timeslots t ON t.kind = r.kind AND t.event_id = r.event_id
  ORDER BY t.rowid, r.revision;
DROP TABLE timeslot_revisions;
ALTER TABLE timeslot_revisions_v7 RENAME TO timeslot_revisions;

-- Only polled timeslots are ever looked up by source (`leap poll` status); pushed ones,
-- nearly all of them, need no index entry to be written with each.
DROP INDEX timeslots_first_source;
CREATE INDEX timeslots_polled ON timeslots (first_source) WHERE first_source = 'poll';
