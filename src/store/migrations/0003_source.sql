-- Where a notification came from (issue 13): a push to the webhook, or a page of Leap's
-- dispatch search fetched by the polling backstop. A timeslot remembers how it was first
-- seen: one first seen by polling is a push that never arrived.
ALTER TABLE notifications ADD COLUMN source TEXT NOT NULL DEFAULT 'push';
ALTER TABLE timeslots ADD COLUMN first_source TEXT NOT NULL DEFAULT 'push';
CREATE INDEX timeslots_first_source ON timeslots (first_source);
