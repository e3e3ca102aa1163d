-- The event summary (issue 14) looks up, for every timeslot that ended in the last two
-- days, whether its `report` row exists, every 15 s of readings, on the writer thread that
-- webhook acks wait for: without an index each lookup scanned the whole audit log.
CREATE INDEX audit_reports ON audit (event_id, kind) WHERE action = 'report';
