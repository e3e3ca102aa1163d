-- Manual overrides as the technician set them (`leap-edge override …`), so one outlives a
-- daemon restart: it still ends at its own `until`. One row per meter; cleared or expired
-- rows are deleted.
CREATE TABLE overrides (
    meter_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    kw REAL,
    until TEXT NOT NULL,
    set_at TEXT NOT NULL
);
