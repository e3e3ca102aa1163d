//! The ingest transaction: raw notification + every timeslot's revision, all or nothing.
//! SPEC §2.3 idempotency and §2.4 final cancellation are decided here, against the stored
//! state, inside the same transaction.

use super::{StoreError, ts};
use crate::ingest::{ParsedNotification, RejectedTimeslot};
use crate::model::Timeslot;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub struct IngestRecord {
    pub received_at: DateTime<Utc>,
    pub peer: Option<String>,
    pub headers: serde_json::Value,
    pub body: String,
    pub parsed: ParsedNotification,
    pub source: Source,
}

/// How a notification reached us (issue 13): Leap's push, or the polling backstop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Push,
    Poll,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Push => "push",
            Source::Poll => "poll",
        }
    }
}

/// Counts returned in the 200 body, and the ids whose plan may have changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestOutcome {
    pub(crate) notification_id: i64,
    pub new: u32,
    pub updated: u32,
    pub duplicate: u32,
    pub(crate) rejected: u32,
    /// Revisions that tried to un-cancel a cancelled timeslot (SPEC §2.4).
    pub(crate) conflict: u32,
    #[serde(skip)]
    pub(crate) conflicts: Vec<String>,
    #[serde(skip)]
    pub(crate) rejected_reasons: Vec<String>,
    /// The same rejections as a closed set, for the metric labels.
    #[serde(skip)]
    pub(crate) rejected_codes: Vec<crate::ingest::RejectReason>,
}

impl IngestOutcome {
    pub(crate) fn changed(&self) -> bool {
        self.new + self.updated > 0
    }
}

/// Run a statement through the connection's prepared-statement cache: the ingest path
/// runs the same few statements for every notification.
fn exec(tx: &Connection, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(args)
}

enum SlotResult {
    New,
    Updated,
    Duplicate,
    Conflict,
}

/// Apply one notification inside the caller's transaction (the writer's group commit,
/// `writer.rs`): the caller commits, and only then may the request be acknowledged.
pub(super) fn ingest(tx: &Connection, rec: &IngestRecord) -> Result<IngestOutcome, StoreError> {
    let now = ts(rec.received_at);
    let p = &rec.parsed;
    // The id SQLite would give the row (one writer, so nobody takes it meanwhile). The row
    // itself is written last, with its final counts: updating it afterwards would make
    // SQLite read and rewrite the whole raw body (500 KB for a 1,000-meter group).
    let nid: i64 = tx
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM notifications")?
        .query_row([], |r| r.get(0))?;
    let mut out = IngestOutcome {
        notification_id: nid,
        ..Default::default()
    };
    for slot in &p.timeslots {
        match upsert(tx, nid, &now, slot, rec.source)? {
            SlotResult::New => out.new += 1,
            SlotResult::Updated => out.updated += 1,
            SlotResult::Duplicate => out.duplicate += 1,
            SlotResult::Conflict => {
                out.conflict += 1;
                out.conflicts.push(slot.event_id.clone());
            }
        }
    }
    for rej in &p.rejected {
        record_rejected(tx, nid, &now, rej)?;
        out.rejected += 1;
        out.rejected_reasons.push(rej.reason.clone());
        out.rejected_codes.push(rej.code);
        if let Some(slot) = cancellation_of(tx, rej)? {
            match upsert(tx, nid, &now, &slot, rec.source)? {
                SlotResult::Updated | SlotResult::New => out.updated += 1,
                SlotResult::Duplicate | SlotResult::Conflict => out.duplicate += 1,
            }
        }
    }
    // A poll that found nothing new keeps no raw copy: one every few minutes would
    // otherwise fill the retention window with repeats. Duplicates only bump counters.
    let nothing_new = out.new + out.updated + out.conflict + out.rejected == 0;
    if rec.source == Source::Poll && nothing_new {
        return Ok(out);
    }
    exec(
        tx,
        "INSERT INTO notifications (id, received_at, peer, headers, body, integration_test,
           communication_test, new_count, updated_count, duplicate_count, rejected_count, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            nid,
            now,
            rec.peer,
            rec.headers.to_string(),
            rec.body,
            p.integration_test_notification,
            p.communication_test,
            out.new,
            out.updated + out.conflict,
            out.duplicate,
            out.rejected,
            rec.source.as_str(),
        ],
    )?;
    Ok(out)
}

fn upsert(
    tx: &Connection,
    nid: i64,
    now: &str,
    slot: &Timeslot,
    source: Source,
) -> Result<SlotResult, StoreError> {
    let kind = slot.kind.as_str();
    let existing: Option<(String, bool, i64, String)> = tx
        .prepare_cached(
            "SELECT content, cancelled_final, revisions, first_source FROM timeslots WHERE kind=?1 AND event_id=?2",
        )?
        .query_row(
            params![kind, slot.event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let slot = &match &existing {
        Some((current, _, _, first)) if source == Source::Poll || first != "push" => {
            same_flags_as_stored(current, slot)
        }
        _ => slot.clone(),
    };
    let content = serde_json::to_string(slot).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let add_revision = |revision: i64, conflict: bool| {
        exec(tx,
            "INSERT INTO timeslot_revisions (kind, event_id, revision, notification_id, received_at, content, conflict)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![kind, slot.event_id, revision, nid, now, content, conflict],
        )
    };
    let Some((current, cancelled_final, revisions, _)) = existing else {
        exec(
            tx,
            "INSERT INTO timeslots (kind, event_id, content, start_time, end_time, cancelled_final,
               revisions, first_received, last_received, first_source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7, ?8)",
            params![
                kind,
                slot.event_id,
                content,
                ts(slot.start_time),
                ts(slot.end_time),
                slot.cancelled,
                now,
                source.as_str()
            ],
        )?;
        add_revision(1, false)?;
        return Ok(SlotResult::New);
    };
    if current == content {
        exec(
            tx,
            "UPDATE timeslots SET duplicates = duplicates + 1, last_received = ?3
             WHERE kind=?1 AND event_id=?2",
            params![kind, slot.event_id, now],
        )?;
        return Ok(SlotResult::Duplicate);
    }
    let revision = revisions + 1;
    if cancelled_final && !slot.cancelled {
        // SPEC §2.4: recorded once, but the cancelled version stays in force. The same stale
        // retry arriving again is a duplicate of that conflict revision.
        let seen: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM timeslot_revisions
               WHERE kind=?1 AND event_id=?2 AND conflict=1 AND content=?3)",
            )?
            .query_row(params![kind, slot.event_id, content], |r| r.get(0))?;
        if seen {
            exec(
                tx,
                "UPDATE timeslots SET duplicates = duplicates + 1, last_received = ?3
                 WHERE kind=?1 AND event_id=?2",
                params![kind, slot.event_id, now],
            )?;
            return Ok(SlotResult::Duplicate);
        }
        add_revision(revision, true)?;
        exec(
            tx,
            "UPDATE timeslots SET revisions=?3, conflict=1, last_received=?4 WHERE kind=?1 AND event_id=?2",
            params![kind, slot.event_id, revision, now],
        )?;
        return Ok(SlotResult::Conflict);
    }
    add_revision(revision, false)?;
    exec(
        tx,
        "UPDATE timeslots SET content=?3, start_time=?4, end_time=?5,
           cancelled_final = cancelled_final OR ?6, revisions=?7, last_received=?8
         WHERE kind=?1 AND event_id=?2",
        params![
            kind,
            slot.event_id,
            content,
            ts(slot.start_time),
            ts(slot.end_time),
            slot.cancelled,
            revision,
            now
        ],
    )?;
    Ok(SlotResult::Updated)
}

/// A search result and a push describe the same timeslot with different envelope flags (a
/// push carries the notification's `integration_test_notification`/`communication_test`, a
/// search result a per-timeslot `communication_test`). When they agree on what matters
/// (is it a communication test?), keep the stored flags, so the same timeslot seen both
/// ways is a duplicate rather than a new revision — counted once.
fn same_flags_as_stored(current: &str, slot: &Timeslot) -> Timeslot {
    let mut out = slot.clone();
    if let Ok(stored) = serde_json::from_str::<Timeslot>(current)
        && stored.is_communication_test() == slot.is_communication_test()
    {
        out.communication_test = stored.communication_test;
        out.integration_test_notification = stored.integration_test_notification;
        out.notification_communication_test = stored.notification_communication_test;
    }
    out
}

/// SPEC §2.13: a rejected revision that says `cancelled: true` still cancels. The stored
/// timeslot's current content, cancelled, becomes the new revision (so the plan, history
/// and "cancellation is final" work as for any cancellation); None when there is nothing
/// stored to cancel or it is cancelled already.
fn cancellation_of(
    tx: &Connection,
    rej: &RejectedTimeslot,
) -> Result<Option<Timeslot>, StoreError> {
    let (true, Some(event_id)) = (rej.cancels, rej.event_id.as_deref()) else {
        return Ok(None);
    };
    let current: Option<(String, bool)> = tx
        .query_row(
            "SELECT content, cancelled_final FROM timeslots WHERE kind=?1 AND event_id=?2",
            params![rej.kind.as_str(), event_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((content, false)) = current else {
        return Ok(None);
    };
    let mut slot: Timeslot =
        serde_json::from_str(&content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    slot.cancelled = true;
    Ok(Some(slot))
}

fn record_rejected(
    tx: &Connection,
    nid: i64,
    now: &str,
    rej: &RejectedTimeslot,
) -> Result<(), StoreError> {
    let raw = rej.raw.to_string();
    let meters =
        serde_json::to_string(&rej.meter_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    exec(
        tx,
        "INSERT INTO rejected_timeslots (kind, event_id, meter_ids, reason, raw, notification_id,
           times_seen, first_received, last_received)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)
         ON CONFLICT (raw) DO UPDATE SET times_seen = times_seen + 1, last_received = ?7",
        params![
            rej.kind.as_str(),
            rej.event_id,
            meters,
            rej.reason,
            raw,
            nid,
            now
        ],
    )?;
    Ok(())
}
