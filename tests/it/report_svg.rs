//! Issue 14 point 5: the event chart renders. `rsvg-convert` (Debian's librsvg2-bin, which
//! `.ci/run` installs) turns the SVG into a PNG whose size must be the chart's.

use chrono::{TimeZone, Utc};
use leap_edge::intervals::report::{EventReport, IntervalReport};
use leap_edge::intervals::svg;

fn event() -> EventReport {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    let intervals = (0..6)
        .map(|i| IntervalReport {
            interval_start_time_utc: format!(
                "2026-11-20T{:02}:{:02}:00Z",
                16 + (45 + i * 15) / 60,
                (45 + i * 15) % 60
            ),
            award_kwh: (1..5).contains(&i).then_some(5.0),
            delivered_kwh: Some(if (1..5).contains(&i) { 4.95 } else { 0.0 }),
            site_net_import_kwh: Some(if (1..5).contains(&i) { 0.4 } else { 5.5 }),
            baseline_estimate_kwh: Some(5.4),
            export_seconds: 0,
            min_soc_pct: Some(90.0 - 10.0 * i as f64),
            data: "meter",
            partial: false,
        })
        .collect();
    EventReport {
        event_id: "ev-<svg>&1".into(),
        kind: "meter",
        meter_id: "dd21c76c-7126-4ef7-b0a6-f190fad300b2".into(),
        start_time: start,
        end_time: start + chrono::Duration::hours(1),
        programs: vec!["DRAM".into()],
        award_kw: Some(20.0),
        award_kwh: Some(20.0),
        delivered_kwh: 19.8,
        delivered_pct: Some(99.0),
        export_seconds: 0,
        min_soc_pct: Some(40.0),
        first_setpoint_lateness_ms: Some(3),
        dry_run: false,
        test_not_commanded: false,
        overlapping: vec![],
        gaps: 0,
        partial_intervals: 0,
        baseline_days: 10,
        intervals,
        verdict: "MET: event ev-<svg>&1 delivered 19.80 of 20.00 kWh awarded (99.0 %)".into(),
    }
}

#[test]
fn the_chart_has_every_series_and_escapes_text() {
    let s = svg::render(&event());
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    for name in [
        "award (kW)",
        "delivered (kW)",
        "site net import (kW)",
        "lowest SoC (%)",
    ] {
        assert!(s.contains(name), "{name}");
    }
    assert!(s.contains("ev-&lt;svg&gt;&amp;1") && !s.contains("ev-<svg>"));
    assert_eq!(s.matches("<path d=\"M").count(), 3, "three series drawn");
}

#[test]
#[ignore = "needs rsvg-convert (Debian librsvg2-bin)"]
fn the_chart_renders_to_a_png_of_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let (svg_path, png) = (dir.path().join("event.svg"), dir.path().join("event.png"));
    std::fs::write(&svg_path, svg::render(&event())).unwrap();
    let st = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg_path)
        .status()
        .expect("rsvg-convert runs");
    assert!(st.success());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let be = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(
        (be(16), be(20)),
        (svg::WIDTH, svg::HEIGHT),
        "IHDR width x height"
    );
    assert!(
        bytes.len() > 5_000,
        "a drawn chart, not a blank page: {} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("LEAP_EDGE_KEEP_PNG") {
        std::fs::copy(&png, keep).unwrap();
    }
}
