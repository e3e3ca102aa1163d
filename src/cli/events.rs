//! `leap-edge events`: stored timeslots with status, Leap fields and bookkeeping.
//! Reads the database read-only, so it works beside a running daemon.

use super::{exit, table};
use crate::config::Config;
use crate::model::{Kind, StoredTimeslot};
use crate::store::{self, query};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only timeslots that concern this Leap meter id.
    #[arg(long)]
    pub meter: Option<String>,
    /// Only this event id (meter_event_id or market_group_event_id); shows its revisions.
    #[arg(long)]
    pub event: Option<String>,
}

pub fn run(config: &Config, args: &EventsArgs) -> anyhow::Result<u8> {
    let conn = store::open_read_only(&config.storage.path)?;
    let now = chrono::Utc::now();
    let keep = |kind_meters: &[String], event: Option<&str>| {
        args.meter
            .as_ref()
            .is_none_or(|m| kind_meters.iter().any(|x| x.eq_ignore_ascii_case(m)))
            && args
                .event
                .as_ref()
                .is_none_or(|e| event == Some(e.as_str()))
    };
    let mut slots = Vec::new();
    for s in query::all_timeslots(&conn)? {
        if keep(&s.timeslot.meter_ids, Some(&s.timeslot.event_id)) {
            let mut v = timeslot_json(config, &s, now);
            if args.event.is_some() {
                v["revision_history"] = serde_json::to_value(query::revisions(
                    &conn,
                    s.timeslot.kind,
                    &s.timeslot.event_id,
                )?)?;
            }
            slots.push(v);
        }
    }
    let rejected: Vec<Value> = query::rejected(&conn)?
        .into_iter()
        .filter(|r| keep(&r.meter_ids, r.event_id.as_deref()))
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["status"] = json!("rejected");
            v
        })
        .collect();
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"timeslots": slots, "rejected": rejected}))?
        );
    } else {
        print_table(&slots, &rejected);
    }
    Ok(exit::OK)
}

/// Leap's field names, plus our bookkeeping.
pub fn timeslot_json(
    config: &Config,
    s: &StoredTimeslot,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let t = &s.timeslot;
    let status = s.status(now, !config.local_meters(t).is_empty());
    let mut v = json!({
        "kind": t.kind,
        "status": status.as_str(),
        "start_time": store::ts(t.start_time),
        "end_time": store::ts(t.end_time),
        "cancelled": s.is_cancelled(),
        "energy_kw": t.energy_kw.to_json(),
        "energy_kw_absent": matches!(t.energy_kw, crate::model::EnergyKw::Absent),
        "nomination_kw": t.nomination_kw,
        "performance_compensation_cap": t.performance_compensation_cap,
        "priority": t.priority,
        "is_voluntary": t.is_voluntary,
        "dispatch_event_types": t.dispatch_event_types,
        "programs": t.programs,
        "communication_test": t.communication_test,
        "integration_test_notification": t.integration_test_notification,
        "notification_communication_test": t.notification_communication_test,
        "revisions": s.revisions,
        "duplicates": s.duplicates,
        "cancel_conflict": s.conflict,
        "first_received": store::ts(s.first_received),
        "last_received": store::ts(s.last_received),
    });
    match t.kind {
        Kind::Meter => {
            v["meter_event_id"] = json!(t.event_id);
            v["meter_id"] = json!(t.meter_ids.first());
            v["partner_reference"] = json!(t.partner_references.first());
        }
        Kind::Group => {
            v["market_group_event_id"] = json!(t.event_id);
            v["market_group_id"] = json!(t.market_group_id);
            v["meter_ids"] = json!(t.meter_ids);
            v["partner_references"] = json!(t.partner_references);
        }
    }
    v
}

fn print_table(slots: &[Value], rejected: &[Value]) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = slots
        .iter()
        .map(|v| {
            let id = v
                .get("meter_event_id")
                .or(v.get("market_group_event_id"))
                .unwrap_or(&Value::Null);
            let meters = v.get("meter_id").cloned().unwrap_or_else(|| {
                json!(v["meter_ids"].as_array().map_or(0, Vec::len).to_string() + " meters")
            });
            let energy = if v["energy_kw"].is_null() {
                "max".to_string()
            } else {
                s(&v["energy_kw"])
            };
            let mut status = s(&v["status"]);
            if v["cancel_conflict"] == json!(true) {
                status.push_str(" (un-cancel ignored)");
            }
            vec![
                status,
                s(id),
                s(&meters),
                s(&v["start_time"]),
                s(&v["end_time"]),
                energy,
                s(&v["performance_compensation_cap"]),
                s(&v["priority"]),
                v["programs"]
                    .as_array()
                    .map(|p| p.iter().map(&s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                format!("{}/{}", s(&v["revisions"]), s(&v["duplicates"])),
            ]
        })
        .collect();
    if rows.is_empty() {
        crate::outln!("No timeslots stored.");
    } else {
        table::print(
            &[
                "STATUS", "EVENT", "METER", "START", "END", "KW", "CAP", "PRIO", "PROGRAMS",
                "REV/DUP",
            ],
            &rows,
        );
    }
    if !rejected.is_empty() {
        crate::outln!("\nRejected timeslots (stored, never dispatched):");
        let rows: Vec<Vec<String>> = rejected
            .iter()
            .map(|r| {
                vec![
                    s(&r["event_id"]),
                    s(&r["kind"]),
                    s(&r["reason"]),
                    s(&r["times_seen"]),
                ]
            })
            .collect();
        table::print(&["EVENT", "KIND", "REASON", "SEEN"], &rows);
    }
}
