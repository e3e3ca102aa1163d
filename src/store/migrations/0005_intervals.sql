-- Issue 14: 15-minute interval energy per meter, recorded from the site meter's readings.
-- One row per (meter, quarter hour). `state`: 'open' while being recorded (kept so a
-- restart resumes it), then 'complete' (energy known: from the meter's accumulators,
-- source 'meter', or integrated from power, source 'estimated') or 'incomplete' (a gap:
-- never reported as energy). The last reading is kept to bridge a short restart.
CREATE TABLE intervals (
    meter_id TEXT NOT NULL,
    start_ts INTEGER NOT NULL,
    state TEXT NOT NULL,
    source TEXT,
    import_wh REAL,
    export_wh REAL,
    imp_start_wh REAL,
    exp_start_wh REAL,
    imp_end_wh REAL,
    exp_end_wh REAL,
    est_import_wh REAL NOT NULL,
    est_export_wh REAL NOT NULL,
    battery_wh REAL NOT NULL,
    covered_ms INTEGER NOT NULL,
    export_ms INTEGER NOT NULL,
    min_soc_pct REAL,
    metered INTEGER NOT NULL,
    last_at_ms INTEGER,
    last_grid_kw REAL,
    last_battery_kw REAL,
    last_soc_pct REAL,
    last_imp_wh REAL,
    last_exp_wh REAL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (meter_id, start_ts)
);


-- Uploads to Leap (POST /v1.1/interval-data?schema=load). An interval is `accepted` once a
-- job that carried it completed without an error on its line: it is never sent again.
ALTER TABLE intervals ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE interval_uploads (
    job_id TEXT PRIMARY KEY,
    uploaded_at TEXT NOT NULL,
    rows INTEGER NOT NULL,
    -- 'SENT' until Leap reports QUEUED, PROCESSING, COMPLETED or FAILED.
    status TEXT NOT NULL,
    -- Leap's row errors, one "line N column C CODE: message" per line.
    errors TEXT,
    checked_at TEXT
);
-- Which interval went on which CSV line (line 1 is the header).
CREATE TABLE interval_upload_rows (
    job_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    meter_id TEXT NOT NULL,
    start_ts INTEGER NOT NULL,
    PRIMARY KEY (job_id, line)
);
