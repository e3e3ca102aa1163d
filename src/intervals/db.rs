//! The `intervals` table (migration 4): save an interval (open or finished), load the open
//! one after a restart, and read finished ones for the CLI, the upload and the report.

use super::recorder::{Acc, Energy, Sample, Source};
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, Row, params};

/// One stored interval as the CLI and the uploader see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Interval {
    pub(crate) meter_id: String,
    /// Unix seconds.
    pub(crate) start: i64,
    /// `None`: a gap (incomplete).
    pub(crate) energy: Option<Energy>,
    pub(crate) battery_wh: f64,
    pub(crate) covered_ms: i64,
    /// Of `covered_ms`, the time `battery_wh` was read for (migration 11).
    pub(crate) battery_ms: i64,
    pub(crate) export_ms: i64,
    pub(crate) min_soc_pct: Option<f64>,
    pub(crate) open: bool,
}

/// [`save`]'s statement: a complete row stays as it is (see there).
const SAVE: &str = "INSERT INTO intervals (meter_id, start_ts, state, source, import_wh,
        export_wh, imp_start_wh, exp_start_wh, imp_end_wh, exp_end_wh, est_import_wh,
        est_export_wh, battery_wh, covered_ms, export_ms, min_soc_pct, metered,
        last_at_ms, last_grid_kw, last_battery_kw, last_soc_pct, last_imp_wh, last_exp_wh,
        updated_at, battery_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
        ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
     ON CONFLICT (meter_id, start_ts) DO UPDATE SET
        state = excluded.state,
        source = excluded.source,
        import_wh = excluded.import_wh,
        export_wh = excluded.export_wh,
        imp_start_wh = excluded.imp_start_wh,
        exp_start_wh = excluded.exp_start_wh,
        imp_end_wh = excluded.imp_end_wh,
        exp_end_wh = excluded.exp_end_wh,
        est_import_wh = excluded.est_import_wh,
        est_export_wh = excluded.est_export_wh,
        battery_wh = excluded.battery_wh,
        covered_ms = excluded.covered_ms,
        export_ms = excluded.export_ms,
        min_soc_pct = excluded.min_soc_pct,
        metered = excluded.metered,
        last_at_ms = excluded.last_at_ms,
        last_grid_kw = excluded.last_grid_kw,
        last_battery_kw = excluded.last_battery_kw,
        last_soc_pct = excluded.last_soc_pct,
        last_imp_wh = excluded.last_imp_wh,
        last_exp_wh = excluded.last_exp_wh,
        updated_at = excluded.updated_at,
        battery_ms = excluded.battery_ms
     WHERE intervals.state != 'complete'";

/// Store `acc`; `open` while it is still being recorded. A complete interval already
/// stored is kept, whatever comes for the same quarter hour (it is lived again only after
/// the clock stepped back, and its readings then belong to another real time), and so is
/// whether Leap accepted it.
pub fn save(conn: &Connection, meter_id: &str, acc: &Acc, open: bool) -> Result<(), StoreError> {
    let energy = if open { None } else { acc.energy() };
    let state = match (open, energy) {
        (true, _) => "open",
        (false, Some(_)) => "complete",
        (false, None) => "incomplete",
    };
    let l = acc.last;
    conn.execute(
        SAVE,
        params![
            meter_id,
            acc.start,
            state,
            energy.map(|e| e.source.as_str()),
            energy.map(|e| e.import_wh),
            energy.map(|e| e.export_wh),
            acc.imp_start,
            acc.exp_start,
            acc.imp_end,
            acc.exp_end,
            acc.est_imp_wh,
            acc.est_exp_wh,
            acc.battery_wh,
            acc.covered_ms,
            acc.export_ms,
            acc.min_soc,
            acc.metered,
            l.map(|s| s.at_ms),
            l.map(|s| s.grid_kw),
            l.and_then(|s| s.battery_kw),
            l.and_then(|s| s.soc_pct),
            l.and_then(|s| s.imp_wh),
            l.and_then(|s| s.exp_wh),
            crate::store::ts(chrono::Utc::now()),
            acc.battery_ms,
        ],
    )?;
    Ok(())
}

/// Forget a stored open interval that never happened (opened while the clock ran ahead).
pub(crate) fn drop_open(conn: &Connection, meter_id: &str, start: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM intervals WHERE meter_id = ?1 AND start_ts = ?2 AND state = 'open'",
        params![meter_id, start],
    )?;
    Ok(())
}

/// The interval a previous run was recording for `meter_id`, to resume it.
pub(crate) fn load_open(conn: &Connection, meter_id: &str) -> Result<Option<Acc>, StoreError> {
    let acc = conn
        .query_row(
            "SELECT start_ts, imp_start_wh, exp_start_wh, imp_end_wh, exp_end_wh,
                est_import_wh, est_export_wh, battery_wh, covered_ms, export_ms, min_soc_pct,
                metered, last_at_ms, last_grid_kw, last_battery_kw, last_soc_pct,
                last_imp_wh, last_exp_wh, coalesce(battery_ms, covered_ms)
             FROM intervals WHERE meter_id = ?1 AND state = 'open'
             ORDER BY start_ts DESC LIMIT 1",
            params![meter_id],
            acc_from_row,
        )
        .optional()?;
    Ok(acc)
}

fn acc_from_row(r: &Row<'_>) -> rusqlite::Result<Acc> {
    let last = match (r.get::<_, Option<i64>>(12)?, r.get::<_, Option<f64>>(13)?) {
        (Some(at_ms), Some(grid_kw)) => Some(Sample {
            at_ms,
            grid_kw,
            battery_kw: r.get(14)?,
            soc_pct: r.get(15)?,
            imp_wh: r.get(16)?,
            exp_wh: r.get(17)?,
        }),
        _ => None,
    };
    Ok(Acc {
        start: r.get(0)?,
        imp_start: r.get(1)?,
        exp_start: r.get(2)?,
        imp_end: r.get(3)?,
        exp_end: r.get(4)?,
        est_imp_wh: r.get(5)?,
        est_exp_wh: r.get(6)?,
        battery_wh: r.get(7)?,
        covered_ms: r.get(8)?,
        battery_ms: r.get(18)?,
        export_ms: r.get(9)?,
        min_soc: r.get(10)?,
        metered: r.get(11)?,
        last,
    })
}

/// What to read: `[from, to)` in unix seconds, optionally one meter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Range {
    pub(crate) from: Option<i64>,
    pub(crate) to: Option<i64>,
    pub(crate) meter: Option<String>,
}

/// Stored intervals in `range`, by start then meter.
pub(crate) fn list(conn: &Connection, range: &Range) -> Result<Vec<Interval>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT meter_id, start_ts, state, source, import_wh, export_wh, battery_wh,
            covered_ms, export_ms, min_soc_pct, coalesce(battery_ms, covered_ms)
         FROM intervals
         WHERE (?1 IS NULL OR start_ts >= ?1) AND (?2 IS NULL OR start_ts < ?2)
           AND (?3 IS NULL OR meter_id = ?3 COLLATE NOCASE)
         ORDER BY start_ts, meter_id",
    )?;
    let rows = stmt.query_map(params![range.from, range.to, range.meter], |r| {
        let state: String = r.get(2)?;
        let source: Option<String> = r.get(3)?;
        let energy = match (source.as_deref(), r.get(4)?, r.get(5)?) {
            (Some(s), Some(import_wh), Some(export_wh)) => Some(Energy {
                import_wh,
                export_wh,
                source: if s == "meter" {
                    Source::Meter
                } else {
                    Source::Estimated
                },
            }),
            _ => None,
        };
        Ok(Interval {
            meter_id: r.get(0)?,
            start: r.get(1)?,
            energy,
            battery_wh: r.get(6)?,
            covered_ms: r.get(7)?,
            battery_ms: r.get(10)?,
            export_ms: r.get(8)?,
            min_soc_pct: r.get(9)?,
            open: state == "open",
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quarter hour lived again after the clock stepped back (its readings from another
    /// real time) never overwrites the complete interval stored for it, nor whether Leap
    /// accepted it; a gap stored for it may still become complete.
    #[test]
    fn a_complete_interval_is_never_overwritten() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::migrations::apply(&mut c).unwrap();
        let start = 1_795_910_400;
        let mut whole = Acc::new(start);
        whole.imp_start = Some(1000.0);
        whole.exp_start = Some(0.0);
        whole.imp_end = Some(2000.0);
        whole.exp_end = Some(0.0);
        let gap = Acc::new(start);
        let state = |c: &Connection| -> (String, bool) {
            c.query_row(
                "SELECT state, accepted FROM intervals WHERE start_ts = ?1",
                [start],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        save(&c, "m", &gap, false).unwrap();
        assert_eq!(state(&c).0, "incomplete");
        save(&c, "m", &whole, false).unwrap();
        assert_eq!(state(&c).0, "complete", "a gap may become whole");
        c.execute("UPDATE intervals SET accepted = 1", []).unwrap();
        save(&c, "m", &gap, false).unwrap();
        save(&c, "m", &gap, true).unwrap();
        assert_eq!(state(&c), ("complete".to_string(), true));
    }
}
