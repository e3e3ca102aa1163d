//! Leap's load CSV (LEAP-API.md, `POST /v1.1/interval-data?schema=load`): complete
//! intervals only (a gap is left out, never sent as zero), all three energy columns given
//! and consistent (net = consumed − generated, computed from the rounded values).

use super::db::Interval;
use super::recorder::INTERVAL_SECS;
use chrono::{DateTime, Utc};

pub(crate) const HEADER: &str = "meter_id,interval_start_time_utc,interval_end_time_utc,energy_net_kwh,\
energy_consumed_kwh,energy_generated_kwh,final,region";

/// Whole watt-hours (Leap's columns are kWh with three decimals).
fn wh(x: f64) -> i64 {
    x.round() as i64
}

fn kwh(wh: i64) -> String {
    let sign = if wh < 0 { "-" } else { "" };
    format!("{sign}{}.{:03}", wh.abs() / 1000, wh.abs() % 1000)
}

pub(crate) fn utc(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One CSV line for a complete interval; `None` for a gap or an interval still open.
pub(crate) fn line(i: &Interval, region: &str) -> Option<String> {
    let e = i.energy.filter(|_| !i.open)?;
    let (cons, generated) = (wh(e.import_wh), wh(e.export_wh));
    Some(format!(
        "{},{},{},{},{},{},true,{}",
        i.meter_id,
        utc(i.start),
        utc(i.start + INTERVAL_SECS),
        kwh(cons - generated),
        kwh(cons),
        kwh(generated),
        region
    ))
}

/// The whole file: header, then one line per complete interval.
pub(crate) fn render(intervals: &[Interval], region: &str) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for l in intervals.iter().filter_map(|i| line(i, region)) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intervals::recorder::{Energy, Source};

    #[test]
    fn net_is_consumed_minus_generated_after_rounding() {
        let i = Interval {
            meter_id: "m1".into(),
            start: 1_795_910_400,
            energy: Some(Energy {
                import_wh: 1234.6,
                export_wh: 2000.4,
                source: Source::Meter,
            }),
            battery_wh: 0.0,
            covered_ms: 900_000,
            battery_ms: 900_000,
            export_ms: 0,
            min_soc_pct: None,
            open: false,
        };
        assert_eq!(
            line(&i, "CAISO").unwrap(),
            "m1,2026-11-29T00:00:00Z,2026-11-29T00:15:00Z,-0.765,1.235,2.000,true,CAISO"
        );
        assert_eq!(
            line(
                &Interval {
                    energy: None,
                    ..i.clone()
                },
                ""
            ),
            None
        );
        assert_eq!(line(&Interval { open: true, ..i }, ""), None);
    }
}
