//! The owner thread's loop, with group commit (issue 17): every ingest waiting in the queue
//! when the thread gets to it goes into one transaction with one FULL commit (one fsync
//! for the batch, not one per notification), and each waiting request is answered only
//! after the commit that contains its notification (SPEC §2.1). A failed commit answers
//! every request of the batch with an error (503, so Leap retries).

use super::checkpoint::Nudge;
use super::files::Identity;
use super::ingest::{self, IngestOutcome, Prepared};
use super::{Job, StoreError};
use crate::seam::ChangeSignal;
use rusqlite::{Connection, TransactionBehavior};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Counts for `/metrics`: notifications per commit is what group commit buys.
#[derive(Default)]
pub struct BatchStats {
    /// Ingest transactions committed.
    pub commits: AtomicU64,
    /// Notifications acknowledged by those commits.
    pub notifications: AtomicU64,
    /// Bumped here, after the commit, when a batch changed a timeslot: a request whose
    /// client hung up before its answer (its future dropped while the batch committed)
    /// must still wake dispatch, not leave the change to the next periodic replan.
    pub(crate) changes: ChangeSignal,
    /// Why the last notification that could not be stored was not, and when; cleared by
    /// the next one stored. `/healthz` and `status` report it: a database that refuses
    /// every ingest (full, corrupt, replaced) may still pass the writability probe.
    failure: std::sync::Mutex<Option<String>>,
}

impl BatchStats {
    /// The standing storage failure, if the last notification could not be stored.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn set_failure(&self, why: Option<&str>) {
        if let Ok(mut f) = self.failure.lock() {
            *f = why.map(|w| format!("{} at {}", w, crate::store::ts(chrono::Utc::now())));
        }
    }
}

/// Most notifications in one transaction: bounds the time a commit keeps the write lock
/// and the latency the first request of a batch waits for the last one's statements.
pub(crate) const MAX_BATCH: usize = 64;
/// Most body bytes in one transaction (a few large group notifications fill a batch):
/// bounds the WAL written between two commits.
pub(crate) const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<IngestOutcome, StoreError>>;

/// What the owner thread is asked to do, in arrival order.
pub(crate) enum Work {
    /// Any other write or read-your-writes job, run alone.
    Job(Job),
    /// One notification to commit; batched with the ingests queued behind it.
    Ingest(Box<Prepared>, Reply),
}

/// Serve the queue until every sender is gone. A job that arrives behind ingests runs
/// after their batch commits, so the queue's order is the order of effects.
pub(super) fn run(
    conn: &mut Connection,
    rx: &mut mpsc::Receiver<Work>,
    stats: &BatchStats,
    nudge: &Nudge,
    file: &(std::path::PathBuf, Identity),
) {
    let mut next = rx.blocking_recv();
    while let Some(work) = next.take() {
        match work {
            Work::Job(job) => job(conn),
            Work::Ingest(rec, reply) => {
                let mut batch = vec![(rec, reply)];
                next = fill(&mut batch, rx);
                match file.1.check(&file.0) {
                    Ok(()) => commit_batch(conn, batch, stats),
                    Err(e) => refuse(batch, &e, stats),
                }
            }
        }
        // The WAL is copied into the database by another thread (`checkpoint.rs`).
        nudge.commit_done();
        if next.is_none() {
            next = rx.blocking_recv();
        }
    }
}

/// Take the ingests already queued (without waiting), up to the bounds. Returns the first
/// job that is not an ingest, to run after this batch.
fn fill(batch: &mut Vec<(Box<Prepared>, Reply)>, rx: &mut mpsc::Receiver<Work>) -> Option<Work> {
    let mut bytes: usize = batch.iter().map(|(r, _)| r.rec.body.len()).sum();
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(Work::Ingest(rec, reply)) => {
                bytes += rec.rec.body.len();
                batch.push((rec, reply));
            }
            Ok(job) => return Some(job),
            Err(_) => break,
        }
    }
    None
}

/// One transaction for the batch. Each notification runs in its own savepoint, so one
/// that fails (a constraint, a bad row) is rolled back and answered with its error while
/// the rest commit. Within the transaction each notification sees the ones before it:
/// two deliveries of one timeslot in a batch give one new and one duplicate (SPEC §2.3).
fn commit_batch(conn: &mut Connection, batch: Vec<(Box<Prepared>, Reply)>, stats: &BatchStats) {
    let mut results: Vec<Result<IngestOutcome, StoreError>> = Vec::with_capacity(batch.len());
    let committed = (|| -> Result<(), StoreError> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let [(rec, _)] = batch.as_slice() {
            // Alone in its batch (one sender): the transaction is its savepoint.
            let result = ingest::ingest(&tx, rec);
            if result.is_ok() {
                tx.commit()?;
            }
            results.push(result);
            return Ok(());
        }
        for (rec, _) in &batch {
            let mut sp = tx.savepoint()?;
            match ingest::ingest(&sp, rec) {
                Ok(outcome) => {
                    sp.commit()?;
                    results.push(Ok(outcome));
                }
                Err(e) => {
                    // An I/O error or a full disk can make SQLite abandon the whole
                    // transaction; then nothing of the batch is safe to acknowledge, and
                    // `e` is the cause to report (the savepoint is gone with it).
                    if sp.is_autocommit() {
                        return Err(e);
                    }
                    // Rolled back explicitly, not by dropping the savepoint (which ignores
                    // a failure): if its rows cannot be undone, the whole batch fails rather
                    // than commit a refused notification's timeslots without its raw row.
                    if let Err(undo) = sp.rollback().and_then(|()| sp.commit()) {
                        tracing::error!(error = %undo, "cannot roll back a notification that failed inside a batch; the batch is not committed");
                        return Err(e);
                    }
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(())
    })();
    match committed {
        Ok(()) => {
            let stored = results.iter().filter(|r| r.is_ok()).count();
            if results
                .iter()
                .any(|r| r.as_ref().is_ok_and(|o| o.changed()))
            {
                stats.changes.bump();
            }
            // The batch's last result stands (a later notification stored clears an
            // earlier one's failure, as the next batch would).
            let failed = results.last().and_then(|r| r.as_ref().err());
            stats.set_failure(failed.map(ToString::to_string).as_deref());
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .notifications
                .fetch_add(stored as u64, Ordering::Relaxed);
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => refuse(batch, &e, stats),
    }
}

/// Answer every request of a batch that was not committed (503, so Leap retries).
fn refuse(batch: Vec<(Box<Prepared>, Reply)>, e: &StoreError, stats: &BatchStats) {
    let why = e.to_string();
    stats.set_failure(Some(&why));
    tracing::error!(notifications = batch.len(), error = %why, "batch not committed; every request in it is answered 503");
    for (_, reply) in batch {
        let _ = reply.send(Err(StoreError::BatchFailed(why.clone())));
    }
}
