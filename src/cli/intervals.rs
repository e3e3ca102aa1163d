//! `leap-edge intervals`: the 15-minute interval energy the gateway recorded per meter
//! (issue 14). `--csv` prints exactly Leap's load CSV (complete intervals only); the table
//! and `--json` also show gaps, so an analyst sees what will never be sent.

use super::schedule::parse_time;
use super::text::{Zone, clean};
use super::{exit, table};
use crate::config::Config;
use crate::intervals::{INTERVAL_SECS, Interval, Range, Source, csv, db, upload};
use crate::store;
use chrono::{DateTime, Utc};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct IntervalsArgs {
    #[command(subcommand)]
    pub(crate) command: Option<IntervalsCommand>,
    /// Intervals starting at or after this time (RFC 3339; default 24 hours before --to).
    #[arg(long, value_parser = parse_time)]
    pub(crate) from: Option<DateTime<Utc>>,
    /// Intervals starting before this time (RFC 3339; default now).
    #[arg(long, value_parser = parse_time)]
    pub(crate) to: Option<DateTime<Utc>>,
    /// One Leap meter id.
    #[arg(long)]
    pub(crate) meter: Option<String>,
    /// Leap's load CSV on stdout (header and complete intervals only).
    #[arg(long, conflicts_with = "json")]
    pub(crate) csv: bool,
    /// Print the intervals (gaps and the one still recording included) as one JSON document.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum IntervalsCommand {
    /// Uploads to Leap: job id, when, rows, Leap's status and the rows it refused.
    Uploads {
        /// Print the upload jobs and their refused rows as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(config: &Config, args: &IntervalsArgs) -> anyhow::Result<u8> {
    super::note_unconfigured_meter(config, args.meter.as_deref());
    let conn = store::open_gateway_read_only(&config.storage.path)?;
    if let Some(IntervalsCommand::Uploads { json }) = &args.command {
        return uploads(&conn, *json);
    }
    let range = match range(args, Utc::now()) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("leap-edge: {why}");
            return Ok(exit::USAGE);
        }
    };
    let rows = db::list(&conn, &range)?;
    if args.csv {
        crate::outln!(
            "{}",
            csv::render(&rows, &config.intervals.region).trim_end()
        );
        return Ok(exit::OK);
    }
    let rows = with_gaps(rows);
    if args.json {
        let list: Vec<_> = rows.iter().map(json).collect();
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"intervals": list}))?
        );
    } else if rows.is_empty() {
        crate::outln!("No intervals recorded in that range.");
    } else {
        print_table(&rows);
    }
    Ok(exit::OK)
}

/// The range asked for: by default the 24 hours before `--to` (now), all meters. An empty
/// or inverted range is refused: it would read as "no intervals recorded".
fn range(args: &IntervalsArgs, now: DateTime<Utc>) -> Result<Range, String> {
    let to = args.to.unwrap_or(now);
    let from = args.from.unwrap_or(to - chrono::Duration::hours(24));
    if from >= to {
        return Err(format!(
            "--from {} is not before --to {} (--to is now unless given): give a --from earlier than --to",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    Ok(Range {
        from: Some(from.timestamp()),
        to: Some(to.timestamp()),
        meter: args.meter.clone(),
    })
}

fn print_table(rows: &[Interval]) {
    let table_rows: Vec<Vec<String>> = rows.iter().map(table_row).collect();
    table::print(
        &[
            "METER",
            "START (UTC)",
            "CONSUMED kWh",
            "GENERATED kWh",
            "NET kWh",
            "SOURCE",
            "BATTERY kWh",
        ],
        &table_rows,
    );
}

fn table_row(i: &Interval) -> Vec<String> {
    let kwh = |wh: f64| format!("{:.3}", wh / 1000.0);
    let (cons, generated, net) = match i.energy {
        Some(e) => (
            kwh(e.import_wh),
            kwh(e.export_wh),
            kwh(e.import_wh - e.export_wh),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    vec![
        i.meter_id.clone(),
        csv::utc(i.start),
        cons,
        generated,
        net,
        state(i).into(),
        kwh(i.battery_wh),
    ]
}

fn state(i: &Interval) -> &'static str {
    match (i.open, i.energy.map(|e| e.source)) {
        (true, _) => "recording",
        (false, Some(Source::Meter)) => "meter",
        (false, Some(Source::Estimated)) => "estimated",
        (false, None) if i.covered_ms == 0 && i.battery_wh == 0.0 => "gap (no readings)",
        (false, None) => "gap (incomplete)",
    }
}

/// The stored intervals plus, per meter, a gap row for every quarter hour between its
/// first and last stored interval that has no row at all (the daemon or meter was down).
fn with_gaps(rows: Vec<Interval>) -> Vec<Interval> {
    let mut by_meter: std::collections::BTreeMap<String, Vec<Interval>> = Default::default();
    for r in rows {
        by_meter.entry(r.meter_id.clone()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (meter, list) in by_meter {
        let mut next: Option<i64> = None;
        for r in list {
            while let Some(n) = next.filter(|n| *n < r.start) {
                out.push(Interval {
                    meter_id: meter.clone(),
                    start: n,
                    energy: None,
                    battery_wh: 0.0,
                    covered_ms: 0,
                    battery_ms: 0,
                    export_ms: 0,
                    min_soc_pct: None,
                    open: false,
                });
                next = Some(n + INTERVAL_SECS);
            }
            next = Some(r.start + INTERVAL_SECS);
            out.push(r);
        }
    }
    out.sort_by(|a, b| (a.start, &a.meter_id).cmp(&(b.start, &b.meter_id)));
    out
}

fn json(i: &Interval) -> serde_json::Value {
    let kwh = |wh: f64| wh.round() / 1000.0;
    serde_json::json!({
        "meter_id": i.meter_id,
        "interval_start_time_utc": csv::utc(i.start),
        "interval_end_time_utc": csv::utc(i.start + INTERVAL_SECS),
        "energy_consumed_kwh": i.energy.map(|e| kwh(e.import_wh)),
        "energy_generated_kwh": i.energy.map(|e| kwh(e.export_wh)),
        "energy_net_kwh": i.energy.map(|e| kwh(e.import_wh - e.export_wh)),
        "source": state(i),
        "battery_discharged_kwh": kwh(i.battery_wh),
        "export_seconds": i.export_ms / 1000,
        "min_soc_pct": i.min_soc_pct,
    })
}

fn uploads(conn: &rusqlite::Connection, json: bool) -> anyhow::Result<u8> {
    let jobs = crate::intervals::upload::jobs(conn)?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"uploads": jobs}))?
        );
        return Ok(exit::OK);
    }
    if jobs.is_empty() {
        crate::outln!(
            "No interval data uploaded to Leap yet: the daily upload ([schedule] upload, by \
             default once a day between 02:15 and 02:44 UTC) needs [leap] api_key; an upload \
             that was tried and failed is listed here (and in `journalctl -u leap-edge`)."
        );
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                Zone::Utc.text(&j.uploaded_at),
                clean(&j.job_id),
                j.rows.to_string(),
                j.status.clone(),
                if j.status == upload::NOT_SENT || j.status == upload::ANSWER_LOST {
                    "-".into()
                } else {
                    j.errors.len().to_string()
                },
            ]
        })
        .collect();
    table::print(&["UPLOADED", "JOB", "ROWS", "STATUS", "FAILED ROWS"], &rows);
    for j in jobs.iter().filter(|j| !j.errors.is_empty()) {
        crate::outln!();
        if j.status == upload::NOT_SENT || j.status == upload::ANSWER_LOST {
            // Its rows go with the next upload.
            let what = if j.status == upload::NOT_SENT {
                "not sent"
            } else {
                "failed after sending (Leap may have it; its rows go again)"
            };
            crate::outln!(
                "Upload at {} {what}: {}",
                Zone::Utc.text(&j.uploaded_at),
                clean(&j.errors.join(" "))
            );
            continue;
        }
        crate::outln!("Job {}: rows Leap refused", clean(&j.job_id));
        for e in &j.errors {
            crate::outln!("  {}", clean(e));
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn args(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> IntervalsArgs {
        IntervalsArgs {
            command: None,
            from,
            to,
            meter: None,
            csv: false,
            json: false,
        }
    }

    /// `--to` alone is the day before it (it was from "24 h ago" to a time before that: an
    /// inverted range that printed "No intervals recorded"); an empty range is refused.
    #[test]
    fn the_range_follows_to_and_refuses_an_empty_one() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
        let r = range(&args(None, Some(to)), now).unwrap();
        assert_eq!(
            (r.from, r.to),
            (Some(to.timestamp() - 86_400), Some(to.timestamp()))
        );
        let r = range(&args(None, None), now).unwrap();
        assert_eq!(r.to, Some(now.timestamp()));
        let e = range(&args(Some(now), Some(to)), now).unwrap_err();
        assert!(
            e.contains("--from 2026-12-01T12:00:00Z is not before --to"),
            "{e}"
        );
    }
}
