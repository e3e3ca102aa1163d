//! Issue 10.5: limits on what one notification may make the gateway store, each a key of
//! `[limits]`. Counts are taken on the JSON before any timeslot is built, so an oversized
//! notification costs its parse and nothing more; a timeslot longer or further ahead than
//! Leap's programs ever are is rejected with its reason (SPEC §2.2: the rest stands).

use super::NotificationError;
use crate::config::LimitsConfig;
use crate::model::Timeslot;
use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundedError {
    #[error(transparent)]
    Invalid(#[from] NotificationError),
    /// → 413, nothing stored.
    #[error(
        "the notification holds {found} {what}, over the limit of {limit} (limits.{key}); nothing was stored"
    )]
    OverLimit {
        what: &'static str,
        key: &'static str,
        found: usize,
        limit: usize,
    },
}

/// Meter ids and timeslots listed in the whole notification, against the limits.
pub fn check_counts(value: &Value, limits: &LimitsConfig) -> Result<(), BoundedError> {
    let (mut meter_ids, mut timeslots) = (0usize, 0usize);
    for key in ["meter_dispatches", "group_dispatches"] {
        let Some(entries) = value.get(key).and_then(Value::as_array) else {
            continue;
        };
        for entry in entries {
            let ids = match (entry.get("meter_ids"), entry.get("meter_id")) {
                (Some(Value::Array(ids)), _) => ids.len(),
                (_, Some(Value::String(_))) => 1,
                _ => 0,
            };
            let slots = entry
                .get("timeslots")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            // Every timeslot is stored with its entry's meter ids: that product is what a
            // notification costs in the database, however few bytes it was sent in.
            meter_ids = meter_ids.saturating_add(ids.saturating_mul(slots.max(1)));
            timeslots += slots;
        }
    }
    let over = |what, key, found, limit| {
        (found > limit).then_some(BoundedError::OverLimit {
            what,
            key,
            found,
            limit,
        })
    };
    if let Some(e) = over(
        "meter ids (each counted once per timeslot it is listed with)",
        "max_meter_ids",
        meter_ids,
        limits.max_meter_ids,
    ) {
        return Err(e);
    }
    if let Some(e) = over(
        "timeslots",
        "max_timeslots",
        timeslots,
        limits.max_timeslots,
    ) {
        return Err(e);
    }
    Ok(())
}

/// Why a well-formed timeslot is beyond the limits, if it is.
pub fn timeslot_problem(
    ts: &Timeslot,
    limits: &LimitsConfig,
    now: DateTime<Utc>,
) -> Option<String> {
    let hours = (ts.end_time - ts.start_time).num_minutes() as f64 / 60.0;
    if hours > f64::from(limits.max_timeslot_hours) {
        return Some(format!(
            "timeslot lasts {hours:.1} h, longer than limits.max_timeslot_hours = {}",
            limits.max_timeslot_hours
        ));
    }
    let ahead = chrono::Duration::days(i64::from(limits.max_start_ahead_days));
    if ts.start_time > now + ahead {
        return Some(format!(
            "start_time {} is more than limits.max_start_ahead_days = {} days ahead",
            ts.start_time, limits.max_start_ahead_days
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_every_dispatch_entry() {
        let limits = LimitsConfig {
            max_meter_ids: 3,
            max_timeslots: 2,
            ..LimitsConfig::default()
        };
        let ok = json!({"meter_dispatches": [{"meter_id": "a", "timeslots": [{}]}],
                        "group_dispatches": [{"meter_ids": ["b", "c"], "timeslots": [{}]}]});
        // Two ids in each of two timeslots are four stored references.
        let product =
            json!({"group_dispatches": [{"meter_ids": ["b", "c"], "timeslots": [{}, {}]}]});
        assert!(check_counts(&product, &limits).is_err());
        assert_eq!(check_counts(&ok, &limits), Ok(()));
        let ids =
            json!({"group_dispatches": [{"meter_ids": ["a", "b"]}, {"meter_ids": ["c", "d"]}]});
        let e = check_counts(&ids, &limits).unwrap_err().to_string();
        assert!(
            e.contains("holds 4 meter ids") && e.contains("limits.max_meter_ids"),
            "{e}"
        );
        let slots = json!({"meter_dispatches": [{"meter_id": "a", "timeslots": [{}, {}, {}]}]});
        let e = check_counts(&slots, &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_timeslots"), "{e}");
    }
}
