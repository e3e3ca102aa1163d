//! Per-event performance (issue 14 point 4), pure: for one ended timeslot and one local
//! meter, per 15-minute interval the award, what the battery delivered, the site's net
//! import, a baseline estimate, seconds of export and the lowest SoC; then totals and a
//! one-line verdict. The baseline is only an estimate (the mean net import of the same
//! quarter hours over the previous 10 non-event days): Leap computes the settlement one.

use super::db::Interval;
use super::recorder::{INTERVAL_SECS, MIN_COVERAGE};
use crate::model::Timeslot;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Days of history the baseline averages over.
pub(crate) const BASELINE_DAYS: usize = 10;
/// How far back to look for them.
const BASELINE_LOOKBACK_DAYS: i64 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct IntervalReport {
    pub interval_start_time_utc: String,
    pub award_kwh: Option<f64>,
    /// Battery discharge over the interval (from its power readings).
    pub delivered_kwh: Option<f64>,
    pub site_net_import_kwh: Option<f64>,
    /// An estimate, labelled so: Leap computes the settlement baseline.
    pub baseline_estimate_kwh: Option<f64>,
    pub export_seconds: i64,
    pub min_soc_pct: Option<f64>,
    /// "meter", "estimated", "recording", "gap", or "readings missing" (the meter's
    /// counters give its energy, but the battery's readings cover under 95 % of it, so
    /// what it delivered and the export seconds are short).
    pub data: &'static str,
    /// Only part of the interval lies inside the event: the interval's battery energy (all
    /// there is) then includes what the battery did outside the event.
    pub partial: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    pub event_id: String,
    pub kind: &'static str,
    pub meter_id: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub programs: Vec<String>,
    /// This meter's share of `energy_kw`, no more than its share of `nomination_kw` under
    /// up-to-nomination (what is paid, and what the plan delivers); `None` when Leap asked
    /// for the maximum.
    pub award_kw: Option<f64>,
    pub award_kwh: Option<f64>,
    pub delivered_kwh: f64,
    pub delivered_pct: Option<f64>,
    pub export_seconds: i64,
    pub min_soc_pct: Option<f64>,
    pub first_setpoint_lateness_ms: Option<i64>,
    /// A dry run here (SPEC §2.6): audited as would-apply only, so not judged.
    pub dry_run: bool,
    /// A Leap test with nothing audited for it (the `[policy]` ignored it, or it never
    /// ran): not judged.
    pub test_not_commanded: bool,
    /// Other timeslots on this meter that overlap this one: each is credited the battery's
    /// whole energy of the common intervals, so a sum over them counts it twice.
    pub overlapping: Vec<String>,
    pub gaps: usize,
    /// Intervals only partly inside the event (see [`IntervalReport::partial`]).
    pub partial_intervals: usize,
    pub baseline_days: usize,
    pub intervals: Vec<IntervalReport>,
    pub verdict: String,
}

/// What the report is built from (all read by the caller).
pub(crate) struct Input<'a> {
    pub(crate) timeslot: &'a Timeslot,
    pub(crate) meter_id: &'a str,
    pub(crate) award_kw: Option<f64>,
    /// The meter's intervals from 30 days before the event to its end.
    pub(crate) intervals: &'a [Interval],
    /// Days (UTC) on which this meter had an event: not baseline days.
    pub(crate) event_days: &'a HashSet<NaiveDate>,
    pub(crate) first_setpoint_lateness_ms: Option<i64>,
    /// Only audited as would-apply (a dry run under the policy): not judged.
    pub(crate) dry_run: bool,
    /// A test the policy ignores, with nothing audited for it: not judged.
    pub(crate) test_not_commanded: bool,
    /// Other timeslots on this meter whose time overlaps this one's (SCENARIOS 3).
    pub(crate) overlapping: &'a [String],
}

pub(crate) fn build(i: &Input<'_>) -> EventReport {
    let ts = i.timeslot;
    let (start, end) = (ts.start_time.timestamp(), ts.end_time.timestamp());
    let by_start: BTreeMap<i64, &Interval> = i.intervals.iter().map(|x| (x.start, x)).collect();
    let days = baseline_days(i, &by_start);
    let mut rows = Vec::new();
    let first = start.div_euclid(INTERVAL_SECS) * INTERVAL_SECS;
    let mut slot = first;
    while slot < end {
        let overlap = (slot + INTERVAL_SECS).min(end) - slot.max(start);
        let rec = by_start.get(&slot);
        let net = rec.and_then(|r| r.energy.map(|e| (e.import_wh - e.export_wh) / 1000.0));
        let base: Vec<f64> = days
            .iter()
            .filter_map(|d| {
                let s = slot + (*d - ts.start_time.date_naive()).num_seconds();
                let e = by_start.get(&s)?.energy?;
                Some((e.import_wh - e.export_wh) / 1000.0)
            })
            .collect();
        rows.push(IntervalReport {
            interval_start_time_utc: super::csv::utc(slot),
            award_kwh: i.award_kw.map(|kw| kw * overlap as f64 / 3600.0),
            delivered_kwh: rec.map(|r| r.battery_wh / 1000.0),
            site_net_import_kwh: net,
            baseline_estimate_kwh: (!base.is_empty())
                .then(|| base.iter().sum::<f64>() / base.len() as f64),
            export_seconds: rec.map_or(0, |r| r.export_ms / 1000),
            min_soc_pct: rec.and_then(|r| r.min_soc_pct),
            data: data_of(rec.copied()),
            partial: overlap < INTERVAL_SECS,
        });
        slot += INTERVAL_SECS;
    }
    summarise(i, rows, days.len())
}

/// Where an interval's figures come from, and whether they are whole.
fn data_of(rec: Option<&Interval>) -> &'static str {
    let whole = (MIN_COVERAGE * (INTERVAL_SECS * 1000) as f64) as i64;
    match rec {
        Some(r) if r.open => "recording",
        Some(r) => match r.energy {
            None => "gap",
            // Delivered energy is integrated from the battery's own power reading.
            Some(_) if r.covered_ms < whole || r.battery_ms < whole => "readings missing",
            Some(e) => e.source.as_str(),
        },
        None => "gap",
    }
}

/// Not judged: no data, or data short of readings. An interval still recording is
/// judged on what it has (the verdict 20 s after an event that ends mid-interval).
fn incomplete(data: &str) -> bool {
    matches!(data, "gap" | "readings missing")
}

/// The previous non-event days with data, newest first, at most [`BASELINE_DAYS`].
fn baseline_days(i: &Input<'_>, by_start: &BTreeMap<i64, &Interval>) -> Vec<NaiveDate> {
    let day = i.timeslot.start_time.date_naive();
    (1..=BASELINE_LOOKBACK_DAYS)
        .filter_map(|n| day.checked_sub_days(chrono::Days::new(n as u64)))
        .filter(|d| !i.event_days.contains(d))
        .filter(|d| {
            let from = d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
            from.is_some_and(|f| by_start.range(f..f + 86_400).next().is_some())
        })
        .take(BASELINE_DAYS)
        .collect()
}

fn summarise(i: &Input<'_>, rows: Vec<IntervalReport>, baseline_days: usize) -> EventReport {
    let ts = i.timeslot;
    let delivered: f64 = rows.iter().filter_map(|r| r.delivered_kwh).sum();
    let award: Option<f64> = i
        .award_kw
        .map(|_| rows.iter().filter_map(|r| r.award_kwh).sum());
    let pct = award.filter(|a| *a > 0.0).map(|a| delivered / a * 100.0);
    let export_seconds = rows.iter().map(|r| r.export_seconds).sum();
    let min_soc = rows
        .iter()
        .filter_map(|r| r.min_soc_pct)
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
    let gaps = rows.iter().filter(|r| incomplete(r.data)).count();
    let partial_intervals = rows.iter().filter(|r| r.partial).count();
    let mut report = EventReport {
        event_id: ts.event_id.clone(),
        kind: ts.kind.as_str(),
        meter_id: i.meter_id.to_string(),
        start_time: ts.start_time,
        end_time: ts.end_time,
        programs: ts.programs.clone(),
        award_kw: i.award_kw,
        award_kwh: award,
        delivered_kwh: delivered,
        delivered_pct: pct,
        export_seconds,
        min_soc_pct: min_soc,
        first_setpoint_lateness_ms: i.first_setpoint_lateness_ms,
        dry_run: i.dry_run,
        test_not_commanded: i.test_not_commanded,
        overlapping: i.overlapping.to_vec(),
        gaps,
        partial_intervals,
        baseline_days,
        intervals: rows,
        verdict: String::new(),
    };
    report.verdict = verdict(&report);
    report
}

/// One line a settlement analyst can read at a glance.
pub(crate) fn verdict(r: &EventReport) -> String {
    let outcome = match r.delivered_pct {
        // Leap's integration tests under the default policy: the battery was not asked
        // to move, so "MISSED" would be a false alarm in the audit log.
        _ if r.dry_run => "DRY RUN (battery not commanded)",
        _ if r.test_not_commanded => {
            "NOT COMMANDED (a Leap test with nothing in the audit log: [policy] ignored it, or it never ran)"
        }
        _ if r.gaps > 0 => "INCOMPLETE DATA",
        Some(p) if p >= 98.0 => "MET",
        Some(p) if p >= 80.0 => "SHORT",
        Some(_) => "MISSED",
        None => "MAXIMUM REQUESTED",
    };
    let award = match (r.award_kwh, r.delivered_pct) {
        (Some(a), Some(p)) => format!("{:.2} of {a:.2} kWh awarded ({p:.1} %)", r.delivered_kwh),
        _ => format!("{:.2} kWh (no award quantity)", r.delivered_kwh),
    };
    let soc = r
        .min_soc_pct
        .map_or("SoC unknown".into(), |s| format!("lowest SoC {s:.0} %"));
    let late = r
        .first_setpoint_lateness_ms
        .map_or("no setpoint recorded".into(), |l| {
            format!("first setpoint {} late", crate::textfmt::millis(l))
        });
    let gaps = if r.gaps > 0 {
        format!(", {} interval(s) without complete data", r.gaps)
    } else {
        String::new()
    };
    // Interval data has no finer grain: say so rather than prorate a guess.
    let partial = if r.partial_intervals > 0 {
        format!(
            "; approximate: {} interval(s) only partly inside the event count the battery's whole 15 minutes",
            r.partial_intervals
        )
    } else {
        String::new()
    };
    // Only the audit log knows which one governed when; interval data does not.
    let shared = if r.overlapping.is_empty() {
        String::new()
    } else {
        format!(
            "; approximate: overlaps {} on this meter, and each is credited the battery's whole energy of the common intervals",
            r.overlapping.join(", ")
        )
    };
    format!(
        "{outcome}: event {} meter {} delivered {award}, {} s of export, {soc}, {late}{gaps}{partial}{shared}",
        r.event_id, r.meter_id, r.export_seconds
    )
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
