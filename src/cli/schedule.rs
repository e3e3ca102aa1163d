//! `leap-edge schedule`: per local meter, what will happen over the next hours — the same
//! pure plan the daemon follows, computed from the database (read-only).

use super::text::Zone;
use super::{exit, table};
use crate::config::Config;
use crate::model::{Command, ExecMode, Kind, Target};
use crate::plan::{self, Interval, PlanConfig, PlanInput};
use crate::store::overrides::SavedOverride;
use crate::store::{self, query};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub(crate) struct ScheduleArgs {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Start of the window (RFC 3339); default now.
    #[arg(long, value_parser = parse_time)]
    pub(crate) from: Option<DateTime<Utc>>,
    /// Length of the window in hours.
    #[arg(long, default_value_t = 48)]
    pub(crate) hours: i64,
    /// Only this Leap meter id.
    #[arg(long)]
    pub(crate) meter: Option<String>,
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-06-05T14:00:00Z: {e}"))
}

pub(super) fn run(config: &Config, args: &ScheduleArgs) -> anyhow::Result<u8> {
    if let Some(code) = super::unknown_meter(config, args.meter.as_deref()) {
        return Ok(code);
    }
    if !(1..=24 * 31).contains(&args.hours) {
        eprintln!("leap-edge: --hours must be between 1 and 744");
        return Ok(exit::USAGE);
    }
    let conn = store::open_gateway_read_only(&config.storage.path)?;
    let from = args.from.unwrap_or_else(Utc::now);
    let to = from + Duration::hours(args.hours);
    let slots = query::timeslots_ending_after(&conn, from)?;
    // A manual override in force displaces what the plan shows (dispatch audits Leap's
    // as `overridden`): said above the meter's table.
    let overrides = store::overrides::active(&conn, Utc::now())?;
    let pc = PlanConfig::from_config(config);
    let plan = plan::plan(&PlanInput {
        timeslots: &slots,
        config: &pc,
        from,
        to,
    });
    if args.json {
        print_json(config, args.meter.as_deref(), &plan, &overrides)?;
    } else {
        print_text(config, args.meter.as_deref(), &plan, &overrides);
    }
    Ok(exit::OK)
}

/// The configured meters `--meter` selects (all without it).
fn selected<'a>(
    config: &'a Config,
    meter: Option<&'a str>,
) -> impl Iterator<Item = &'a crate::config::MeterConfig> {
    config
        .meters
        .iter()
        .filter(move |m| meter.is_none_or(|x| x.eq_ignore_ascii_case(&m.id)))
}

/// The saved manual override of a meter that is still in force at the window's start.
fn override_of<'a>(
    overrides: &'a [SavedOverride],
    meter_id: &str,
    from: DateTime<Utc>,
) -> Option<&'a SavedOverride> {
    overrides
        .iter()
        .find(|o| o.meter_id.eq_ignore_ascii_case(meter_id) && o.until > from)
}

fn override_text(o: &SavedOverride) -> String {
    let kw = o.kw.map_or(String::new(), |k| format!(" {k} kW"));
    format!(
        "MANUAL OVERRIDE {}{kw} in force now, until {}: until then the battery follows it, \
         not the rows below (Leap's dispatches are audited as overridden); `leap-edge override \
         clear` ends it",
        o.action,
        Zone::Utc.time(o.until)
    )
}

fn print_json(
    config: &Config,
    meter: Option<&str>,
    plan: &plan::Plan,
    overrides: &[SavedOverride],
) -> anyhow::Result<()> {
    let (from, to) = (plan.from, plan.to);
    let meters: Vec<Value> = selected(config, meter)
        .map(|m| {
            let ivs = plan.meters.get(&m.id).map(Vec::as_slice).unwrap_or(&[]);
            let manual = override_of(overrides, &m.id, from).map(
                |o| json!({"action": o.action, "kw": o.kw, "until": crate::textfmt::ts(o.until)}),
            );
            json!({"meter_id": m.id, "name": m.name, "device": m.device,
                   "manual_override": manual,
                   "intervals": ivs.iter().map(interval_json).collect::<Vec<_>>()})
        })
        .collect();
    let doc = json!({"from": crate::textfmt::ts(from), "to": crate::textfmt::ts(to), "meters": meters, "excluded": plan.excluded});
    crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn print_text(
    config: &Config,
    meter: Option<&str>,
    plan: &plan::Plan,
    overrides: &[SavedOverride],
) {
    let (from, to) = (plan.from, plan.to);
    crate::outln!("Schedule {} → {}", Zone::Utc.time(from), Zone::Utc.time(to));
    for m in selected(config, meter) {
        let label = m
            .name
            .as_deref()
            .map_or(String::new(), |n| format!(" ({n})"));
        crate::outln!("\nMeter {}{label}, device {}", m.id, m.device);
        if let Some(o) = override_of(overrides, &m.id, from) {
            crate::outln!("{}", override_text(o));
        }
        print_meter(
            plan.meters.get(&m.id).map(Vec::as_slice).unwrap_or(&[]),
            from,
            to,
        );
    }
    if !plan.excluded.is_empty() {
        crate::outln!("\nNot dispatched:");
        let rows: Vec<Vec<String>> = plan
            .excluded
            .iter()
            .filter(|e| !matches!(e.reason, plan::ExcludeReason::Ended))
            .map(|e| {
                vec![
                    e.event_id.clone(),
                    e.kind.as_str().into(),
                    e.meter_id.clone().unwrap_or_default(),
                    e.reason.to_string(),
                ]
            })
            .collect();
        table::print(&["EVENT", "KIND", "METER", "WHY"], &rows);
    }
}

fn target_text(c: &Command) -> String {
    c.target.to_string()
}

fn interval_json(iv: &Interval) -> Value {
    let c = &iv.command;
    let mut v = json!({
        "start_time": crate::textfmt::ts(iv.start), "end_time": crate::textfmt::ts(iv.end),
        "mode": c.mode, "kind": c.kind, "performance_compensation_cap": c.cap.as_str(),
        "target_kw": match c.target { Target::Kw(k) => json!(k), _ => Value::Null },
        "target": target_text(c), "limit_kw": c.limit_kw, "export_allowed_kw": c.export_allowed_kw,
        "import_margin_kw": c.import_margin_kw, "strategy": c.strategy, "priority": c.priority,
        "programs": c.programs, "reason": c.reason,
    });
    let id_key = if c.kind == Kind::Meter {
        "meter_event_id"
    } else {
        "market_group_event_id"
    };
    v[id_key] = json!(c.event_id);
    v
}

/// Intervals with the normal-operation gaps between them, and what happens at each edge.
fn print_meter(ivs: &[Interval], from: DateTime<Utc>, to: DateTime<Utc>) {
    let mut rows = Vec::new();
    let mut cursor = from;
    for iv in ivs {
        if iv.start > cursor {
            rows.push(vec![
                Zone::Utc.time(cursor),
                Zone::Utc.time(iv.start),
                "normal".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "the device's own operation".into(),
            ]);
        }
        let c = &iv.command;
        let mode = if c.mode == ExecMode::DryRun {
            "dry-run (nothing written)"
        } else {
            "dispatch"
        };
        rows.push(vec![
            Zone::Utc.time(iv.start),
            Zone::Utc.time(iv.end),
            mode.into(),
            c.event_id.clone(),
            c.cap.as_str().into(),
            target_text(c),
            c.reason.clone(),
        ]);
        cursor = iv.end;
    }
    if cursor < to {
        rows.push(vec![
            Zone::Utc.time(cursor),
            Zone::Utc.time(to),
            "normal".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "the device's own operation".into(),
        ]);
    }
    table::print(
        &["FROM", "UNTIL", "WHAT", "EVENT", "CAP", "TARGET", "WHY"],
        &rows,
    );
}
