//! `leap-edge report`: per ended event and local meter, what the battery delivered against
//! the award per 15-minute interval, with a one-line verdict (issue 14 point 4).

use super::{exit, table};
use crate::config::Config;
use crate::intervals::gather;
use crate::intervals::report::EventReport;
use crate::store;

#[derive(clap::Args, Debug)]
pub(crate) struct ReportArgs {
    /// Only this event (`meter_event_id` or `market_group_event_id`).
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Print the reports as one JSON document.
    #[arg(long)]
    pub(crate) json: bool,
    /// Draw the event (the one given by --event, else the latest ended) as an SVG chart.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<std::path::PathBuf>,
}

pub(super) fn run(config: &Config, args: &ReportArgs) -> anyhow::Result<u8> {
    let conn = store::open_gateway_read_only(&config.storage.path)?;
    let reports = gather::reports(&conn, config, args.event.as_deref(), chrono::Utc::now())?;
    if let Some(path) = &args.svg {
        let Some(r) = reports.iter().max_by_key(|r| r.end_time) else {
            let which = args.event.as_deref().map_or(String::new(), |e| {
                format!(" with id {}", super::text::clean(e))
            });
            eprintln!(
                "leap-edge: no ended event{which} for the configured meters to draw (an event is drawn once it has ended; see `leap-edge events`)"
            );
            return Ok(exit::FAILURE);
        };
        std::fs::write(path, crate::intervals::svg::render(r))
            .map_err(|e| anyhow::anyhow!("{}: cannot write the chart: {e}", path.display()))?;
        crate::outln!(
            "{}: event {} meter {}",
            path.display(),
            clean(&r.event_id),
            r.meter_id
        );
        return Ok(exit::OK);
    }
    // An asked-for event that has no report is a failure in both forms (scripts use --json).
    let missing = args.event.is_some() && reports.is_empty();
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"reports": reports}))?
        );
        return Ok(if missing { exit::FAILURE } else { exit::OK });
    }
    if reports.is_empty() {
        crate::outln!(
            "No ended events{} for the configured meters.",
            args.event
                .as_ref()
                .map_or(String::new(), |e| format!(" with id {e}"))
        );
        return Ok(if missing { exit::FAILURE } else { exit::OK });
    }
    for (n, r) in reports.iter().enumerate() {
        if n > 0 {
            crate::outln!();
        }
        print_one(r);
    }
    Ok(exit::OK)
}

fn print_one(r: &EventReport) {
    crate::outln!(
        "Event {} ({}) meter {}  {} .. {}  programs {}",
        clean(&r.event_id),
        r.kind,
        r.meter_id,
        r.start_time.format("%Y-%m-%d %H:%M:%S"),
        r.end_time.format("%Y-%m-%d %H:%M:%S UTC"),
        clean(&r.programs.join(","))
    );
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
    let rows: Vec<Vec<String>> = r
        .intervals
        .iter()
        .map(|i| {
            vec![
                i.interval_start_time_utc.clone(),
                f(i.award_kwh),
                f(i.delivered_kwh),
                f(i.site_net_import_kwh),
                f(i.baseline_estimate_kwh),
                i.export_seconds.to_string(),
                i.min_soc_pct.map_or("-".into(), |s| format!("{s:.0}")),
                i.data.to_string(),
            ]
        })
        .collect();
    table::print(
        &[
            "INTERVAL (UTC)",
            "AWARD kWh",
            "DELIVERED kWh",
            "SITE NET kWh",
            "BASELINE* kWh",
            "EXPORT s",
            "MIN SoC %",
            "DATA",
        ],
        &rows,
    );
    crate::outln!(
        "* estimate: mean of the same intervals over {} previous non-event day(s); Leap computes the settlement baseline.",
        r.baseline_days
    );
    crate::outln!("{}", clean(&r.verdict));
}

/// Event ids and programs are Leap's text: they must not drive the terminal.
fn clean(s: &str) -> String {
    super::text::clean(s)
}
