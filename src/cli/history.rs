//! `leap-edge history`: the audit log — every command applied, released or only
//! "would apply" (dry-run), with its lateness and outcome.

use super::exit;
use super::schedule::parse_time;
use super::text::{self, Zone};
use crate::config::Config;
use crate::store::{self, audit};
use chrono::{DateTime, Utc};

#[derive(clap::Args, Debug)]
pub(crate) struct HistoryArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Only this Leap meter id.
    #[arg(long)]
    pub(crate) meter: Option<String>,
    /// Only this event id (meter_event_id or market_group_event_id).
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only entries before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<DateTime<Utc>>,
    /// Most recent N entries (at least 1).
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub(crate) limit: usize,
    /// Keep running and print new entries as they are written (like `journalctl -f`).
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// Times in local time (honours TZ) instead of UTC.
    #[arg(long)]
    pub(crate) local: bool,
}

pub(super) fn run(config: &Config, args: &HistoryArgs) -> anyhow::Result<u8> {
    super::note_unconfigured_meter(config, args.meter.as_deref());
    let conn = store::open_gateway_read_only(&config.storage.path)?;
    let filter = audit::AuditFilter {
        meter: args.meter.clone(),
        event: args.event.clone(),
        since: args.since,
        until: args.until,
        limit: Some(args.limit),
        after_id: None,
    };
    // Following goes on from the newest entry of all, not of the filter (with nothing
    // matching it must not replay old entries as new), read before the first query so an
    // entry written in between is not skipped.
    let newest: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))?;
    let rows = audit::query(&conn, &filter)?;
    let zone = Zone::from_flag(args.local);
    if args.json && !args.follow {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"history": rows}))?
        );
        return Ok(exit::OK);
    }
    if !args.json {
        if rows.is_empty() && !args.follow {
            crate::outln!("No commands recorded.");
            return Ok(exit::OK);
        }
        let table_rows: Vec<Vec<String>> = rows.iter().map(|r| row(r, zone)).collect();
        for line in super::status_view::table_lines(HEADERS, &table_rows) {
            crate::outln!("{line}");
        }
    } else {
        for r in &rows {
            crate::outln!("{}", serde_json::to_string(r)?);
        }
    }
    if !args.follow {
        return Ok(exit::OK);
    }
    drop(conn);
    let last = rows.last().map_or(newest, |r| r.id.max(newest));
    follow(config, filter, last, args.json, zone)
}

/// SPEC §3: the daemon writes, the CLI only reads; poll a read-only connection, a new one
/// each time: one opened while the daemon was stopped may read the file as immutable (no
/// WAL index it may create), and would never see what the daemon writes once it starts.
fn follow(
    config: &Config,
    mut filter: audit::AuditFilter,
    mut last: i64,
    json: bool,
    zone: Zone,
) -> anyhow::Result<u8> {
    filter.since = None;
    // Everything written since: `--limit` sized the table, not what a poll may show.
    filter.limit = None;
    let mut said: Option<String> = None;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        filter.after_id = Some(last);
        let new = match store::open_gateway_read_only(&config.storage.path)
            .and_then(|c| audit::query(&c, &filter))
        {
            Ok(new) => new,
            // A database being migrated or replaced by a starting daemon: say so once, and
            // go on following.
            Err(e) => {
                let e = e.to_string();
                if said.as_ref() != Some(&e) {
                    eprintln!(
                        "leap-edge: cannot read the database now ({}); still following",
                        super::text::clean(&e)
                    );
                    said = Some(e);
                }
                continue;
            }
        };
        said = None;
        for r in &new {
            if json {
                crate::outln!("{}", serde_json::to_string(r)?);
            } else {
                let cells = super::status_view::table_lines(HEADERS, &[row(r, zone)]);
                crate::outln!("{}", cells.last().map_or("", String::as_str));
            }
            last = last.max(r.id);
        }
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: give a number of entries, 1 or more")),
    }
}

const HEADERS: &[&str] = &[
    "AT", "METER", "ACTION", "EVENT", "CAP", "TARGET", "LATE", "OUTCOME", "DETAIL",
];

fn row(r: &audit::AuditRow, zone: Zone) -> Vec<String> {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![
        zone.text(&r.at),
        r.meter_id.clone(),
        r.action.clone(),
        o(&r.event_id),
        o(&r.performance_compensation_cap),
        o(&r.target),
        r.lateness_ms.map_or("-".into(), text::millis),
        if r.outcome == "ok" {
            "ok".into()
        } else {
            format!("error: {}", o(&r.error))
        },
        o(&r.detail),
    ]
}
