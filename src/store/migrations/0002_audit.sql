-- Every command dispatch applied, released, or only "would apply" in dry-run (issue: audit log).
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          TEXT    NOT NULL,
    meter_id    TEXT    NOT NULL,
    action      TEXT    NOT NULL,  -- apply | release | would-apply | overridden
    kind        TEXT,
    event_id    TEXT,
    cap         TEXT,
    target      TEXT,
    boundary    TEXT,
    lateness_ms INTEGER,
    outcome     TEXT    NOT NULL,  -- ok | error
    error       TEXT,
    detail      TEXT
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_meter ON audit (meter_id, at);
