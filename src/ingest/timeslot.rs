//! One timeslot object → a [`Timeslot`], or a [`RejectedTimeslot`] naming the field at fault.

use super::RejectedTimeslot;
use crate::model::{EnergyKw, Kind, LOWEST_PRIORITY, Timeslot};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// What a timeslot inherits from its dispatch entry and notification.
pub struct EntryContext {
    pub kind: Kind,
    pub meter_ids: Vec<String>,
    pub market_group_id: Option<String>,
    pub partner_references: Vec<String>,
    pub integration_test_notification: bool,
    pub notification_communication_test: bool,
    /// Entry-level optional fields that were wrong (SPEC §2.2), copied to each timeslot.
    pub warnings: Vec<String>,
}

/// Leap's documented range for `energy_kw` and `nomination_kw` (SPEC §1).
const KW_RANGE: std::ops::RangeInclusive<f64> = 0.01..=100_000.0;

pub fn parse_timeslot(ctx: &EntryContext, raw: &Value) -> Result<Timeslot, RejectedTimeslot> {
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
    let reject = |reason: String| RejectedTimeslot {
        kind: ctx.kind,
        event_id: event_id.clone(),
        meter_ids: ctx.meter_ids.clone(),
        reason,
        raw: raw.clone(),
        cancels,
    };
    let obj = raw
        .as_object()
        .ok_or_else(|| reject("timeslot is not a JSON object".into()))?;
    let Some(event_id) = event_id.clone() else {
        return Err(reject(format!("missing {id_field}")));
    };
    if ctx.kind == Kind::Meter && ctx.meter_ids.is_empty() {
        return Err(reject("its meter dispatch has no meter_id".into()));
    }
    fields(ctx, obj, event_id).map_err(reject)
}

fn fields(
    ctx: &EntryContext,
    obj: &Map<String, Value>,
    event_id: String,
) -> Result<Timeslot, String> {
    let start_time = time(obj, "start_time")?;
    let end_time = time(obj, "end_time")?;
    if end_time <= start_time {
        return Err(format!(
            "end_time {end_time} is not after start_time {start_time}"
        ));
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
    let nomination_kw = match obj.get("nomination_kw") {
        None | Some(Value::Null) => None,
        Some(v) => w.keep(kw(v, "nomination_kw").map(Some), None, "read as absent"),
    };
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
    fn keep<T>(&mut self, r: Result<T, String>, fallback: T, how: &str) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(format!("{e}; {how}"));
            fallback
        })
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

fn time(obj: &Map<String, Value>, field: &str) -> Result<DateTime<Utc>, String> {
    let s = obj
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing {field} (an RFC 3339 time)"))?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field} = {s:?} is not an RFC 3339 time: {e}"))
}

fn kw(v: &Value, field: &str) -> Result<f64, String> {
    let n = v
        .as_f64()
        .ok_or_else(|| format!("{field} = {v} is not a number"))?;
    if !KW_RANGE.contains(&n) {
        return Err(format!(
            "{field} = {n} is outside Leap's range 0.01–100000 kW"
        ));
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

fn opt_bool_field(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, String> {
    obj.get(field).map_or(Ok(None), |v| opt_bool(v, field))
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
