//! Notification-level parsing. The structure above the timeslots must be Leap's (wrong types
//! there mean the body is not a Leap notification: 400); anything wrong inside one timeslot
//! only rejects that timeslot (SPEC §2.2).

use super::timeslot::{EntryContext, parse_timeslot};
use super::{NotificationError, ParsedNotification};
use crate::model::Kind;
use serde_json::{Map, Value};

pub fn parse_notification(body: &[u8]) -> Result<ParsedNotification, NotificationError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| NotificationError::NotJson(e.to_string()))?;
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
    let value: Value =
        serde_json::from_slice(body).map_err(|e| NotificationError::NotJson(e.to_string()))?;
    Ok(parse_value(&value, &|ts| {
        super::bounds::timeslot_problem(ts, limits, now)
    })?)
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
            let field = format!("{name}[{i}]");
            let entry = entry.as_object().ok_or(NotificationError::WrongType {
                field: field.clone(),
                expected: "an object",
            })?;
            let ctx = entry_context(kind, entry, &field, integration_test, communication_test)?;
            let slots = entry
                .get("timeslots")
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
                            kind: ts.kind,
                            event_id: Some(ts.event_id),
                            meter_ids: ts.meter_ids,
                            reason,
                            raw: raw.clone(),
                        }),
                    },
                    Err(rej) => out.rejected.push(rej),
                }
            }
        }
    }
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
    let opt_str = |f: &str| -> Result<Option<String>, NotificationError> {
        match entry.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong(f, "a string")),
        }
    };
    let str_list = |f: &str| -> Result<Vec<String>, NotificationError> {
        match entry.get(f) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or(wrong(f, "an array of strings"))
                })
                .collect(),
            Some(_) => Err(wrong(f, "an array of strings")),
        }
    };
    let (meter_ids, group_id, refs) = match kind {
        Kind::Meter => {
            let meter = opt_str("meter_id")?;
            let refs = opt_str("partner_reference")?.into_iter().collect();
            (meter.into_iter().collect(), None, refs)
        }
        Kind::Group => (
            str_list("meter_ids")?,
            opt_str("market_group_id")?,
            str_list("partner_references")?,
        ),
    };
    Ok(EntryContext {
        kind,
        meter_ids,
        market_group_id: group_id,
        partner_references: refs,
        integration_test_notification: integration_test,
        notification_communication_test: communication_test,
    })
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
