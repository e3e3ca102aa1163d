//! `report --svg FILE` (issue 14 point 5): one event drawn as a chart, hand-written SVG (no
//! plotting crate: a few lines of text keep the aarch64 binary inside its size budget and
//! add no dependency). Per 15-minute interval, as average kW: the award, what the battery
//! delivered and the site's net import (steps, left axis); the lowest SoC (right axis, %).

use super::report::EventReport;
use std::fmt::Write;

pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 400;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Average kW over a quarter hour from kWh.
fn kw(kwh: Option<f64>) -> Option<f64> {
    kwh.map(|e| e * 4.0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A series drawn as steps: legend name, colour, average kW per interval.
type Series = (&'static str, &'static str, Vec<Option<f64>>);

/// The plot area and its scales: `n` intervals across, `lo..hi` kW on the left axis,
/// 0–100 % SoC on the right.
struct Frame {
    n: usize,
    lo: f64,
    hi: f64,
    pw: f64,
    ph: f64,
}

impl Frame {
    fn new(n: usize, series: &[Series]) -> Frame {
        let values = series.iter().flat_map(|s| s.2.iter().flatten().copied());
        let (lo, hi) = values.fold((0.0f64, 1.0f64), |(l, h), v| (l.min(v), h.max(v)));
        Frame {
            n,
            lo,
            hi,
            pw: f64::from(WIDTH) - LEFT - RIGHT,
            ph: f64::from(HEIGHT) - TOP - BOTTOM,
        }
    }

    fn x(&self, i: usize) -> f64 {
        LEFT + self.pw * i as f64 / self.n as f64
    }

    fn y(&self, v: f64) -> f64 {
        TOP + self.ph * (self.hi - v) / (self.hi - self.lo)
    }

    fn ysoc(&self, v: f64) -> f64 {
        TOP + self.ph * (100.0 - v.clamp(0.0, 100.0)) / 100.0
    }
}

pub fn render(r: &EventReport) -> String {
    let series: [Series; 3] = [
        (
            "award",
            "#1f77b4",
            r.intervals.iter().map(|i| kw(i.award_kwh)).collect(),
        ),
        (
            "delivered",
            "#2ca02c",
            r.intervals.iter().map(|i| kw(i.delivered_kwh)).collect(),
        ),
        (
            "site net import",
            "#d62728",
            r.intervals
                .iter()
                .map(|i| kw(i.site_net_import_kwh))
                .collect(),
        ),
    ];
    let f = Frame::new(r.intervals.len().max(1), &series);
    let mut s = String::new();
    header(&mut s, r, &f);
    axes(&mut s, r, &f);
    for (k, (name, color, vals)) in series.iter().enumerate() {
        let mut d = String::new();
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                let _ = write!(d, "M{:.1} {:.1}H{:.1}", f.x(i), f.y(*v), f.x(i + 1));
            }
        }
        let dash = if k == 0 {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r##"<path d="{d}" fill="none" stroke="{color}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}" fill="{color}">{name} (kW)</text>"##,
            LEFT + 150.0 * k as f64,
            f64::from(HEIGHT) - 12.0
        );
    }
    soc(&mut s, r, &f);
    s
}

/// The opening tag, the title lines and the zero line.
fn header(s: &mut String, r: &EventReport, f: &Frame) {
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-size="14">{}</text>
<text x="{LEFT}" y="38" fill="#555">{}</text>
<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/>
"##,
        escape(&format!("Event {} · meter {}", r.event_id, r.meter_id)),
        escape(&r.verdict.chars().take(110).collect::<String>()),
        f.y(0.0),
        LEFT + f.pw,
        f.y(0.0),
    );
}

/// The kW (left) and SoC (right) axis labels, and each interval's start time below.
fn axes(s: &mut String, r: &EventReport, f: &Frame) {
    for k in 0..=4 {
        let v = f.lo + (f.hi - f.lo) * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{v:.1} kW</text><text x="{:.1}" y="{:.1}" fill="#9467bd">{} %</text>"##,
            LEFT - 6.0,
            f.y(v) + 4.0,
            LEFT + f.pw + 6.0,
            f.ysoc(f64::from(k) * 25.0) + 4.0,
            k * 25
        );
    }
    for (i, iv) in r.intervals.iter().enumerate() {
        let label = iv.interval_start_time_utc.get(11..16).unwrap_or("");
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">{label}</text>"##,
            f.x(i) + 2.0,
            TOP + f.ph + 16.0
        );
    }
}

/// The lowest SoC per interval: a dot at the interval's middle, joined by a line; then
/// the closing tag.
fn soc(s: &mut String, r: &EventReport, f: &Frame) {
    let soc: Vec<String> = r
        .intervals
        .iter()
        .enumerate()
        .filter_map(|(i, iv)| {
            iv.min_soc_pct
                .map(|v| format!("{:.1},{:.1}", (f.x(i) + f.x(i + 1)) / 2.0, f.ysoc(v)))
        })
        .collect();
    for p in &soc {
        let (cx, cy) = p.split_once(',').unwrap_or_default();
        let _ = writeln!(s, r##"<circle cx="{cx}" cy="{cy}" r="4" fill="#9467bd"/>"##);
    }
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#9467bd" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#9467bd">lowest SoC (%)</text>
</svg>"##,
        soc.join(" "),
        LEFT + 450.0,
        f64::from(HEIGHT) - 12.0
    );
}
