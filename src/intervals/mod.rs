//! Issue 14, SPEC §2.14 "both directions": the gateway records 15-minute interval energy per
//! meter from the site meter it already reads every control period, stores it in SQLite
//! (migration 4) and shows it as Leap's load CSV (LEAP-API.md "Interval data").
//!
//! The control loops hand every successful reading to a broadcast channel
//! (`control::ControlCommander::readings`, above this module); [`task::run`] turns them into intervals
//! with the pure [`recorder`] and writes them through the store's owner thread.

pub(crate) mod csv;
pub mod db;
pub mod gather;
pub(crate) mod recorder;
pub mod report;
pub mod svg;
pub mod task;
pub mod upload;

pub(crate) use db::{Interval, Range};
pub use recorder::{Acc, Energy, INTERVAL_SECS, Recorder, Sample, Source};

/// One reading of one meter's site, as the control loop got it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReading {
    pub meter_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub telemetry: crate::device::Telemetry,
    /// When it was taken on the monotonic clock: a wall-clock step shows as the two
    /// clocks disagreeing between readings. None: not known (no step check).
    pub mono: Option<std::time::Instant>,
}

impl MeterReading {
    /// The recorder's view; `None` without a grid power reading (nothing to record).
    pub(crate) fn sample(&self) -> Option<Sample> {
        let t = &self.telemetry;
        Some(Sample {
            at_ms: self.at.timestamp_millis(),
            grid_kw: t.grid_kw?,
            battery_kw: t.battery_kw,
            soc_pct: t.soc_pct,
            imp_wh: t.grid_import_wh.filter(|_| t.grid_export_wh.is_some()),
            exp_wh: t.grid_export_wh.filter(|_| t.grid_import_wh.is_some()),
        })
    }
}
