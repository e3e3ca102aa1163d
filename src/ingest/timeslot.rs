//! One timeslot object → a [`Timeslot`], or a [`RejectedTimeslot`] naming the field at fault.

use super::RejectedTimeslot;
use crate::model::{EnergyKw, Kind, LOWEST_PRIORITY, Timeslot};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// Why a timeslot was rejected, as a closed set with a fixed metric label each. The
/// message beside it names the field and the value and may be reworded freely: the
/// `leap_edge_timeslots_rejected_total{reason=…}` series follow this type, not the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RejectReason {
    /// The timeslot is not a JSON object.
    NotAnObject,
    /// No `meter_event_id` / `market_group_event_id`.
    MissingEventId,
    /// A meter dispatch without a `meter_id`.
    MissingMeterId,
    /// `start_time` or `end_time` missing or not RFC 3339.
    BadTime,
    /// `end_time` at or before `start_time`.
    EndNotAfterStart,
    /// `energy_kw` outside Leap's documented range.
    OutOfRange,
    /// A required field of the wrong type.
    InvalidField,
    /// Beyond a configured `[limits]` bound (duration, start ahead).
    OverLimit,
}

impl crate::metrics::LabelSet for RejectReason {
    const ALL: &'static [RejectReason] = &[
        RejectReason::NotAnObject,
        RejectReason::MissingEventId,
        RejectReason::MissingMeterId,
        RejectReason::BadTime,
        RejectReason::EndNotAfterStart,
        RejectReason::OutOfRange,
        RejectReason::InvalidField,
        RejectReason::OverLimit,
    ];

    /// The metric label: short, bounded, and never derived from the message.
    fn label(self) -> &'static str {
        match self {
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingEventId => "missing_event_id",
            RejectReason::MissingMeterId => "missing_meter_id",
            RejectReason::BadTime => "bad_time",
            RejectReason::EndNotAfterStart => "end_not_after_start",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::OverLimit => "over_limit",
        }
    }
}

/// A rejection: its reason, and the message a technician reads (stored with the timeslot).
#[derive(Debug, Clone, PartialEq)]
struct Fault(RejectReason, String);

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

/// What a timeslot inherits from its dispatch entry and notification.
pub(crate) struct EntryContext {
    pub(crate) kind: Kind,
    /// A group entry without its (required) `meter_ids`.
    pub(crate) meters_missing: bool,
    pub(crate) meter_ids: Vec<String>,
    pub(crate) market_group_id: Option<String>,
    pub(crate) partner_references: Vec<String>,
    pub(crate) integration_test_notification: bool,
    pub(crate) notification_communication_test: bool,
    /// Entry-level optional fields that were wrong (SPEC §2.2), copied to each timeslot.
    pub(crate) warnings: Vec<String>,
}

/// Leap's documented range for `energy_kw` and `nomination_kw` (SPEC §1).
pub(crate) const KW_RANGE: std::ops::RangeInclusive<f64> = 0.01..=100_000.0;

pub(crate) fn parse_timeslot(
    ctx: &EntryContext,
    raw: &Value,
) -> Result<Timeslot, RejectedTimeslot> {
    let id_field = match ctx.kind {
        Kind::Meter => "meter_event_id",
        Kind::Group => "market_group_event_id",
    };
    let event_id = raw
        .get(id_field)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    // SPEC §2.13: a cancellation always cancels, whatever else is wrong in the revision.
    let cancels = event_id.is_some() && raw.get("cancelled") == Some(&Value::Bool(true));
    let reject = |Fault(code, reason): Fault| RejectedTimeslot {
        kind: ctx.kind,
        event_id: event_id.clone(),
        meter_ids: ctx.meter_ids.clone(),
        reason,
        code,
        raw: raw.clone(),
        cancels,
    };
    let obj = raw.as_object().ok_or_else(|| {
        let text = "timeslot is not a JSON object";
        reject(Fault(RejectReason::NotAnObject, text.into()))
    })?;
    let Some(event_id) = event_id.clone() else {
        let text = match obj.get(id_field) {
            None | Some(Value::Null) => format!("missing {id_field}"),
            Some(Value::String(_)) => format!("{id_field} is empty"),
            Some(v) => format!("{id_field} = {} is not a string", super::parse::shown(v)),
        };
        return Err(reject(Fault(RejectReason::MissingEventId, text)));
    };
    if ctx.kind == Kind::Meter && ctx.meter_ids.is_empty() {
        let text = "its meter dispatch has no meter_id";
        return Err(reject(Fault(RejectReason::MissingMeterId, text.into())));
    }
    if ctx.meters_missing {
        let text = "its group dispatch has no meter_ids (absent or null; an empty list is read as no meters)";
        return Err(reject(Fault(RejectReason::MissingMeterId, text.into())));
    }
    fields(ctx, obj, event_id).map_err(reject)
}

fn fields(
    ctx: &EntryContext,
    obj: &Map<String, Value>,
    event_id: String,
) -> Result<Timeslot, Fault> {
    let start_time = time(obj, "start_time")?;
    let end_time = time(obj, "end_time")?;
    if end_time <= start_time {
        let text = format!("end_time {end_time} is not after start_time {start_time}");
        return Err(Fault(RejectReason::EndNotAfterStart, text));
    }
    let energy_kw = match obj.get("energy_kw") {
        None => EnergyKw::Absent,
        Some(Value::Null) => EnergyKw::Null,
        Some(v) => EnergyKw::Kw(kw(v, "energy_kw")?),
    };
    let cancelled = opt_bool_field(obj, "cancelled")?.unwrap_or(false);
    // Issue 9: from here on every field is optional: a wrong one is read as absent (or
    // clamped) and flagged on the timeslot, never a reason to refuse the dispatch.
    let mut w = Warnings(ctx.warnings.clone());
    let nomination_kw = nomination(obj, energy_kw, &mut w);
    let communication_test = communication_test(obj, &mut w);
    let priority = w.keep(priority(obj), None, "read as absent (the lowest, 10)");
    let priority = priority.map(|p| {
        let clamped = p.clamp(1, LOWEST_PRIORITY);
        if clamped != p {
            w.0.push(format!(
                "priority = {p} is outside 1–10; clamped to {clamped}"
            ));
        }
        clamped
    });
    let cap_how = "read as absent (the most restrictive cap)";
    let cap = w.keep(
        opt_string(obj, "performance_compensation_cap"),
        None,
        cap_how,
    );
    let voluntary = opt_bool_field(obj, "is_voluntary");
    // Absent means a commitment: the stricter reading when penalties are at stake.
    let is_voluntary = w
        .keep(voluntary, None, "read as a commitment")
        .unwrap_or(false);
    Ok(Timeslot {
        kind: ctx.kind,
        event_id,
        meter_ids: ctx.meter_ids.clone(),
        market_group_id: ctx.market_group_id.clone(),
        partner_references: ctx.partner_references.clone(),
        start_time,
        end_time,
        cancelled,
        energy_kw,
        nomination_kw,
        performance_compensation_cap: cap,
        priority,
        is_voluntary,
        dispatch_event_types: strings(obj, "dispatch_event_types", &mut w),
        programs: strings(obj, "programs", &mut w),
        communication_test,
        integration_test_notification: ctx.integration_test_notification,
        notification_communication_test: ctx.notification_communication_test,
        warnings: w.0,
    })
}

/// What was wrong in optional fields, in words a technician can act on.
struct Warnings(Vec<String>);

impl Warnings {
    fn keep<T, E: std::fmt::Display>(&mut self, r: Result<T, E>, fallback: T, how: &str) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(format!("{e}; {how}"));
            fallback
        })
    }
}

/// `nomination_kw`: a wrong one is read as absent, and under up-to-nomination the award
/// then bounds the reduction, as before. Without an award (`energy_kw` null or absent: the
/// most that can be delivered) a nomination below Leap's 0.01 kW says next to nothing is
/// paid: read as absent, there would be no bound at all, so it is kept (at least 0).
fn nomination(obj: &Map<String, Value>, energy_kw: EnergyKw, w: &mut Warnings) -> Option<f64> {
    let v = obj.get("nomination_kw").filter(|v| !v.is_null())?;
    let tiny = v
        .as_f64()
        .filter(|n| n.is_finite() && *n < *KW_RANGE.start());
    match (tiny, energy_kw) {
        (Some(n), EnergyKw::Absent | EnergyKw::Null) => {
            let bound = n.max(0.0);
            w.0.push(format!(
                "nomination_kw = {v} is below Leap's range 0.01–100000 kW and there is no \
                 award; read as {bound} kW (nothing beyond it is paid under up-to-nomination)"
            ));
            Some(bound)
        }
        _ => w.keep(kw(v, "nomination_kw").map(Some), None, "read as absent"),
    }
}

/// `communication_test` and `is_communication_test` both read; the most cautious wins
/// (one saying true makes it a test, so `communication_test: null` cannot hide
/// `is_communication_test: true`).
fn communication_test(obj: &Map<String, Value>, w: &mut Warnings) -> Option<bool> {
    let mut seen = None;
    for field in ["communication_test", "is_communication_test"] {
        let Some(v) = obj.get(field) else { continue };
        if let Some(b) = w.keep(opt_bool(v, field), None, "read as absent") {
            seen = Some(seen.unwrap_or(false) || b);
        }
    }
    seen
}

fn time(obj: &Map<String, Value>, field: &str) -> Result<DateTime<Utc>, Fault> {
    let bad = |text| Fault(RejectReason::BadTime, text);
    let s = match obj.get(field) {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(bad(format!("missing {field} (an RFC 3339 time)"))),
        Some(v) => {
            return Err(bad(format!(
                "{field} = {} is not an RFC 3339 time (a string such as \"2026-06-05T17:00:00Z\")",
                super::parse::shown(v)
            )));
        }
    };
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad(format!("{field} = {s:?} is not an RFC 3339 time: {e}")))
}

fn kw(v: &Value, field: &str) -> Result<f64, Fault> {
    let n = v.as_f64().ok_or_else(|| {
        let text = format!("{field} = {v} is not a number");
        Fault(RejectReason::InvalidField, text)
    })?;
    if !KW_RANGE.contains(&n) {
        let text = format!("{field} = {n} is outside Leap's range 0.01–100000 kW");
        return Err(Fault(RejectReason::OutOfRange, text));
    }
    Ok(n)
}

fn priority(obj: &Map<String, Value>) -> Result<Option<i64>, String> {
    match obj.get("priority") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| format!("priority = {v} is not a whole number")),
    }
}

fn opt_bool(v: &Value, field: &str) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(format!("{field} = {other} is not true or false")),
    }
}

fn opt_bool_field(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, Fault> {
    obj.get(field)
        .map_or(Ok(None), |v| opt_bool(v, field))
        .map_err(|text| Fault(RejectReason::InvalidField, text))
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{field} = {other} is not a string")),
    }
}

/// Unknown identifiers are kept as text (SPEC §2.2): only the JSON type is checked, and
/// an item of the wrong type is left out with a warning.
fn strings(obj: &Map<String, Value>, field: &str, w: &mut Warnings) -> Vec<String> {
    match obj.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| {
                let s = v.as_str().map(str::to_string);
                if s.is_none() {
                    w.0.push(format!("{field} holds {v}, not a string; left out"));
                }
                s
            })
            .collect(),
        Some(other) => {
            w.0.push(format!(
                "{field} = {other} is not an array of strings; read as empty"
            ));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RejectReason;
    use crate::metrics::LabelSet;
    use serde_json::json;
    use std::collections::BTreeSet;

    #[test]
    fn every_reason_has_its_own_stable_label() {
        let labels: BTreeSet<&str> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RejectReason::ALL.len(), "{labels:?}");
        // Dashboards and alerts use these: a change here is a breaking change.
        assert_eq!(
            RejectReason::EndNotAfterStart.label(),
            "end_not_after_start"
        );
        assert_eq!(RejectReason::OverLimit.label(), "over_limit");
        for r in RejectReason::ALL {
            let l = r.label();
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
    }

    /// Each fault is classified by what it is, not by the words of its message (the
    /// metric label once matched substrings of these messages).
    #[test]
    fn each_rejected_timeslot_carries_its_reason() {
        let now = chrono::Utc::now();
        let t = |h: i64| (now + chrono::Duration::hours(h)).to_rfc3339();
        let ok =
            json!({"meter_event_id": "x", "start_time": t(1), "end_time": t(2), "energy_kw": 5.0});
        let with = |k: &str, v: serde_json::Value| {
            let mut s = ok.clone();
            s[k] = v;
            s
        };
        let cases = [
            (json!(7), RejectReason::NotAnObject),
            (
                with("meter_event_id", json!("")),
                RejectReason::MissingEventId,
            ),
            (with("start_time", json!("tomorrow")), RejectReason::BadTime),
            (
                with("end_time", json!(t(0))),
                RejectReason::EndNotAfterStart,
            ),
            (with("energy_kw", json!(1e9)), RejectReason::OutOfRange),
            (with("energy_kw", json!("five")), RejectReason::InvalidField),
            (with("cancelled", json!("no")), RejectReason::InvalidField),
            (with("end_time", json!(t(48))), RejectReason::OverLimit),
        ];
        let limits = crate::config::LimitsConfig::default();
        for (slot, want) in cases {
            let note = json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [slot]}]});
            let body = note.to_string();
            let p = crate::ingest::parse_bounded(body.as_bytes(), &limits, now).unwrap();
            assert_eq!(p.rejected.len(), 1, "{body}");
            assert_eq!(p.rejected[0].code, want, "{}", p.rejected[0].reason);
        }
        let note = json!({"meter_dispatches": [{"timeslots": [ok]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        assert_eq!(p.rejected[0].code, RejectReason::MissingMeterId);
    }

    /// A field present with the wrong type is named with its value, not called missing:
    /// the reader looks at the raw JSON and sees the field there.
    #[test]
    fn a_wrong_type_is_not_called_missing() {
        let slot = json!({"meter_event_id": 12345, "start_time": "2030-06-05T00:00:00Z",
            "end_time": "2030-06-05T01:00:00Z"});
        let note = json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [slot]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        assert_eq!(
            p.rejected[0].reason,
            "meter_event_id = 12345 is not a string"
        );
        let slot = json!({"meter_event_id": "e1", "start_time": 1_717_545_600,
            "end_time": "2030-06-05T01:00:00Z"});
        let note = json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [slot]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        assert!(
            p.rejected[0]
                .reason
                .starts_with("start_time = 1717545600 is not an RFC 3339 time"),
            "{}",
            p.rejected[0].reason
        );
    }

    /// SPEC §1: a group entry names its meters. Without `meter_ids` (absent or null) its
    /// timeslots are rejected, saying so; a cancellation among them still cancels. Before,
    /// they were stored with no meters, and a revision released the group's batteries.
    #[test]
    fn a_group_entry_without_meter_ids_is_rejected_and_still_cancels() {
        let now = chrono::Utc::now();
        let t = |h: i64| (now + chrono::Duration::hours(h)).to_rfc3339();
        let slot = |id: &str, cancelled: bool| {
            json!({"market_group_event_id": id, "start_time": t(1), "end_time": t(2),
                   "energy_kw": 5.0, "cancelled": cancelled})
        };
        for meters in [None, Some(json!(null))] {
            let mut entry = json!({"market_group_id": "g1",
                                   "timeslots": [slot("g-1", false), slot("g-2", true)]});
            if let Some(m) = meters {
                entry["meter_ids"] = m;
            }
            let note = json!({"group_dispatches": [entry]});
            let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
            assert!(p.timeslots.is_empty(), "{:?}", p.timeslots);
            assert_eq!(p.rejected.len(), 2);
            assert!(p.rejected.iter().all(
                |r| r.code == RejectReason::MissingMeterId && r.reason.contains("no meter_ids")
            ));
            assert_eq!(
                p.rejected.iter().map(|r| r.cancels).collect::<Vec<_>>(),
                [false, true]
            );
        }
        // An empty list is Leap's to send: read as a group with no meters.
        let note =
            json!({"group_dispatches": [{"meter_ids": [], "timeslots": [slot("g-3", false)]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        assert_eq!(p.timeslots.len(), 1);
    }

    /// A zero nomination under up-to-nomination bounds the reduction at 0, with a warning;
    /// read as absent it fell back to no bound at all (the award being null).
    #[test]
    fn a_zero_nomination_is_a_zero_bound_not_none() {
        let now = chrono::Utc::now();
        let t = |h: i64| (now + chrono::Duration::hours(h)).to_rfc3339();
        let slot = json!({"meter_event_id": "x", "start_time": t(1), "end_time": t(2),
            "energy_kw": null, "nomination_kw": 0, "performance_compensation_cap": "up-to-nomination"});
        let note = json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [slot]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        let ts = &p.timeslots[0];
        assert_eq!(ts.nomination_kw, Some(0.0));
        assert!(
            ts.warnings.iter().any(|w| w.contains("nomination_kw = 0")),
            "{:?}",
            ts.warnings
        );
        // With an award, the award bounds it as before (the nomination read as absent);
        // a tiny one without an award is kept as it is.
        let mut with_award = slot.clone();
        with_award["energy_kw"] = json!(10.0);
        let mut tiny = slot.clone();
        tiny["nomination_kw"] = json!(0.005);
        tiny["meter_event_id"] = json!("y");
        let note =
            json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [with_award, tiny]}]});
        let p = crate::ingest::parse_notification(note.to_string().as_bytes()).unwrap();
        assert_eq!(p.timeslots[0].nomination_kw, None);
        assert_eq!(p.timeslots[1].nomination_kw, Some(0.005));
    }
}
