//! Reads what [`super::report`] needs from the database: ended timeslots, each local
//! meter's intervals and event days, and the first setpoint's lateness from the audit log.

use super::db::{self, Range};
use super::report::{self, EventReport, Input};
use crate::config::Config;
use crate::model::{Kind, StoredTimeslot};
use crate::store::{StoreError, audit, query};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::Connection;
use std::collections::HashSet;

/// Reports for every ended, non-cancelled timeslot (or only `event`), per local meter.
pub(crate) fn reports(
    conn: &Connection,
    config: &Config,
    event: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<EventReport>, StoreError> {
    let all = query::all_timeslots(conn)?;
    let mut out = Vec::new();
    for st in all.iter().filter(|s| wanted(s, event, now)) {
        out.extend(for_timeslot(conn, config, st, &all)?);
    }
    Ok(out)
}

fn wanted(s: &StoredTimeslot, event: Option<&str>, now: DateTime<Utc>) -> bool {
    !s.cancelled_final
        && !s.timeslot.cancelled
        && s.timeslot.end_time <= now
        && event.is_none_or(|e| s.timeslot.event_id == e)
}

/// One report per local meter of `st`.
pub(crate) fn for_timeslot(
    conn: &Connection,
    config: &Config,
    st: &StoredTimeslot,
    all: &[StoredTimeslot],
) -> Result<Vec<EventReport>, StoreError> {
    let ts = &st.timeslot;
    let mut out = Vec::new();
    for (m, share) in local_shares(config, ts.kind, &ts.meter_ids) {
        let event_days: HashSet<NaiveDate> = all
            .iter()
            .filter(|o| {
                !o.cancelled_final
                    && o.timeslot
                        .meter_ids
                        .iter()
                        .any(|x| x.eq_ignore_ascii_case(&m.id))
            })
            .flat_map(|o| {
                [
                    o.timeslot.start_time.date_naive(),
                    o.timeslot.end_time.date_naive(),
                ]
            })
            .collect();
        let range = Range {
            from: Some(ts.start_time.timestamp() - 31 * 86_400),
            to: Some(ts.end_time.timestamp()),
            meter: Some(m.id.clone()),
        };
        let intervals = db::list(conn, &range)?;
        let (lateness, dry_run, untouched) = first_setpoint(conn, &m.id, &ts.event_id)?;
        // SPEC §2.6: a Leap test with nothing audited for it was not commanded here (the
        // policy ignored it then, whatever it says now, or it never ran): judging it would
        // write a false MISSED to the audit log. A test that did run is judged.
        let ignored = untouched && crate::plan::test_policy(ts, &config.policy).1.is_some();
        let overlapping = overlapping(st, all, &m.id);
        out.push(report::build(&Input {
            timeslot: ts,
            meter_id: &m.id,
            // What the plan delivered: no more than the nomination under its cap.
            award_kw: crate::plan::paid_share_kw(ts, share),
            intervals: &intervals,
            event_days: &event_days,
            first_setpoint_lateness_ms: lateness,
            dry_run,
            test_not_commanded: ignored,
            overlapping: &overlapping,
        }));
    }
    Ok(out)
}

/// Other live timeslots for `meter` whose time overlaps `st`'s: interval data cannot tell
/// which of them the battery's energy in the common intervals was for.
fn overlapping(st: &StoredTimeslot, all: &[StoredTimeslot], meter: &str) -> Vec<String> {
    let ts = &st.timeslot;
    let mut ids: Vec<String> = all
        .iter()
        .filter(|o| !o.cancelled_final && !o.timeslot.cancelled)
        .filter(|o| (o.timeslot.kind, &o.timeslot.event_id) != (ts.kind, &ts.event_id))
        .filter(|o| o.timeslot.start_time < ts.end_time && o.timeslot.end_time > ts.start_time)
        .filter(|o| {
            o.timeslot
                .meter_ids
                .iter()
                .any(|x| x.eq_ignore_ascii_case(meter))
        })
        .map(|o| o.timeslot.event_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Each configured meter among `meter_ids` with its share of the award. SPEC §2.7: a
/// group's energy_kw is shared by weight, by the plan's own rule (a foreign meter weighs
/// the local meters' mean), so a report's award is what the plan commanded.
fn local_shares<'a>(
    config: &'a Config,
    kind: Kind,
    meter_ids: &[String],
) -> Vec<(&'a crate::config::MeterConfig, f64)> {
    // SPEC §2.7: Leap's meter ids whatever their case, as the plan matches them.
    // A set: a market group may list 10,000 meters.
    let ids: std::collections::HashSet<String> =
        meter_ids.iter().map(|i| i.to_ascii_lowercase()).collect();
    let local: Vec<&crate::config::MeterConfig> = config
        .meters
        .iter()
        .filter(|m| ids.contains(&m.id.to_ascii_lowercase()))
        .collect();
    let weights: Vec<f64> = local.iter().map(|m| m.weight).collect();
    let total = crate::plan::group_weight(&weights, ids.len() - local.len());
    local
        .into_iter()
        .map(|m| {
            let share = match kind {
                Kind::Meter => 1.0,
                Kind::Group => m.weight / total.max(f64::MIN_POSITIVE),
            };
            (m, share)
        })
        .collect()
}

/// The first setpoint's lateness, whether the event was only a dry run here (SPEC §2.6:
/// audited as would-apply, never applied): nothing was due from the battery then; and
/// whether nothing at all was audited for it (its own report aside).
fn first_setpoint(
    conn: &Connection,
    meter: &str,
    event: &str,
) -> Result<(Option<i64>, bool, bool), StoreError> {
    let rows = audit::query(
        conn,
        &audit::AuditFilter {
            meter: Some(meter.to_string()),
            event: Some(event.to_string()),
            ..Default::default()
        },
    )?;
    Ok(setpoint_facts(&rows))
}

/// [`first_setpoint`] from the event's audit rows.
fn setpoint_facts(rows: &[audit::AuditRow]) -> (Option<i64>, bool, bool) {
    let applied = |r: &&audit::AuditRow| r.action == "apply" || r.action == "resumed";
    let dry_run =
        !rows.iter().any(|r| applied(&r)) && rows.iter().any(|r| r.action == "would-apply");
    // A row with an error was not a setpoint (the device did not answer, or the loop
    // found the readings untrusted and handed the battery back instead).
    let applied = rows
        .iter()
        .filter(|r| (r.action == "apply" || r.action == "would-apply") && r.error.is_none())
        .min_by(|a, b| a.at.cmp(&b.at))
        .map(|r| (r.at.as_str(), r.lateness_ms));
    // The earlier of the first applied row and the loop's own resumption after a first
    // apply that failed (a revision applied later is not the first setpoint).
    let lateness = match (applied, resumed_lateness(rows)) {
        (Some((at, late)), Some((resumed_at, resumed))) => {
            if resumed_at < at {
                Some(resumed)
            } else {
                late
            }
        }
        (Some((_, late)), None) => late,
        (None, resumed) => resumed.map(|(_, l)| l),
    };
    let untouched = rows.iter().all(|r| r.action == "report");
    (lateness, dry_run, untouched)
}

/// A first apply the loop handed back at once (its `blind` or `refused` safety row within a
/// few seconds of it), followed by the loop by itself when the readings or the device came
/// back: that `resumed` row is the first setpoint, late from the apply's boundary. Returns
/// (when, lateness ms).
fn resumed_lateness(rows: &[audit::AuditRow]) -> Option<(&str, i64)> {
    let time = |t: &str| DateTime::parse_from_rfc3339(t).ok();
    let failed = rows
        .iter()
        .filter(|r| r.action == "apply" && r.error.is_some())
        .min_by(|a, b| a.at.cmp(&b.at))?;
    let boundary = time(failed.boundary.as_deref()?)?;
    let mut safety: Vec<&audit::AuditRow> = rows
        .iter()
        .filter(|r| r.action == "safety" && r.at >= failed.at)
        .collect();
    safety.sort_by(|a, b| a.at.cmp(&b.at));
    let says =
        |r: &audit::AuditRow, what: &str| r.detail.as_deref().is_some_and(|d| d.starts_with(what));
    let handed_back = safety.first()?;
    let soon = (time(&handed_back.at)? - time(&failed.at)?).num_seconds() <= 5;
    if !soon || !(says(handed_back, "blind:") || says(handed_back, "refused:")) {
        return None;
    }
    let resumed = safety.iter().find(|r| says(r, "resumed:"))?;
    Some((
        resumed.at.as_str(),
        (time(&resumed.at)? - boundary).num_milliseconds(),
    ))
}

/// A timeslot's summary goes to the audit log this long after it ended: the readings up to
/// its end have been saved by then (the open interval is saved every 15 s of readings).
pub const AUDIT_AFTER_SECS: i64 = 20;

/// Write the report of every timeslot that ended (in the last two days, at least
/// [`AUDIT_AFTER_SECS`] ago) and has none yet to the audit log; returns how many.
pub(crate) fn audit_ended(
    conn: &Connection,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let all = query::timeslots_ending_after(conn, now - chrono::Duration::days(2))?;
    let mut written = 0;
    // A timeslot for no meter of this site (a fleet posted to one gateway) never gets a
    // report: not looked up at all.
    for st in all
        .iter()
        .filter(|s| wanted(s, None, now - chrono::Duration::seconds(AUDIT_AFTER_SECS)))
        .filter(|s| !local_shares(config, s.timeslot.kind, &s.timeslot.meter_ids).is_empty())
    {
        let done: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM audit WHERE action = 'report' AND event_id = ?1 AND kind = ?2)",
            rusqlite::params![st.timeslot.event_id, st.timeslot.kind.as_str()],
            |r| r.get(0),
        )?;
        if done {
            continue;
        }
        for r in for_timeslot(conn, config, st, &all)? {
            tracing::info!(event_id = %r.event_id, meter_id = %r.meter_id,
                delivered_kwh = r.delivered_kwh, award_kwh = ?r.award_kwh, verdict = %r.verdict,
                "report: timeslot ended");
            audit::insert(
                conn,
                &audit::AuditEntry {
                    at: now,
                    meter_id: r.meter_id.clone(),
                    action: audit::Action::Report,
                    kind: Some(r.kind.to_string()),
                    event_id: Some(r.event_id.clone()),
                    cap: st.timeslot.performance_compensation_cap.clone(),
                    target: r.award_kw.map(|kw| format!("{kw:.1} kW")),
                    boundary: Some(r.end_time),
                    lateness_ms: r.first_setpoint_lateness_ms,
                    error: None,
                    detail: Some(r.verdict.clone()),
                },
            )?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: &str, action: &str, error: Option<&str>, detail: Option<&str>) -> audit::AuditRow {
        audit::AuditRow {
            id: 0,
            at: at.into(),
            meter_id: "m1".into(),
            action: action.into(),
            kind: Some("meter".into()),
            event_id: Some("e1".into()),
            performance_compensation_cap: None,
            target: None,
            boundary: Some("2026-11-20T17:00:00.000Z".into()),
            lateness_ms: Some(12),
            outcome: if error.is_some() { "error" } else { "ok" }.into(),
            error: error.map(Into::into),
            detail: detail.map(Into::into),
        }
    }

    /// The first apply found the readings untrusted (or the device silent) and the loop
    /// followed by itself 1.2 s later: that is the first setpoint, not "none recorded", and
    /// not a revision's row later on.
    #[test]
    fn a_failed_first_apply_takes_its_lateness_from_the_loops_resumed_row() {
        let mut rows = vec![
            row(
                "2026-11-20T17:00:00.012Z",
                "apply",
                Some("not applied: stale"),
                None,
            ),
            row(
                "2026-11-20T17:00:00.013Z",
                "safety",
                None,
                Some("blind: stale"),
            ),
            row(
                "2026-11-20T17:00:01.200Z",
                "safety",
                None,
                Some("resumed: readings trustworthy again (was: stale)"),
            ),
        ];
        assert_eq!(setpoint_facts(&rows).0, Some(1200));
        let ok = [row("2026-11-20T17:00:00.012Z", "apply", None, None)];
        assert_eq!(setpoint_facts(&ok).0, Some(12));
        // Never followed: no setpoint.
        assert_eq!(setpoint_facts(&rows[..2]).0, None);
        // A revision applied later is not the first setpoint.
        rows.push(row("2026-11-20T17:05:00.012Z", "apply", None, None));
        assert_eq!(setpoint_facts(&rows).0, Some(1200));
        // A failed apply the loop did not hand back at once (a write timeout): a blind and
        // resumed 20 minutes later say nothing about its first setpoint.
        let late = [
            row("2026-11-20T17:00:00.012Z", "apply", Some("timeout"), None),
            row(
                "2026-11-20T17:20:00.000Z",
                "safety",
                None,
                Some("blind: stale"),
            ),
            row(
                "2026-11-20T17:20:03.000Z",
                "safety",
                None,
                Some("resumed: readings trustworthy again"),
            ),
        ];
        assert_eq!(setpoint_facts(&late).0, None);
    }

    #[test]
    fn a_group_share_is_the_plans_with_a_foreign_meter_and_unequal_weights() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n\
            [[meters]]\nid = \"a\"\ndevice = \"d\"\nweight = 30\n[[meters]]\nid = \"b\"\ndevice = \"d\"\nweight = 10\n\
            [devices.d]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\n";
        let config = Config::parse_str(text, std::path::Path::new("t.toml")).unwrap();
        let ids: Vec<String> = ["a", "b", "foreign"].map(String::from).to_vec();
        let shares: Vec<(String, f64)> = local_shares(&config, Kind::Group, &ids)
            .into_iter()
            .map(|(m, s)| (m.id.clone(), s))
            .collect();
        // 60 kW: the plan commands a 30 kW and b 10 kW (foreign weighs the mean, 20).
        assert_eq!(
            shares,
            [("a".to_string(), 0.5), ("b".to_string(), 1.0 / 6.0)]
        );
        let meter = local_shares(&config, Kind::Meter, &["b".to_string()]);
        assert_eq!(meter.len(), 1);
        assert_eq!(meter[0].1, 1.0);
    }
}
