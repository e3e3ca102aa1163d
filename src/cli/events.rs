//! `leap-edge events`: stored timeslots with status, Leap fields and bookkeeping.
//! Reads the database read-only, so it works beside a running daemon.

use super::text::{self, Zone, clean};
use super::{exit, table};
use crate::config::Config;
use crate::model::{Kind, StoredTimeslot};
use crate::store::{self, query};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub(crate) struct EventsArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Only timeslots that concern this Leap meter id.
    #[arg(long)]
    pub(crate) meter: Option<String>,
    /// Only this event id (meter_event_id or market_group_event_id); shows its revisions.
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Times in local time (honours TZ) instead of UTC.
    #[arg(long)]
    pub(crate) local: bool,
}

pub(super) fn run(config: &Config, args: &EventsArgs) -> anyhow::Result<u8> {
    if let Some(code) = super::unknown_meter(config, args.meter.as_deref()) {
        return Ok(code);
    }
    let conn = store::open_gateway_read_only(&config.storage.path)?;
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
        let zone = Zone::from_flag(args.local);
        if slots.is_empty() && rejected.is_empty() {
            crate::outln!("{}", nothing_found(args));
        } else {
            print_table(&slots, &rejected, zone);
        }
        if args.event.is_some() {
            print_revisions(&slots, zone);
        }
    }
    Ok(exit::OK)
}

/// Leap's field names, plus our bookkeeping.
pub(crate) fn timeslot_json(
    config: &Config,
    s: &StoredTimeslot,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let t = &s.timeslot;
    let status = s.status(now, !config.local_meters(t).is_empty());
    let mut v = json!({
        "kind": t.kind,
        "status": status.as_str(),
        "start_time": crate::textfmt::ts(t.start_time),
        "end_time": crate::textfmt::ts(t.end_time),
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
        "first_received": crate::textfmt::ts(s.first_received),
        "last_received": crate::textfmt::ts(s.last_received),
        // What was read differently from what Leap sent (a field of the wrong type read as
        // absent, a priority clamped): the reason behind a `-` in a column.
        "warnings": t.warnings,
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

/// `--event ID`: every revision Leap sent for it, oldest first.
fn print_revisions(slots: &[Value], zone: Zone) {
    for v in slots {
        let Some(revs) = v["revision_history"].as_array() else {
            continue;
        };
        crate::outln!(
            "\nRevisions of {} {}:",
            s(&v["kind"]),
            clean(&s(&event_id(v)))
        );
        let rows: Vec<Vec<String>> = revs
            .iter()
            .map(|r| {
                let t = &r["timeslot"];
                let note = if r["conflict"] == json!(true) {
                    "un-cancel ignored"
                } else {
                    ""
                };
                vec![
                    s(&r["revision"]),
                    zone.text(r["received_at"].as_str().unwrap_or("?")),
                    s(&r["notification_id"]),
                    time(&t["start_time"], zone),
                    time(&t["end_time"], zone),
                    energy(&t["energy_kw"]),
                    if t["cancelled"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                    note.into(),
                ]
            })
            .collect();
        table::print(
            &[
                "REV",
                "RECEIVED",
                "NOTIFICATION",
                "START",
                "END",
                "KW",
                "CANCELLED",
                "NOTE",
            ],
            &rows,
        );
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn event_id(v: &Value) -> Value {
    v.get("meter_event_id")
        .or(v.get("market_group_event_id"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn time(v: &Value, zone: Zone) -> String {
    v.as_str().map_or("-".into(), |t| zone.text(t))
}

fn energy(v: &Value) -> String {
    match v {
        Value::Null => "max".into(),
        // A stored revision keeps Leap's null and absent apart: {"kind": "kw", "kw": 4.0}.
        Value::Object(o) => o.get("kw").map_or("max".into(), energy),
        Value::Number(n) => n.as_f64().map_or("?".into(), |k| text::kw(Some(k))),
        other => s(other),
    }
}

/// Leap's test flags in one word: a communication test, an integration test, or real.
fn test_or_real(v: &Value) -> &'static str {
    if v["integration_test_notification"] == json!(true) {
        "integration test"
    } else if v["communication_test"] == json!(true)
        || v["notification_communication_test"] == json!(true)
    {
        "comm. test"
    } else {
        "real"
    }
}

const SLOT_HEADERS: [&str; 11] = [
    "STATUS",
    "EVENT",
    "TEST/REAL",
    "METER",
    "START",
    "END",
    "KW",
    "CAP",
    "PRIO",
    "PROGRAMS",
    "REV/DUP",
];

/// What an empty answer means, naming the filters, so a mistyped id does not read as an
/// empty database.
fn nothing_found(args: &EventsArgs) -> String {
    let meter = args
        .meter
        .as_deref()
        .map(|m| format!(" for meter {}", clean(m)))
        .unwrap_or_default();
    match args.event.as_deref() {
        Some(e) => format!(
            "No timeslot with event id {}{meter} is stored. The id is Leap's meter_event_id or \
             market_group_event_id; `leap-edge events` lists every stored timeslot.",
            clean(e)
        ),
        None => format!("No timeslots stored{meter}."),
    }
}

fn print_table(slots: &[Value], rejected: &[Value], zone: Zone) {
    let rows: Vec<Vec<String>> = slots.iter().map(|v| slot_row(v, zone)).collect();
    if rows.is_empty() {
        crate::outln!("No timeslots stored.");
    } else {
        table::print(&SLOT_HEADERS, &rows);
        print_warnings(slots);
    }
    if !rejected.is_empty() {
        print_rejected(rejected);
    }
}

/// One stored timeslot as a row under [`SLOT_HEADERS`].
fn slot_row(v: &Value, zone: Zone) -> Vec<String> {
    let id = &event_id(v);
    let meters = v.get("meter_id").cloned().unwrap_or_else(|| {
        json!(v["meter_ids"].as_array().map_or(0, Vec::len).to_string() + " meters")
    });
    let mut status = s(&v["status"]);
    if v["cancel_conflict"] == json!(true) {
        status.push_str(" (un-cancel ignored)");
    }
    if v["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
        status.push_str(" !");
    }
    vec![
        status,
        s(id),
        test_or_real(v).into(),
        s(&meters),
        time(&v["start_time"], zone),
        time(&v["end_time"], zone),
        energy(&v["energy_kw"]),
        s(&v["performance_compensation_cap"]),
        s(&v["priority"]),
        s(&v["programs"]),
        format!("{}/{}", s(&v["revisions"]), s(&v["duplicates"])),
    ]
}

/// The `!` rows: what of each timeslot was read differently from what Leap sent.
fn print_warnings(slots: &[Value]) {
    let mut first = true;
    for v in slots {
        let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) else {
            continue;
        };
        if first {
            crate::outln!(
                "\n! Read differently from what Leap sent (the raw notification keeps what it sent):"
            );
            first = false;
        }
        for line in w {
            crate::outln!("  {}: {}", clean(&s(&event_id(v))), clean(&s(line)));
        }
    }
}

fn print_rejected(rejected: &[Value]) {
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
