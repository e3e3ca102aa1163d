//! The ingest transaction: raw notification + every timeslot's revision, all or nothing.
//! SPEC §2.3 idempotency and §2.4 final cancellation are decided here, against the stored
//! state, inside the same transaction.

use super::groups::StoredForm;
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
    /// Each rejected timeslot: (kind, event id when it has one, reason).
    #[serde(skip)]
    pub(crate) rejected_reasons: Vec<(&'static str, Option<String>, String)>,
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

/// A notification with the CPU work of storing it done before it reaches the owner thread
/// (issue 17): each timeslot's stored form (JSON, group lists and their SHA-256) and the
/// headers' text are made on the request's own thread, so the one writer thread, which all
/// ingests pass through, only runs SQL.
pub(crate) struct Prepared {
    pub(crate) rec: IngestRecord,
    /// One per `rec.parsed.timeslots`, in order.
    forms: Vec<StoredForm>,
    headers: String,
}

impl Prepared {
    pub(crate) fn new(mut rec: IngestRecord) -> Result<Prepared, StoreError> {
        let forms = StoredForm::of_all(&mut rec.parsed.timeslots)?;
        let headers = rec.headers.to_string();
        Ok(Prepared {
            rec,
            forms,
            headers,
        })
    }
}

/// Apply one notification inside the caller's transaction (the writer's group commit,
/// `writer.rs`): the caller commits, and only then may the request be acknowledged.
pub(super) fn ingest(tx: &Connection, prep: &Prepared) -> Result<IngestOutcome, StoreError> {
    let rec = &prep.rec;
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
    // Rejected cancellations first (SPEC §2.4, as parse.rs orders a cancelled occurrence
    // first): the same event valid and un-cancelled in this notification is then the
    // conflict, and an identical redelivery is all duplicates instead of a new revision.
    let mut seen_rejections = 0;
    for rej in &p.rejected {
        if record_rejected(tx, nid, &now, rej)? == Rejection::SeenBefore {
            seen_rejections += 1;
        }
        out.rejected += 1;
        out.rejected_reasons
            .push((rej.kind.as_str(), rej.event_id.clone(), rej.reason.clone()));
        out.rejected_codes.push(rej.code);
        if let Some(slot) = cancellation_of(tx, rej)? {
            match upsert(tx, nid, &now, &slot, None, rec.source)? {
                SlotResult::Updated | SlotResult::New => out.updated += 1,
                SlotResult::Duplicate | SlotResult::Conflict => out.duplicate += 1,
            }
        }
    }
    for (slot, form) in p.timeslots.iter().zip(&prep.forms) {
        match upsert(tx, nid, &now, slot, Some(form), rec.source)? {
            SlotResult::New => out.new += 1,
            SlotResult::Updated => out.updated += 1,
            SlotResult::Duplicate => out.duplicate += 1,
            SlotResult::Conflict => {
                out.conflict += 1;
                out.conflicts.push(slot.event_id.clone());
            }
        }
    }
    // A poll that found nothing new keeps no raw copy: one every few minutes would
    // otherwise fill the retention window with repeats. Duplicates, and a timeslot Leap
    // still lists that was rejected before in the same form, only bump counters.
    let nothing_new = out.new + out.updated + out.conflict + out.rejected == seen_rejections;
    if rec.source == Source::Poll && nothing_new {
        return Ok(out);
    }
    store_raw(tx, prep, &now, &out)?;
    Ok(out)
}

/// SPEC §2.5: the raw notification, with its final counts.
fn store_raw(
    tx: &Connection,
    prep: &Prepared,
    now: &str,
    out: &IngestOutcome,
) -> Result<(), StoreError> {
    let (rec, p) = (&prep.rec, &prep.rec.parsed);
    exec(
        tx,
        "INSERT INTO notifications (id, received_at, peer, headers, body, integration_test,
           communication_test, new_count, updated_count, duplicate_count, rejected_count, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            out.notification_id,
            now,
            rec.peer,
            prep.headers,
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
    Ok(())
}

/// What is stored for a (kind, event id) before this delivery.
struct Existing {
    /// The timeslot's rowid: its revisions are keyed by it (`slot`, migration 7).
    row: i64,
    content: String,
    meter_group: Option<String>,
    cancelled_final: bool,
    revisions: i64,
    first_source: String,
}

/// One delivery of one timeslot being written: where, when, and its stored form.
struct Write<'a> {
    tx: &'a Connection,
    nid: i64,
    now: &'a str,
    slot: &'a Timeslot,
    form: &'a StoredForm,
}

fn upsert(
    tx: &Connection,
    nid: i64,
    now: &str,
    slot: &Timeslot,
    ready: Option<&StoredForm>,
    source: Source,
) -> Result<SlotResult, StoreError> {
    let existing = find(tx, slot)?;
    // A push of a timeslot a poll found first: the push path works after all (the poll
    // beat a relay's retry, or ran at start). It no longer counts as a push that never
    // arrived (`status`: PUSHES MISSED), and `events` still tells how it came.
    if let Some(e) = existing
        .as_ref()
        .filter(|e| source == Source::Push && e.first_source == "poll")
    {
        exec(
            tx,
            "UPDATE timeslots SET first_source = 'poll+push' WHERE rowid = ?1",
            params![e.row],
        )?;
    }
    let own;
    let form = match (&existing, ready) {
        (Some(e), _) if source == Source::Poll || e.first_source != "push" => {
            own = StoredForm::of(same_flags_as_stored(&e.content, slot))?;
            &own
        }
        (_, Some(form)) => form,
        (_, None) => {
            own = StoredForm::of(slot.clone())?;
            &own
        }
    };
    let w = Write {
        tx,
        nid,
        now,
        slot,
        form,
    };
    let Some(e) = existing else {
        // SPEC §2.4: a cancellation that came first, rejected for its other fields, is
        // final too: the timeslot is stored, cancelled, as an un-cancel conflict.
        if !slot.cancelled && w.cancelled_before()? {
            w.insert_new(source, true)?;
            return Ok(SlotResult::Conflict);
        }
        w.insert_new(source, false)?;
        return Ok(SlotResult::New);
    };
    // SPEC §2.3: the same content (and the same group lists) again is a duplicate.
    if e.content == w.form.content && e.meter_group.as_deref() == w.form.key() {
        w.count_duplicate(e.row)?;
        return Ok(SlotResult::Duplicate);
    }
    // SPEC §2.14: a poll answer asked for before the stored revision was received (a push
    // meanwhile) is older than it: it must not replace it until the next poll. A cancellation is
    // applied whatever its age (SPEC §2.4, §2.13: it is final anyway).
    if source == Source::Poll && !slot.cancelled && w.revised_after(e.row, e.revisions)? {
        return Ok(SlotResult::Duplicate);
    }
    let revision = e.revisions + 1;
    if e.cancelled_final && !slot.cancelled {
        // SPEC §2.4: recorded once, but the cancelled version stays in force. The same stale
        // retry arriving again is a duplicate of that conflict revision.
        if w.seen_conflict(e.row)? {
            w.count_duplicate(e.row)?;
            return Ok(SlotResult::Duplicate);
        }
        w.record_conflict(e.row, revision)?;
        return Ok(SlotResult::Conflict);
    }
    w.update(e.row, revision)?;
    Ok(SlotResult::Updated)
}

fn find(tx: &Connection, slot: &Timeslot) -> Result<Option<Existing>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT rowid, content, meter_group, cancelled_final, revisions, first_source
             FROM timeslots WHERE kind=?1 AND event_id=?2",
        )?
        .query_row(params![slot.kind.as_str(), slot.event_id], |r| {
            Ok(Existing {
                row: r.get(0)?,
                content: r.get(1)?,
                meter_group: r.get(2)?,
                cancelled_final: r.get(3)?,
                revisions: r.get(4)?,
                first_source: r.get(5)?,
            })
        })
        .optional()?)
}

impl Write<'_> {
    fn kind(&self) -> &'static str {
        self.slot.kind.as_str()
    }

    fn add_revision(&self, row: i64, revision: i64, conflict: bool) -> Result<(), StoreError> {
        self.form.save_lists(self.tx)?;
        exec(
            self.tx,
            "INSERT INTO timeslot_revisions (slot, revision, notification_id, received_at,
               content, conflict, meter_group)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row,
                revision,
                self.nid,
                self.now,
                self.form.content,
                conflict,
                self.form.key()
            ],
        )?;
        Ok(())
    }

    /// `cancelled_earlier`: a rejected revision cancelled this event before it was stored;
    /// the timeslot is then cancelled for good and its first revision is a conflict.
    fn insert_new(&self, source: Source, cancelled_earlier: bool) -> Result<(), StoreError> {
        exec(
            self.tx,
            "INSERT INTO timeslots (kind, event_id, content, start_time, end_time, cancelled_final,
               revisions, first_received, last_received, first_source, meter_group, conflict)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7, ?8, ?9, ?10)",
            params![
                self.kind(),
                self.slot.event_id,
                self.form.content,
                ts(self.slot.start_time),
                ts(self.slot.end_time),
                self.slot.cancelled || cancelled_earlier,
                self.now,
                source.as_str(),
                self.form.key(),
                cancelled_earlier
            ],
        )?;
        self.add_revision(self.tx.last_insert_rowid(), 1, cancelled_earlier)
    }

    /// Whether the stored revision `revision` was received after this delivery's time.
    fn revised_after(&self, row: i64, revision: i64) -> Result<bool, StoreError> {
        let at: Option<String> = self
            .tx
            .prepare_cached(
                "SELECT received_at FROM timeslot_revisions WHERE slot = ?1 AND revision = ?2",
            )?
            .query_row(params![row, revision], |r| r.get(0))
            .optional()?;
        Ok(at.is_some_and(|at| at.as_str() > self.now))
    }

    /// Whether a rejected revision of this event said `cancelled: true`.
    fn cancelled_before(&self) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM rejected_timeslots
                 WHERE cancels = 1 AND kind = ?1 AND event_id = ?2)",
            )?
            .query_row(params![self.kind(), self.slot.event_id], |r| r.get(0))?)
    }

    fn count_duplicate(&self, row: i64) -> Result<(), StoreError> {
        exec(
            self.tx,
            "UPDATE timeslots SET duplicates = duplicates + 1, last_received = max(last_received, ?2)
             WHERE rowid=?1",
            params![row, self.now],
        )?;
        Ok(())
    }

    fn seen_conflict(&self, row: i64) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM timeslot_revisions
                 WHERE slot=?1 AND conflict=1 AND content=?2 AND meter_group IS ?3)",
            )?
            .query_row(params![row, self.form.content, self.form.key()], |r| {
                r.get(0)
            })?)
    }

    fn record_conflict(&self, row: i64, revision: i64) -> Result<(), StoreError> {
        self.add_revision(row, revision, true)?;
        exec(
            self.tx,
            "UPDATE timeslots SET revisions=?2, conflict=1, last_received=?3 WHERE rowid=?1",
            params![row, revision, self.now],
        )?;
        Ok(())
    }

    fn update(&self, row: i64, revision: i64) -> Result<(), StoreError> {
        self.add_revision(row, revision, false)?;
        exec(
            self.tx,
            "UPDATE timeslots SET content=?2, start_time=?3, end_time=?4,
               cancelled_final = cancelled_final OR ?5, revisions=?6, last_received=?7,
               meter_group=?8
             WHERE rowid=?1",
            params![
                row,
                self.form.content,
                ts(self.slot.start_time),
                ts(self.slot.end_time),
                self.slot.cancelled,
                revision,
                self.now,
                self.form.key()
            ],
        )?;
        Ok(())
    }
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
    let Some((mut slot, false)) = super::groups::current(tx, rej.kind, event_id)? else {
        return Ok(None);
    };
    slot.cancelled = true;
    Ok(Some(slot))
}

/// Whether a rejected timeslot was recorded before in the same form.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    New,
    SeenBefore,
}

fn record_rejected(
    tx: &Connection,
    nid: i64,
    now: &str,
    rej: &RejectedTimeslot,
) -> Result<Rejection, StoreError> {
    let raw = rej.raw.to_string();
    let meters =
        serde_json::to_string(&rej.meter_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let times_seen: i64 = tx.prepare_cached(
        "INSERT INTO rejected_timeslots (kind, event_id, meter_ids, reason, raw, notification_id,
           times_seen, first_received, last_received, cancels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7, ?8)
         ON CONFLICT (raw) DO UPDATE SET times_seen = times_seen + 1, last_received = ?7
         RETURNING times_seen",
    )?
    .query_row(
        params![
            rej.kind.as_str(),
            rej.event_id,
            meters,
            rej.reason,
            raw,
            nid,
            now,
            rej.cancels && rej.event_id.is_some()
        ],
        |r| r.get(0),
    )?;
    Ok(if times_seen == 1 {
        Rejection::New
    } else {
        Rejection::SeenBefore
    })
}
