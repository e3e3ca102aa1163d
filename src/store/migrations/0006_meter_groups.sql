-- Issue 17: a group's meter list stored once. `meter_groups` holds the `meter_ids` and
-- `partner_references` JSON arrays of a group timeslot, keyed by the SHA-256 of their text
-- (src/store/groups.rs); timeslot rows and revisions name it in `meter_group` and keep
-- empty lists in `content`. Existing group rows are moved over by the same migration
-- (in Rust, after this SQL: SQLite has no SHA-256).
CREATE TABLE meter_groups (
    hash               TEXT NOT NULL PRIMARY KEY,
    meter_ids          TEXT NOT NULL,
    partner_references TEXT NOT NULL
);
ALTER TABLE timeslots ADD COLUMN meter_group TEXT;
ALTER TABLE timeslot_revisions ADD COLUMN meter_group TEXT;
