-- SPEC §2.4 and §2.13: a rejected revision that says `cancelled: true` still cancels. When
-- it arrives before the timeslot it cancels (the original's delivery failed and Leap
-- retries it after the cancellation), there is nothing stored yet to cancel; this column
-- keeps the cancellation, so the original, when it comes, is stored cancelled.
ALTER TABLE rejected_timeslots ADD COLUMN cancels INTEGER NOT NULL DEFAULT 0;
-- json_type, not json_extract: a JSON true, never the number 1 (ingest rejects that).
UPDATE rejected_timeslots SET cancels = 1
 WHERE event_id IS NOT NULL AND json_valid(raw) AND json_type(raw, '$.cancelled') = 'true';
-- Looked up for every new timeslot: only the rare cancelling rows are in it.
CREATE INDEX rejected_cancels ON rejected_timeslots (kind, event_id) WHERE cancels = 1;
