//! The audit log: every command applied, released, or only "would apply" (dry-run), with
//! its timing. Written by dispatch through the owner thread, read by `leap-edge history`.

use super::{StoreError, ts};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Action {
    Apply,
    Release,
    /// SPEC §2.6 dry-run: what would have been written; nothing was.
    WouldApply,
    /// A manual override held the meter while a dispatch governed.
    Overridden,
    /// A technician's command on the admin socket (override set or cleared), with who.
    Manual,
    /// A dispatch that governs again after an override or a restart (lateness measured
    /// from that moment, not from its start).
    Resumed,
    /// What binds the battery below the request changed (no-export margin, rating, …).
    Limited,
    /// SPEC §2.13: the control loop acted on its own for safety (readings untrusted and
    /// the battery handed back, readings back, export unavoidable); `detail` says which.
    Safety,
    /// Issue 14: the performance summary of a timeslot that ended (detail: the verdict).
    Report,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Apply => "apply",
            Action::Release => "release",
            Action::WouldApply => "would-apply",
            Action::Overridden => "overridden",
            Action::Manual => "manual",
            Action::Resumed => "resumed",
            Action::Limited => "limited",
            Action::Safety => "safety",
            Action::Report => "report",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditEntry {
    pub(crate) at: DateTime<Utc>,
    pub(crate) meter_id: String,
    pub(crate) action: Action,
    pub(crate) kind: Option<String>,
    pub(crate) event_id: Option<String>,
    pub(crate) cap: Option<String>,
    /// "10.0 kW", "maximum", or None for a release.
    pub(crate) target: Option<String>,
    /// The plan boundary this action belongs to.
    pub(crate) boundary: Option<DateTime<Utc>>,
    pub(crate) lateness_ms: Option<i64>,
    pub(crate) error: Option<String>,
    /// Free text: why (late start, cancellation, startup recovery, ...).
    pub(crate) detail: Option<String>,
}

pub(crate) fn insert(conn: &Connection, e: &AuditEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at, meter_id, action, kind, event_id, cap, target, boundary,
           lateness_ms, outcome, error, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            ts(e.at),
            e.meter_id,
            e.action.as_str(),
            e.kind,
            e.event_id,
            e.cap,
            e.target,
            e.boundary.map(ts),
            e.lateness_ms,
            if e.error.is_some() { "error" } else { "ok" },
            e.error,
            e.detail
        ],
    )?;
    Ok(())
}

/// One audit row as read back (times as stored text, for faithful display).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditRow {
    pub(crate) id: i64,
    pub(crate) at: String,
    pub(crate) meter_id: String,
    pub(crate) action: String,
    pub(crate) kind: Option<String>,
    pub(crate) event_id: Option<String>,
    pub(crate) performance_compensation_cap: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) boundary: Option<String>,
    pub(crate) lateness_ms: Option<i64>,
    pub(crate) outcome: String,
    pub(crate) error: Option<String>,
    pub(crate) detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFilter {
    pub(crate) meter: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
    pub(crate) limit: Option<usize>,
    /// Only entries written after this one (`history -f` following the table).
    pub(crate) after_id: Option<i64>,
}

pub(crate) fn query(conn: &Connection, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, meter_id, action, kind, event_id, cap, target, boundary, lateness_ms,
                outcome, error, detail
         FROM audit
         WHERE (?1 IS NULL OR meter_id = ?1 COLLATE NOCASE)
           AND (?2 IS NULL OR event_id = ?2)
           AND (?3 IS NULL OR at >= ?3)
           AND (?4 IS NULL OR at < ?4)
           AND (?6 IS NULL OR id > ?6)
         ORDER BY id DESC LIMIT ?5",
    )?;
    let limit = f.limit.map_or(-1, |l| l as i64);
    let mut rows = stmt.query(params![
        f.meter,
        f.event,
        f.since.map(ts),
        f.until.map(ts),
        limit,
        f.after_id
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(r)?);
    }
    out.reverse();
    Ok(out)
}

/// The columns of [`query`]'s SELECT, in order.
fn row(r: &rusqlite::Row) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: r.get(1)?,
        meter_id: r.get(2)?,
        action: r.get(3)?,
        kind: r.get(4)?,
        event_id: r.get(5)?,
        performance_compensation_cap: r.get(6)?,
        target: r.get(7)?,
        boundary: r.get(8)?,
        lateness_ms: r.get(9)?,
        outcome: r.get(10)?,
        error: r.get(11)?,
        detail: r.get(12)?,
    })
}

/// The last row in which dispatch gave `meter` a plan's dispatch to do (apply, resume,
/// release, dry run): what the plan had the meter follow when the daemon stopped. A manual
/// override's rows (`manual`, `overridden`) are passed over: the dispatch they displaced
/// governs again when the override ends, a resumption; so are the override's own apply
/// and release rows (event `manual-override`). The control loop's own rows
/// (`limited`, `safety`) and reports are not dispatch's.
pub(crate) fn last_dispatch(
    conn: &Connection,
    meter: &str,
) -> Result<Option<AuditRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, at, meter_id, action, kind, event_id, cap, target, boundary, lateness_ms,
                    outcome, error, detail
             FROM audit
             WHERE meter_id = ?1 COLLATE NOCASE
               AND action IN ('apply', 'resumed', 'release', 'would-apply')
               AND coalesce(event_id, '') != 'manual-override'
             ORDER BY id DESC LIMIT 1",
            [meter],
            row,
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(c: &Connection, action: &str, event: &str) {
        c.execute(
            "INSERT INTO audit (at, meter_id, action, kind, event_id, outcome)
             VALUES ('2026-12-01T10:00:00.000Z', 'm1', ?1, 'meter', ?2, 'ok')",
            params![action, event],
        )
        .unwrap();
    }

    /// What the plan had the meter follow: a manual override's own rows and the control
    /// loop's are passed over.
    #[test]
    fn the_last_dispatch_passes_over_overrides_and_the_control_loop() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::migrations::apply(&mut c).unwrap();
        row(&c, "apply", "E");
        row(&c, "manual", "manual-override");
        row(&c, "overridden", "E");
        row(&c, "apply", "manual-override");
        row(&c, "safety", "E");
        row(&c, "release", "manual-override");
        let last = last_dispatch(&c, "M1").unwrap().unwrap();
        assert_eq!(
            (last.action.as_str(), last.event_id.as_deref()),
            ("apply", Some("E"))
        );
        row(&c, "apply", "F");
        let last = last_dispatch(&c, "m1").unwrap().unwrap();
        assert_eq!(last.event_id.as_deref(), Some("F"));
    }
}
