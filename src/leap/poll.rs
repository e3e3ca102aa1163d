//! One run of the polling backstop (SPEC §2.14): search Leap's meter and group dispatches
//! for this site's meters over a window, every page, and put each page through the same
//! parse → ingest → store path as a push, recorded with source `poll`. Idempotency,
//! revisions and final cancellation are the store's, exactly as for pushes.

use super::types::{Level, SearchEntry, SearchRequest};
use super::{LeapClient, LeapError};
use crate::ingest::parse_limited;
use crate::store::{IngestOutcome, IngestRecord, Source, Store, StoreError};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// A runaway guard: 2,000 pages of 500 results is far beyond one site's month.
const MAX_PAGES: u32 = 2000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error(transparent)]
    Leap(#[from] LeapError),
    #[error("storing search results: {0}")]
    Store(#[from] StoreError),
    #[error("Leap's search answer is not a dispatch list: {0}")]
    Shape(String),
}

/// The search window: `start` inclusive, `end` exclusive (Leap's rule), ≤ 31 days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Window {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

impl Window {
    /// `back` days before `now` to `ahead` days after, shortened ahead to Leap's 31 days.
    /// At least a day back: Leap searches by start date, and a timeslot already running
    /// when its push was lost (an outage past Leap's retry window) started before now
    /// (`leap.poll_days_back = 0` is read as 1).
    pub(crate) fn around(now: DateTime<Utc>, back: u32, ahead: u32) -> Window {
        let back = back.clamp(1, super::MAX_WINDOW_DAYS);
        let ahead = ahead.min(super::MAX_WINDOW_DAYS - back);
        Window {
            start: now - Duration::days(i64::from(back)),
            end: now + Duration::days(i64::from(ahead)),
        }
    }
}

/// What one run found, for the log, `status` and `leap-edge leap poll`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PollReport {
    pub(crate) window: Option<Window>,
    pub(crate) pages: u32,
    pub(crate) results: u32,
    /// Timeslots first seen by this poll: pushes that never arrived.
    pub(crate) new: u32,
    pub(crate) updated: u32,
    pub(crate) duplicate: u32,
    pub(crate) rejected: u32,
    pub(crate) conflict: u32,
    pub(crate) new_event_ids: Vec<String>,
    pub(crate) market_group_ids: Vec<String>,
    /// Search entries in a shape no notification may have (an entry-level type error),
    /// each with why: left out, so they do not fail the other entries of their page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) skipped_entries: Vec<String>,
}

impl PollReport {
    fn add(&mut self, o: &IngestOutcome, new_ids: Vec<String>) {
        self.new += o.new;
        self.updated += o.updated;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
        self.conflict += o.conflict;
        self.new_event_ids.extend(new_ids);
    }
}

/// What to search: the configured meters and the market groups to ask about.
pub(crate) struct Targets {
    pub(crate) meter_ids: Vec<String>,
    pub(crate) market_group_ids: Vec<String>,
    /// The `[limits]` a push is held to: a polled timeslot meets the same ones.
    pub(crate) limits: crate::config::LimitsConfig,
}

/// Run the backstop once. `on_change` is called after each page that created or changed a
/// timeslot, so dispatch re-plans as soon as a missed dispatch is stored.
pub(crate) async fn poll_once(
    client: &LeapClient,
    store: &Store,
    targets: &Targets,
    window: Window,
    on_change: &(dyn Fn() + Sync),
) -> Result<PollReport, PollError> {
    let mut report = PollReport {
        window: Some(window),
        market_group_ids: targets.market_group_ids.clone(),
        ..Default::default()
    };
    if !targets.meter_ids.is_empty() {
        let req = request(window, Some(targets.meter_ids.clone()), None);
        search_all(
            client,
            store,
            targets,
            Level::Meter,
            req,
            &mut report,
            on_change,
        )
        .await?;
    }
    if !targets.market_group_ids.is_empty() {
        let req = request(window, None, Some(targets.market_group_ids.clone()));
        search_all(
            client,
            store,
            targets,
            Level::Group,
            req,
            &mut report,
            on_change,
        )
        .await?;
    }
    Ok(report)
}

fn request(w: Window, meters: Option<Vec<String>>, groups: Option<Vec<String>>) -> SearchRequest {
    SearchRequest {
        start_date: w.start,
        end_date: w.end,
        // Leap's default hides CAISO 5-minute real-time events; we want every dispatch.
        exclude_real_time_events: false,
        exclude_voluntary_events: false,
        page_token: None,
        meter_ids: meters,
        market_group_ids: groups,
    }
}

async fn search_all(
    client: &LeapClient,
    store: &Store,
    targets: &Targets,
    level: Level,
    mut req: SearchRequest,
    report: &mut PollReport,
    on_change: &(dyn Fn() + Sync),
) -> Result<(), PollError> {
    loop {
        // What Leap answers is as of the request: anything stored after this instant (a
        // push meanwhile) is newer than the answer.
        let asked_at = Utc::now();
        let page = client.search::<SearchEntry>(level, &req).await?;
        report.pages += 1;
        report.results += page.results.len() as u32;
        let results = usable_entries(&targets.limits, level, page.results, report);
        if !results.is_empty() {
            let (outcome, new_ids) =
                store_page(store, &targets.limits, level, &results, asked_at).await?;
            if outcome.changed() {
                on_change();
            }
            report.add(&outcome, new_ids);
        }
        match page.next_page_token {
            Some(t) if report.pages < MAX_PAGES && req.page_token.as_ref() != Some(&t) => {
                req.page_token = Some(t);
            }
            Some(_) => {
                return Err(PollError::Shape(format!(
                    "{} search did not end after {} pages (repeated or endless page_token)",
                    level.path(),
                    report.pages
                )));
            }
            None => return Ok(()),
        }
    }
}

/// A page's body as a push would carry it.
fn page_body(level: Level, results: &[SearchEntry]) -> String {
    let key = match level {
        Level::Meter => "meter_dispatches",
        Level::Group => "group_dispatches",
    };
    serde_json::json!({
        "integration_test_notification": false,
        "communication_test": false,
        key: results,
    })
    .to_string()
}

/// The page's entries a push could carry. A push with an entry of the wrong shape is
/// refused whole (400, and Leap's sender sees it); a page is Leap's answer for every
/// meter, so one odd entry would hide all the others, at every poll while it is listed.
fn usable_entries(
    limits: &crate::config::LimitsConfig,
    level: Level,
    results: Vec<SearchEntry>,
    report: &mut PollReport,
) -> Vec<SearchEntry> {
    let mut usable = Vec::with_capacity(results.len());
    for (i, entry) in results.into_iter().enumerate() {
        let one = page_body(level, std::slice::from_ref(&entry));
        match parse_limited(one.as_bytes(), limits, Utc::now()) {
            Ok(_) => usable.push(entry),
            Err(e) => {
                let why = format!(
                    "{} search, page {} entry {i} ({}): {e}",
                    level.path(),
                    report.pages,
                    named(&entry)
                );
                tracing::warn!(reason = %why, "leap poll: a search entry left out (not the shape of a dispatch)");
                report.skipped_entries.push(why);
            }
        }
    }
    usable
}

/// What identifies a search entry to Leap's support: its meter or group id as sent, and
/// its timeslots' event ids.
fn named(entry: &SearchEntry) -> String {
    let id = ["meter_id", "market_group_id"]
        .iter()
        .find_map(|k| entry.get(*k).map(|v| format!("{k} {v}")))
        .unwrap_or_else(|| "no meter or group id".into());
    let events: Vec<String> = entry
        .get("timeslots")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            ["meter_event_id", "market_group_event_id"]
                .iter()
                .find_map(|k| t.get(*k)?.as_str().map(str::to_string))
        })
        .collect();
    if events.is_empty() {
        id
    } else {
        format!("{id}, events {}", events.join(", "))
    }
}

/// One page as one notification: the same parser as a push (so every rule of SPEC §2.2
/// applies), the same transaction, source `poll`.
async fn store_page(
    store: &Store,
    limits: &crate::config::LimitsConfig,
    level: Level,
    results: &[SearchEntry],
    asked_at: chrono::DateTime<Utc>,
) -> Result<(IngestOutcome, Vec<String>), PollError> {
    let body = page_body(level, results);
    // A polled notification is "received" when it was asked for: the store compares that
    // with what it stored since (a push meanwhile wins over this older answer).
    let received_at = asked_at;
    let parsed = parse_limited(body.as_bytes(), limits, Utc::now())
        .map_err(|e| PollError::Shape(format!("{} search: {e}", level.path())))?;
    let ids: Vec<(String, String)> = parsed
        .timeslots
        .iter()
        .map(|t| (t.kind.as_str().to_string(), t.event_id.clone()))
        .collect();
    let record = IngestRecord {
        received_at,
        peer: None,
        headers: serde_json::json!({}),
        body,
        parsed,
        source: Source::Poll,
    };
    let outcome = store.ingest(record).await?;
    let new_ids = if outcome.new > 0 {
        let at = crate::store::ts(received_at);
        store.read(move |c| first_seen_at(c, &ids, &at)).await?
    } else {
        Vec::new()
    };
    Ok((outcome, new_ids))
}

/// The event ids of this page that were created by it (first seen by polling, just now).
fn first_seen_at(
    c: &rusqlite::Connection,
    ids: &[(String, String)],
    at: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT 1 FROM timeslots WHERE kind=?1 AND event_id=?2 AND first_source='poll' AND first_received=?3",
    )?;
    let mut out = Vec::new();
    for (kind, id) in ids {
        if stmt.exists(rusqlite::params![kind, id, at])? {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// How long a market group named by a stored group dispatch stays on the search list: a
/// group's dispatches come days or months apart (seasonal programs such as CAISO ELRP are
/// quiet for more than a quarter), and one that dropped off would leave the first dispatch of
/// its next season, if the push were lost, to no poll at all. A year and a month: the
/// default notification retention (SPEC §2.5).
pub(crate) const KNOWN_GROUP_DAYS: i64 = 400;

/// Market groups to search: configured ones plus those named by group dispatches stored in
/// the last [`KNOWN_GROUP_DAYS`] days.
pub(crate) fn known_groups(
    c: &rusqlite::Connection,
    configured: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let since = now - Duration::days(KNOWN_GROUP_DAYS);
    let mut out: Vec<String> = configured.to_vec();
    // A group seen only in an integration test (`leap test --group` makes up an id when
    // none is configured) is not the account's: searched for 400 days, it could make Leap
    // refuse every group search. The flag is read from the timeslot itself, which outlives
    // the notification rows' retention.
    let mut stmt = c.prepare(
        "SELECT DISTINCT json_extract(t.content, '$.market_group_id') FROM timeslots t
         WHERE t.kind='group' AND t.end_time >= ?1
           AND json_extract(t.content, '$.market_group_id') IS NOT NULL
           AND COALESCE(json_extract(t.content, '$.integration_test_notification'), 0) = 0",
    )?;
    let rows = stmt.query_map([crate::store::ts(since)], |r| r.get::<_, String>(0))?;
    for g in rows {
        let g = g?;
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&g)) {
            out.push(g);
        }
    }
    Ok(out)
}

/// How long a timeslot first seen by polling counts as a sign that pushes do not arrive:
/// older ones tell of an outage that is over (or of polls before `leap webhook set`).
pub(crate) const FIRST_SEEN_RECENT_DAYS: i64 = 7;

/// Timeslots first seen by polling (read from the database, so it survives restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FirstSeen {
    pub(crate) total: u64,
    /// First received in the last [`FIRST_SEEN_RECENT_DAYS`] days.
    pub(crate) recent: u64,
    pub(crate) newest: Option<DateTime<Utc>>,
}

pub(crate) fn first_seen_by_poll(c: &rusqlite::Connection) -> Result<FirstSeen, StoreError> {
    let since = crate::store::ts(Utc::now() - Duration::days(FIRST_SEEN_RECENT_DAYS));
    let (total, recent, newest) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(first_received >= ?1), 0), MAX(first_received)
         FROM timeslots WHERE first_source='poll'",
        [since],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        },
    )?;
    Ok(FirstSeen {
        total: total as u64,
        recent: recent as u64,
        newest: newest
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry of the wrong shape in a page (a numeric `meter_id`): left out and named;
    /// before, the whole page failed, at every poll while Leap listed it.
    #[test]
    fn an_entry_of_the_wrong_shape_is_left_out_not_the_page() {
        let entry = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let results = vec![
            entry(serde_json::json!({"meter_id": 5, "timeslots": [{"meter_event_id": "e-1"}]})),
            entry(serde_json::json!({"meter_id": "m-1", "timeslots": []})),
        ];
        let mut report = PollReport::default();
        let limits = crate::config::LimitsConfig::default();
        let usable = usable_entries(&limits, Level::Meter, results, &mut report);
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0]["meter_id"], "m-1");
        assert_eq!(report.skipped_entries.len(), 1, "{report:?}");
        assert!(
            report.skipped_entries[0].contains("(meter_id 5, events e-1)"),
            "{:?}",
            report.skipped_entries
        );
    }

    #[test]
    fn window_is_at_most_leaps_31_days() {
        let now = Utc::now();
        let w = Window::around(now, 1, 7);
        assert_eq!((w.end - w.start).num_days(), 8);
        assert_eq!(now - w.start, Duration::days(1));
        let w = Window::around(now, 30, 7);
        assert_eq!(
            (w.end - w.start).num_days(),
            31,
            "ahead shortened, back kept"
        );
        assert_eq!(now - w.start, Duration::days(30));
    }
}
