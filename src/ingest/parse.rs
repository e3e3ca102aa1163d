//! Notification-level parsing. The structure above the timeslots must be Leap's (wrong types
//! there mean the body is not a Leap notification: 400); anything wrong inside one timeslot
//! only rejects that timeslot (SPEC §2.2).

use super::timeslot::{EntryContext, parse_timeslot};
use super::{NotificationError, ParsedNotification};
use crate::model::{Kind, Timeslot};
use serde_json::{Map, Value};
use std::collections::HashMap;

pub fn parse_notification(body: &[u8]) -> Result<ParsedNotification, NotificationError> {
    let value: Value = serde_json::from_slice(body).map_err(not_json)?;
    parse_value(&value, &|_| None)
}

/// [`parse_notification`] within the configured limits (issue 10.5): counts are checked on
/// the JSON before any timeslot is built, and each timeslot's duration and start.
pub fn parse_bounded(
    body: &[u8],
    limits: &crate::config::LimitsConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ParsedNotification, super::BoundedError> {
    super::bounds::check_counts(body, limits)?;
    Ok(parse_limited(body, limits, now)?)
}

/// [`parse_bounded`] without the count check: for the pages the polling backstop asked Leap
/// for, whose size Leap sets. Each timeslot still meets the same duration and start limits
/// as a push, so a poll never stores what a push would have rejected.
pub fn parse_limited(
    body: &[u8],
    limits: &crate::config::LimitsConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ParsedNotification, NotificationError> {
    let value: Value = serde_json::from_slice(body).map_err(not_json)?;
    parse_value(&value, &|ts| {
        super::bounds::timeslot_problem(ts, limits, now)
    })
}

/// Why the body did not read. A number beyond a 64-bit float (`1e400`) is valid JSON that
/// this parser cannot hold: said as such, with where it is, not as "not JSON".
fn not_json(e: serde_json::Error) -> NotificationError {
    let text = e.to_string();
    if text.starts_with("number out of range") {
        return NotificationError::NumberTooLarge {
            line: e.line(),
            column: e.column(),
        };
    }
    NotificationError::NotJson(text)
}

/// `check` may reject a well-formed timeslot with a reason (a configured limit).
fn parse_value(
    value: &Value,
    check: &dyn Fn(&crate::model::Timeslot) -> Option<String>,
) -> Result<ParsedNotification, NotificationError> {
    let obj = value.as_object().ok_or(NotificationError::NotObject)?;
    let integration_test = opt_bool(obj, "integration_test_notification")?;
    let communication_test = opt_bool(obj, "communication_test")?;
    let meter = opt_array(obj, "meter_dispatches")?;
    let group = opt_array(obj, "group_dispatches")?;
    if meter.is_none() && group.is_none() {
        return Err(NotificationError::NoDispatches);
    }
    let mut out = ParsedNotification {
        integration_test_notification: integration_test,
        communication_test,
        timeslots: Vec::new(),
        rejected: Vec::new(),
    };
    for (kind, entries, name) in [
        (Kind::Meter, meter, "meter_dispatches"),
        (Kind::Group, group, "group_dispatches"),
    ] {
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            // SPEC §2.2: `null` reads as absent here as for every other field (a sender
            // that writes empty lists as null); refusing would lose the other entries.
            if entry.is_null() {
                continue;
            }
            let field = format!("{name}[{i}]");
            let entry = entry.as_object().ok_or(NotificationError::WrongType {
                field: field.clone(),
                expected: "an object",
            })?;
            let ctx = entry_context(kind, entry, &field, integration_test, communication_test)?;
            let slots = entry
                .get("timeslots")
                .filter(|v| !v.is_null())
                .map(|v| {
                    v.as_array().ok_or(NotificationError::WrongType {
                        field: format!("{field}.timeslots"),
                        expected: "an array",
                    })
                })
                .transpose()?;
            for raw in slots.into_iter().flatten() {
                match parse_timeslot(&ctx, raw) {
                    Ok(ts) => match check(&ts) {
                        None => out.timeslots.push(ts),
                        Some(reason) => out.rejected.push(super::RejectedTimeslot {
                            // SPEC §2.13: over a bound, a cancellation still cancels.
                            cancels: ts.cancelled,
                            kind: ts.kind,
                            event_id: Some(ts.event_id),
                            meter_ids: ts.meter_ids,
                            reason,
                            code: super::RejectReason::OverLimit,
                            raw: raw.clone(),
                        }),
                    },
                    Err(rej) => out.rejected.push(rej),
                }
            }
        }
    }
    out.timeslots = last_occurrence_wins(out.timeslots);
    Ok(out)
}

fn entry_context(
    kind: Kind,
    entry: &Map<String, Value>,
    field: &str,
    integration_test: bool,
    communication_test: bool,
) -> Result<EntryContext, NotificationError> {
    let wrong = |f: &str, expected| NotificationError::WrongType {
        field: format!("{field}.{f}"),
        expected,
    };
    // Issue 9: only the meter ids are required here; a wrong optional field is a warning
    // on every timeslot of the entry, never a 400 for the whole notification.
    let mut warnings = Vec::new();
    let mut opt_str = |f: &str| -> Option<String> {
        match entry.get(f) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                let v = shown(v);
                warnings.push(format!("{field}.{f} = {v} is not a string; read as absent"));
                None
            }
        }
    };
    let (meter_ids, group_id, refs) = match kind {
        Kind::Meter => {
            let meter = match entry.get("meter_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(wrong("meter_id", "a string")),
            };
            let refs = opt_str("partner_reference").into_iter().collect();
            (meter.into_iter().collect(), None, refs)
        }
        Kind::Group => {
            let group = opt_str("market_group_id");
            let meters =
                str_list(entry, "meter_ids").ok_or(wrong("meter_ids", "an array of strings"))?;
            let refs = partner_references(entry, field, &mut warnings);
            (meters, group, refs)
        }
    };
    // SPEC §1: a group entry's `meter_ids` is required. Absent or null, its timeslots are
    // rejected (a cancellation still cancels): read as an empty list, a revision of a
    // running group event would release its batteries with no word of why.
    let meters_missing = kind == Kind::Group && entry.get("meter_ids").is_none_or(Value::is_null);
    Ok(EntryContext {
        kind,
        meters_missing,
        meter_ids,
        market_group_id: group_id,
        partner_references: refs,
        integration_test_notification: integration_test,
        notification_communication_test: communication_test,
        warnings,
    })
}

/// A group entry's optional `partner_references`: what is readable of it, with a warning
/// for what is not.
fn partner_references(
    entry: &Map<String, Value>,
    field: &str,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    match entry.get("partner_references") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let refs: Vec<String> = items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if refs.len() != items.len() {
                warnings.push(format!(
                    "{field}.partner_references holds items that are not strings; left out"
                ));
            }
            refs
        }
        Some(v) => {
            warnings.push(format!(
                "{field}.partner_references = {} is not an array of strings; read as empty",
                shown(v)
            ));
            Vec::new()
        }
    }
}

/// A wrong entry value as a warning shows it: at most [`SHOWN_CHARS`] of it. Entry
/// warnings are copied into every timeslot of the entry, so a value shown whole (650 KB of
/// zeros in 2,000 timeslots) would cost what `bounds.rs` refuses for text.
pub(super) fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

const SHOWN_CHARS: usize = 120;

/// A required list of strings; None when it has the wrong type.
fn str_list(entry: &Map<String, Value>, f: &str) -> Option<Vec<String>> {
    match entry.get(f) {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => None,
    }
}

/// Issue 9: the same event id twice in one notification. The last occurrence wins (the
/// order Leap wrote them in is the only order there is), flagged; so a redelivery of the
/// notification stores the same content again and counts as duplicates. SPEC §2.4: a
/// cancellation is final even inside one notification, so when an earlier occurrence is
/// cancelled and the last is not, the last cancelled one goes first: the timeslot is
/// stored cancelled and the un-cancel after it is recorded as a conflict.
fn last_occurrence_wins(slots: Vec<Timeslot>) -> Vec<Timeslot> {
    let mut count: HashMap<(Kind, String), usize> = HashMap::new();
    let mut cancelled: HashMap<(Kind, String), Timeslot> = HashMap::new();
    for t in &slots {
        let key = (t.kind, t.event_id.clone());
        *count.entry(key.clone()).or_default() += 1;
        if t.cancelled {
            cancelled.insert(key, t.clone());
        }
    }
    let mut seen: HashMap<(Kind, String), usize> = HashMap::new();
    let mut out = Vec::new();
    for mut t in slots {
        let key = (t.kind, t.event_id.clone());
        let n = count[&key];
        let i = seen.entry(key.clone()).or_default();
        *i += 1;
        if *i < n {
            continue;
        }
        if n > 1 {
            let note = format!(
                "event id appears {n} times in this notification; the last occurrence is used"
            );
            if let (false, Some(mut c)) = (t.cancelled, cancelled.remove(&key)) {
                c.warnings.push(format!(
                    "event id appears {n} times in this notification; cancelled in one, so it stays cancelled (SPEC §2.4)"
                ));
                out.push(c);
            }
            t.warnings.push(note);
        }
        out.push(t);
    }
    out
}

fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<bool, NotificationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(NotificationError::WrongType {
            field: field.into(),
            expected: "true or false",
        }),
    }
}

fn opt_array<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Vec<Value>>, NotificationError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(NotificationError::WrongType {
            field: field.into(),
            expected: "an array",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A number too large for a float is named as such, with where it is.
    #[test]
    fn a_number_too_large_is_named_with_its_place() {
        let e = parse_notification(
            br#"{"meter_dispatches": [{"meter_id": "m", "timeslots": [{"energy_kw": 1e400}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("body is JSON, but the number at line 1 column")
                && e.contains("too large"),
            "{e}"
        );
    }

    /// A wrong entry value of 650 KB (numbers, which the copy bound in `bounds.rs` does not
    /// count) is shown in its warning cut short, not copied whole into every timeslot.
    #[test]
    fn a_long_wrong_entry_value_is_shown_cut_short() {
        let zeros = vec![0; 300_000];
        let slot = serde_json::json!({"meter_event_id": "e1", "start_time": "2030-06-05T00:00:00Z",
            "end_time": "2030-06-05T01:00:00Z", "energy_kw": 5.0});
        let body = serde_json::json!({"meter_dispatches": [
            {"meter_id": "m1", "partner_reference": zeros, "timeslots": [slot]}]});
        let n = parse_notification(body.to_string().as_bytes()).unwrap();
        let w = &n.timeslots[0].warnings[0];
        assert!(w.len() < 300, "{} bytes", w.len());
        assert!(
            w.contains("[0,0,0") && w.contains("… (600001 bytes)"),
            "{w}"
        );
    }

    /// A sender that writes empty lists as `null`: the other entries' timeslots still count.
    #[test]
    fn null_timeslots_and_null_entries_read_as_absent() {
        let body = serde_json::json!({"meter_dispatches": [
            {"meter_id": "m0", "timeslots": null},
            null,
            {"meter_id": "m1", "timeslots": [{
                "meter_event_id": "e1", "start_time": "2030-06-05T00:00:00Z",
                "end_time": "2030-06-05T01:00:00Z", "energy_kw": 5.0,
            }]},
        ]});
        let n = parse_notification(body.to_string().as_bytes()).unwrap();
        assert_eq!(n.timeslots.len(), 1);
        assert_eq!(n.timeslots[0].event_id, "e1");
        assert!(n.rejected.is_empty());
        // Not an object, and not null, is still not a Leap entry.
        let bad = serde_json::json!({"meter_dispatches": [5]});
        assert!(parse_notification(bad.to_string().as_bytes()).is_err());
    }
}
