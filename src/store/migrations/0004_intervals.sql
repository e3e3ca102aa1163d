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

