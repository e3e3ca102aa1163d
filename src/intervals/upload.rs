//! The daily upload to Leap (issue 14 point 3, LEAP-API.md "Interval data"): follow up the
//! jobs sent before (status, row errors; rows of a completed job without an error become
//! `accepted` and are never sent again), ask Leap which intervals it misses, then send every
//! complete interval of the last [`UPLOAD_DAYS`] days — and the missing ones Leap named, up
//! to [`MISSING_DAYS`] back — that is neither accepted nor in a job still pending.

use super::csv;
use super::db::Interval;
use super::recorder::{Energy, INTERVAL_SECS, Source};
use crate::config::Config;
use crate::leap::LeapError;
use crate::leap::client::LeapClient;
use crate::leap::types::{MissingSearch, RowError};
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use std::collections::{HashMap, HashSet};

pub(crate) const UPLOAD_DAYS: i64 = 7;
pub(crate) const MISSING_DAYS: i64 = 60;
const PENDING: &str = "('SENT', 'QUEUED', 'PROCESSING')";
/// A job Leap's upload list still does not show this long after it was sent is given up
/// (status `UNSEEN`): its rows become candidates for the next upload again, instead of
/// waiting for an answer that will not come.
const UNSEEN_AFTER_DAYS: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Leap(#[from] LeapError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub jobs_followed: usize,
    pub rows_accepted: usize,
    pub rows_failed: usize,
    pub missing_named: usize,
    pub sent_rows: usize,
    pub job_id: Option<String>,
}

pub async fn run_once(
    client: &LeapClient,
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Summary, UploadError> {
    // Following up earlier jobs must not stop today's upload: its rows are the same either
    // way, and a list endpoint that fails every day would otherwise stop all uploads.
    let mut sum = match follow_up(client, store, now).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "upload: cannot follow up earlier jobs; uploading anyway");
            Summary::default()
        }
    };
    // The missing-interval search only widens what is sent to older intervals Leap asks
    // for: without it (a key without that access, an outage) today's rows still go.
    let missing = match missing(client, config, now).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "upload: cannot ask Leap which intervals it misses; uploading the recent ones anyway");
            HashSet::new()
        }
    };
    sum.missing_named = missing.len();
    let rows = store
        .call(move |c| candidates(c, now.timestamp(), &missing))
        .await?;
    if rows.is_empty() {
        tracing::info!("upload: no new complete intervals for Leap");
        return Ok(sum);
    }
    let body = csv::render(&rows, &config.intervals.region);
    let job = match client.upload_load_csv(body).await {
        Ok(job) => job,
        Err(e) => {
            // Kept where `intervals uploads` shows it: a failing upload (a wrong key, Leap
            // down) must not read as "nothing uploaded yet". Its rows stay candidates.
            let (why, n) = (e.to_string(), rows.len());
            // Refused by Leap (4XX) or never left: not sent. Otherwise (a timeout after
            // sending, a 5XX, an answer that did not read) Leap may hold a job with them.
            let status = match &e {
                LeapError::Api { status, .. } if *status < 500 => NOT_SENT,
                e if !e.maybe_delivered()
                    && !matches!(e, LeapError::Api { .. } | LeapError::BadAnswer(_)) =>
                {
                    NOT_SENT
                }
                _ => ANSWER_LOST,
            };
            let noted = store
                .call(move |c| record_not_sent(c, n, status, &why, now))
                .await;
            if let Err(se) = noted {
                tracing::warn!(error = %se, "upload: cannot note the failed upload");
            }
            return Err(e.into());
        }
    };
    sum.sent_rows = rows.len();
    sum.job_id = Some(job.job_id.clone());
    tracing::info!(job_id = %job.job_id, rows = rows.len(), "upload: interval data sent to Leap");
    let id = job.job_id;
    store.call(move |c| record_job(c, &id, &rows, now)).await?;
    Ok(sum)
}

/// Update every pending job from Leap's job list and, once it finished, its row errors.
async fn follow_up(
    client: &LeapClient,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<Summary, UploadError> {
    let pending: Vec<(String, String)> = store
        .call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT job_id, uploaded_at FROM interval_uploads WHERE status IN {PENDING}"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    let mut sum = Summary::default();
    let Some(oldest) = pending.iter().map(|p| p.1.clone()).min() else {
        return Ok(sum);
    };
    let from = crate::store::parse_ts(&oldest)? - chrono::Duration::days(1);
    // A list that cannot be read (every day, for a key without that access) must not keep
    // jobs pending for ever: their rows would never go out again, even when Leap names
    // them missing. Jobs too old to wait for are settled as unseen all the same.
    let status = job_statuses(client, from, now)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "upload: cannot list Leap's upload jobs; only jobs too old to wait for are settled (unseen: their rows go out again)");
            HashMap::new()
        });
    for (job_id, uploaded_at) in pending {
        let Some(mut st) = status
            .get(&job_id)
            .cloned()
            .or_else(|| unseen(&uploaded_at, now))
        else {
            continue;
        };
        if st == "UNSEEN" {
            tracing::warn!(
                job_id,
                uploaded_at,
                "upload: Leap's list never showed this job; its rows go out again"
            );
        } else if st != "COMPLETED" && st != "FAILED" && unseen(&uploaded_at, now).is_some() {
            // QUEUED or PROCESSING for days: not waited for for ever, or its rows would
            // never go out again, even when Leap names them missing.
            tracing::warn!(job_id, uploaded_at, leap_status = %st,
                "upload: Leap has not finished this job in two days; its rows go out again");
            st = format!("STUCK ({st})");
        }
        let errors = if st == "COMPLETED" || st == "FAILED" {
            let Some(errors) = job_errors(client, &job_id, &uploaded_at, &mut st, now).await else {
                continue;
            };
            errors
        } else {
            Vec::new()
        };
        sum.jobs_followed += 1;
        sum.rows_failed += errors.len();
        let at = crate::store::ts(now);
        let accepted = store
            .call(move |c| settle(c, &job_id, &st, &errors, &at))
            .await?;
        sum.rows_accepted += accepted;
    }
    Ok(sum)
}

/// A finished job's row errors. One job whose details cannot be read does not stop the
/// others': one too old to wait for is settled as unseen (`status`; its rows go out
/// again), a younger one is tried again next time (None).
async fn job_errors(
    client: &LeapClient,
    job_id: &str,
    uploaded_at: &str,
    status: &mut String,
    now: DateTime<Utc>,
) -> Option<Vec<RowError>> {
    match client.upload_job(job_id).await {
        Ok(job) if !job.errors_complete() && status == "COMPLETED" => {
            // Which rows were refused cannot be told: none is taken as accepted, so every
            // row goes out again rather than a refused one never again.
            tracing::warn!(
                job_id,
                listed = job.errors.len(),
                "upload: Leap counts more row errors than it lists; no row of this job is taken as accepted, they go out again"
            );
            *status = "COMPLETED (errors not all listed)".to_string();
            Some(job.errors)
        }
        Ok(job) => Some(job.errors),
        Err(e) => match unseen(uploaded_at, now) {
            Some(u) => {
                tracing::warn!(job_id, error = %e, "upload: cannot read this old job's row errors; its rows go out again");
                *status = u;
                Some(Vec::new())
            }
            None => {
                tracing::warn!(job_id, error = %e, "upload: cannot read this job's row errors; tried again next time");
                None
            }
        },
    }
}

/// Leap's status of every upload job listed between `from` and `now`, by job id.
async fn job_statuses(
    client: &LeapClient,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, String>, UploadError> {
    let mut status = HashMap::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .upload_list(
                &csv::utc(from.timestamp()),
                &csv::utc(now.timestamp()),
                token.as_deref(),
            )
            .await?;
        for u in page.uploads {
            if let Some(id) = u.last_job_id {
                status.insert(id, u.status);
            }
        }
        token = next_page(
            token.clone(),
            page.next_page_token,
            &mut pages,
            "upload list",
        )?;
        if token.is_none() {
            return Ok(status);
        }
    }
}

/// A runaway guard for Leap's paged lists: a repeated token or more pages than any site's
/// history holds is an answer not as documented, not a reason to loop for ever.
const MAX_PAGES: u32 = 1000;

fn next_page(
    asked: Option<String>,
    next: Option<String>,
    pages: &mut u32,
    what: &str,
) -> Result<Option<String>, UploadError> {
    *pages += 1;
    match next {
        Some(t) if asked.as_ref() == Some(&t) || *pages >= MAX_PAGES => {
            Err(UploadError::Leap(LeapError::BadAnswer(format!(
                "{what}: the page token repeats or the list did not end after {pages} pages"
            ))))
        }
        next => Ok(next),
    }
}

fn unseen(uploaded_at: &str, now: DateTime<Utc>) -> Option<String> {
    let at = crate::store::parse_ts(uploaded_at).ok()?;
    (now - at > chrono::Duration::days(UNSEEN_AFTER_DAYS)).then(|| "UNSEEN".to_string())
}

/// Store a job's status and errors; a completed job's rows without an error are accepted.
fn settle(
    c: &mut Connection,
    job_id: &str,
    status: &str,
    errors: &[RowError],
    at: &str,
) -> Result<usize, StoreError> {
    let text: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "line {} column {} {}: {}",
                e.line.map_or("?".into(), |l| l.to_string()),
                e.column.as_deref().unwrap_or("?"),
                e.code.as_deref().unwrap_or("?"),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    let bad: HashSet<i64> = errors.iter().filter_map(|e| e.line).collect();
    let tx = c.transaction()?;
    tx.execute(
        "UPDATE interval_uploads SET status = ?2, errors = ?3, checked_at = ?4 WHERE job_id = ?1",
        params![
            job_id,
            status,
            (!text.is_empty()).then(|| text.join("\n")),
            at
        ],
    )?;
    let mut accepted = 0;
    if status == "COMPLETED" {
        let rows: Vec<(i64, String, i64)> = {
            let mut st = tx.prepare(
                "SELECT line, meter_id, start_ts FROM interval_upload_rows WHERE job_id = ?1",
            )?;
            let it = st.query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            it.collect::<Result<_, _>>()?
        };
        for (_, meter, start) in rows.iter().filter(|r| !bad.contains(&r.0)) {
            accepted += tx.execute(
                "UPDATE intervals SET accepted = 1 WHERE meter_id = ?1 AND start_ts = ?2",
                params![meter, start],
            )?;
        }
    }
    tx.commit()?;
    Ok(accepted)
}

/// Quarter hours Leap reports missing for the configured meters (load data, open).
async fn missing(
    client: &LeapClient,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<HashSet<(String, i64)>, UploadError> {
    let mut out = HashSet::new();
    let meter_ids: Vec<String> = config.meters.iter().map(|m| m.id.clone()).collect();
    if meter_ids.is_empty() {
        return Ok(out);
    }
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let asked = token.clone();
        let req = MissingSearch {
            meter_ids: meter_ids.clone(),
            missing_interval_window_start_date_time_utc: csv::utc(
                (now - chrono::Duration::days(MISSING_DAYS)).timestamp(),
            ),
            missing_interval_window_end_date_time_utc: csv::utc(now.timestamp()),
            state: "OPEN".into(),
            page_size: 500,
            page_token: token,
        };
        let page = client.missing_intervals(&req).await?;
        for m in page
            .missing_intervals
            .iter()
            .filter(|m| m.data_type == "LOAD_DATA")
        {
            let mut s = m.start_date_time_utc.timestamp().div_euclid(INTERVAL_SECS) * INTERVAL_SECS;
            while s < m.end_date_time_utc.timestamp() {
                // Leap's id may differ in case from the configured one (matched
                // case-insensitively everywhere else).
                out.insert((m.meter_id.to_ascii_lowercase(), s));
                s += INTERVAL_SECS;
            }
        }
        token = next_page(
            asked,
            page.next_page_token,
            &mut pages,
            "missing-interval search",
        )?;
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Complete intervals to send: ended, not in a pending job, and either recent and not
/// accepted, or named missing by Leap (whatever was believed accepted: Leap's word wins).
fn candidates(
    c: &mut Connection,
    now: i64,
    missing: &HashSet<(String, i64)>,
) -> Result<Vec<Interval>, StoreError> {
    let mut st = c.prepare(&format!(
        "SELECT meter_id, start_ts, source, import_wh, export_wh, accepted FROM intervals i
         WHERE state = 'complete' AND start_ts + ?1 <= ?2 AND start_ts >= ?3
           AND NOT EXISTS (SELECT 1 FROM interval_upload_rows r JOIN interval_uploads u
                ON u.job_id = r.job_id
                WHERE r.meter_id = i.meter_id AND r.start_ts = i.start_ts AND u.status IN {PENDING})
         ORDER BY start_ts, meter_id"
    ))?;
    let recent = now - UPLOAD_DAYS * 86_400;
    let oldest = now - MISSING_DAYS * 86_400;
    let rows = st.query_map(params![INTERVAL_SECS, now, oldest], |r| {
        let source: String = r.get(2)?;
        let accepted: bool = r.get(5)?;
        Ok((
            accepted,
            Interval {
                meter_id: r.get(0)?,
                start: r.get(1)?,
                energy: Some(Energy {
                    import_wh: r.get(3)?,
                    export_wh: r.get(4)?,
                    source: if source == "meter" {
                        Source::Meter
                    } else {
                        Source::Estimated
                    },
                }),
                battery_wh: 0.0,
                covered_ms: 0,
                battery_ms: 0,
                export_ms: 0,
                min_soc_pct: None,
                open: false,
            },
        ))
    })?;
    let all: Vec<(bool, Interval)> = rows.collect::<Result<_, _>>()?;
    Ok(all
        .into_iter()
        .filter(|(accepted, i)| {
            (!accepted && i.start >= recent)
                || missing.contains(&(i.meter_id.to_ascii_lowercase(), i.start))
        })
        .map(|(_, i)| i)
        .collect())
}

/// Status of an upload that did not reach Leap (or that Leap refused whole).
pub(crate) const NOT_SENT: &str = "NOT SENT";
/// Status of an upload whose answer was lost: Leap may have taken it.
pub(crate) const ANSWER_LOST: &str = "ANSWER LOST (may have arrived)";

/// An upload that failed, for `intervals uploads`; its rows are in no job, so they go
/// with the next upload.
fn record_not_sent(
    c: &Connection,
    rows: usize,
    status: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let at = crate::store::ts(now);
    c.execute(
        "INSERT OR REPLACE INTO interval_uploads (job_id, uploaded_at, rows, status, errors)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![format!("no job {at}"), at, rows as i64, status, why],
    )?;
    Ok(())
}

fn record_job(
    c: &mut Connection,
    job_id: &str,
    rows: &[Interval],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    tx.execute(
        "INSERT INTO interval_uploads (job_id, uploaded_at, rows, status) VALUES (?1, ?2, ?3, 'SENT')",
        params![job_id, crate::store::ts(now), rows.len() as i64],
    )?;
    for (n, r) in rows.iter().enumerate() {
        // Line 1 is the header, as Leap counts lines in its row errors.
        tx.execute(
            "INSERT INTO interval_upload_rows (job_id, line, meter_id, start_ts) VALUES (?1, ?2, ?3, ?4)",
            params![job_id, n as i64 + 2, r.meter_id, r.start],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// One job for `intervals uploads`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct JobRow {
    pub(crate) job_id: String,
    pub(crate) uploaded_at: String,
    pub(crate) rows: i64,
    pub(crate) status: String,
    pub(crate) errors: Vec<String>,
    pub(crate) checked_at: Option<String>,
}

pub(crate) fn jobs(c: &Connection) -> Result<Vec<JobRow>, StoreError> {
    let mut st = c.prepare(
        "SELECT job_id, uploaded_at, rows, status, errors, checked_at FROM interval_uploads
         ORDER BY uploaded_at DESC",
    )?;
    let rows = st.query_map([], |r| {
        let errors: Option<String> = r.get(4)?;
        Ok(JobRow {
            job_id: r.get(0)?,
            uploaded_at: r.get(1)?,
            rows: r.get(2)?,
            status: r.get(3)?,
            errors: errors
                .map(|e| e.lines().map(String::from).collect())
                .unwrap_or_default(),
            checked_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_repeated_or_endless_page_token_stops_the_list() {
        let mut pages = 0;
        let t = |s: &str| Some(s.to_string());
        assert_eq!(
            super::next_page(None, t("a"), &mut pages, "x").unwrap(),
            t("a")
        );
        assert!(super::next_page(t("a"), t("a"), &mut pages, "x").is_err());
        let mut pages = super::MAX_PAGES;
        assert!(super::next_page(t("a"), t("b"), &mut pages, "x").is_err());
        assert_eq!(super::next_page(t("a"), None, &mut 0, "x").unwrap(), None);
    }
}
