//! Reads, shared by the daemon (through the owner thread) and the CLI (read-only file).

use super::{StoreError, parse_ts, ts};
use crate::model::{Kind, StoredTimeslot, Timeslot};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, Row, params};
use serde::Serialize;

/// A timeslot row with its group's lists (migration 6 stores them once, `groups.rs`).
const TIMESLOT_COLUMNS: &str = "content, cancelled_final, conflict, revisions, duplicates,
    first_received, last_received, g.meter_ids, g.partner_references";
const TIMESLOTS: &str = "timeslots LEFT JOIN meter_groups g ON g.hash = timeslots.meter_group";

fn stored(row: &Row) -> Result<StoredTimeslot, StoreError> {
    let content: String = row.get(0)?;
    let timeslot = super::groups::load(&content, row.get(7)?, row.get(8)?)?;
    Ok(StoredTimeslot {
        timeslot,
        cancelled_final: row.get(1)?,
        conflict: row.get(2)?,
        revisions: row.get(3)?,
        duplicates: row.get(4)?,
        first_received: parse_ts(&row.get::<_, String>(5)?)?,
        last_received: parse_ts(&row.get::<_, String>(6)?)?,
    })
}

fn collect(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<StoredTimeslot>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(stored(row)?);
    }
    Ok(out)
}

/// Every stored timeslot, ordered by start time.
pub fn all_timeslots(conn: &Connection) -> Result<Vec<StoredTimeslot>, StoreError> {
    collect(
        conn,
        &format!("SELECT {TIMESLOT_COLUMNS} FROM {TIMESLOTS} ORDER BY start_time, kind, event_id"),
        [],
    )
}

/// Timeslots that end after `from` (what planning from `from` on can need).
pub(crate) fn timeslots_ending_after(
    conn: &Connection,
    from: DateTime<Utc>,
) -> Result<Vec<StoredTimeslot>, StoreError> {
    collect(
        conn,
        &format!(
            "SELECT {TIMESLOT_COLUMNS} FROM {TIMESLOTS} WHERE end_time > ?1 ORDER BY start_time, kind, event_id"
        ),
        params![ts(from)],
    )
}

/// What a plan made at `now` can need (issue 18: a replan must not cost more as history
/// grows): timeslots that start before `to` and are still running or upcoming, plus the
/// ended ones that overlap them (an ended higher priority that split a running timeslot
/// sets the true start of its interval, which lateness is measured from). Never earlier
/// than `lookback`. Both subqueries walk the `timeslots_end` index from `now` on.
pub(crate) fn timeslots_for_plan(
    conn: &Connection,
    lookback: DateTime<Utc>,
    now: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<StoredTimeslot>, StoreError> {
    collect(
        conn,
        &format!(
            "SELECT {TIMESLOT_COLUMNS} FROM {TIMESLOTS}
             WHERE end_time > max(?1, (SELECT coalesce(min(start_time), ?2) FROM timeslots
                                       WHERE end_time > ?2))
               AND start_time < ?3
             ORDER BY start_time, kind, event_id"
        ),
        params![ts(lookback), ts(now), ts(to)],
    )
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Revision {
    pub(crate) revision: i64,
    pub(crate) notification_id: i64,
    pub(crate) received_at: String,
    pub(crate) conflict: bool,
    pub(crate) timeslot: Timeslot,
}

pub(crate) fn revisions(
    conn: &Connection,
    kind: Kind,
    event_id: &str,
) -> Result<Vec<Revision>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT revision, notification_id, received_at, conflict, content, g.meter_ids,
           g.partner_references
         FROM timeslot_revisions r LEFT JOIN meter_groups g ON g.hash = r.meter_group
         WHERE r.slot = (SELECT rowid FROM timeslots WHERE kind=?1 AND event_id=?2)
         ORDER BY revision",
    )?;
    let mut rows = stmt.query(params![kind.as_str(), event_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let content: String = r.get(4)?;
        out.push(Revision {
            revision: r.get(0)?,
            notification_id: r.get(1)?,
            received_at: r.get(2)?,
            conflict: r.get(3)?,
            timeslot: super::groups::load(&content, r.get(5)?, r.get(6)?)?,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rejected {
    pub(crate) kind: String,
    pub(crate) event_id: Option<String>,
    pub(crate) meter_ids: Vec<String>,
    pub(crate) reason: String,
    pub(crate) raw: serde_json::Value,
    pub(crate) times_seen: i64,
    pub(crate) first_received: String,
    pub(crate) last_received: String,
}

pub(crate) fn rejected(conn: &Connection) -> Result<Vec<Rejected>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT kind, event_id, meter_ids, reason, raw, times_seen, first_received, last_received
         FROM rejected_timeslots ORDER BY first_received, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let bad = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    while let Some(r) = rows.next()? {
        out.push(Rejected {
            kind: r.get(0)?,
            event_id: r.get(1)?,
            meter_ids: serde_json::from_str(&r.get::<_, String>(2)?).map_err(bad)?,
            reason: r.get(3)?,
            raw: serde_json::from_str(&r.get::<_, String>(4)?).map_err(bad)?,
            times_seen: r.get(5)?,
            first_received: r.get(6)?,
            last_received: r.get(7)?,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastNotification {
    pub(crate) id: i64,
    pub(crate) received_at: String,
    pub(crate) peer: Option<String>,
}

pub(crate) fn last_notification(conn: &Connection) -> Result<Option<LastNotification>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT id, received_at, peer FROM notifications ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                Ok(LastNotification {
                    id: r.get(0)?,
                    received_at: r.get(1)?,
                    peer: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// SPEC §2.5: drop raw notifications older than the retention, and with them (issue 10.5)
/// rejected timeslots last seen before it and superseded revisions received before it. Each
/// timeslot keeps its row and its latest revision: they are the dispatch record.
pub(crate) fn prune_notifications(
    conn: &Connection,
    older_than: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let cutoff = ts(older_than);
    // One transaction: readers see the prune whole or not at all.
    let tx = conn.unchecked_transaction()?;
    let conn = &*tx;
    // Notification ids are max(id) + 1 (ingest.rs): the newest row stays, emptied, so a
    // site quiet for longer than the retention never hands out an id that the timeslots'
    // kept revisions still name for an older notification.
    let notifications = conn.execute(
        "DELETE FROM notifications WHERE received_at < ?1
           AND id < (SELECT max(id) FROM notifications)",
        params![cutoff],
    )?;
    conn.execute(
        "UPDATE notifications SET body = '', headers = '{}', peer = NULL
         WHERE received_at < ?1 AND body != ''",
        params![cutoff],
    )?;
    let rejected = conn.execute(
        "DELETE FROM rejected_timeslots WHERE last_received < ?1",
        params![cutoff],
    )?;
    // Kept: the latest revision, and the latest one not in conflict — after an ignored
    // un-cancel (SPEC §2.4) that is the cancellation in force, not the one ignored.
    let revisions = conn.execute(
        "DELETE FROM timeslot_revisions AS r WHERE r.received_at < ?1
           AND r.revision < (SELECT t.revisions FROM timeslots AS t WHERE t.rowid = r.slot)
           AND r.revision < (SELECT max(k.revision) FROM timeslot_revisions AS k
                             WHERE k.slot = r.slot AND k.conflict = 0)",
        params![cutoff],
    )?;
    let groups = super::groups::prune(conn)?;
    tx.commit()?;
    Ok(notifications + rejected + revisions + groups)
}
