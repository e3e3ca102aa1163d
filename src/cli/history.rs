//! `leap-edge history`: the audit log — every command applied, released or only
//! "would apply" (dry-run), with its lateness and outcome.

use super::schedule::parse_time;
use super::{exit, table};
use crate::config::Config;
use crate::store::{self, audit};
use chrono::{DateTime, Utc};

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub meter: Option<String>,
    #[arg(long)]
    pub event: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Most recent N entries.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

pub fn run(config: &Config, args: &HistoryArgs) -> anyhow::Result<u8> {
    let conn = store::open_read_only(&config.storage.path)?;
    let filter = audit::AuditFilter {
        meter: args.meter.clone(),
        event: args.event.clone(),
        since: args.since,
        until: args.until,
        limit: Some(args.limit),
    };
    let rows = audit::query(&conn, &filter)?;
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"history": rows}))?
        );
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        crate::outln!("No commands recorded.");
        return Ok(exit::OK);
    }
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.at.clone(),
                r.meter_id.clone(),
                r.action.clone(),
                o(&r.event_id),
                o(&r.performance_compensation_cap),
                o(&r.target),
                r.lateness_ms.map_or("-".into(), |l| format!("{l} ms")),
                if r.outcome == "ok" {
                    "ok".into()
                } else {
                    format!("error: {}", o(&r.error))
                },
                o(&r.detail),
            ]
        })
        .collect();
    table::print(
        &[
            "AT", "METER", "ACTION", "EVENT", "CAP", "TARGET", "LATE", "OUTCOME", "DETAIL",
        ],
        &table_rows,
    );
    Ok(exit::OK)
}
