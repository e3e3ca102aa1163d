//! Prometheus text exposition, written by hand: a handful of counters, gauges and
//! histograms do not justify a metrics framework on a 5 MB gateway binary.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of seconds.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {n}");
    }
}

/// Counters keyed by one label value, created on first use.
#[derive(Default)]
pub(crate) struct LabeledCounter(Mutex<std::collections::BTreeMap<String, u64>>);

impl LabeledCounter {
    pub(crate) fn inc(&self, label: &str, by: u64) {
        let mut m = self.0.lock().expect("metrics lock");
        *m.entry(label.to_string()).or_default() += by;
    }

    pub(crate) fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .expect("metrics lock")
            .get(label)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in self.0.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", escape(k));
        }
    }
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

const ACK_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What the webhook side counts.
pub(crate) struct IngestMetrics {
    /// Requests by outcome: accepted, unauthorized, bad_request, too_large, ...
    pub(crate) requests: LabeledCounter,
    /// Timeslots by outcome: new, updated, duplicate, rejected, conflict.
    pub(crate) timeslots: LabeledCounter,
    pub(crate) rejected_by_reason: LabeledCounter,
    pub(crate) ack_latency: Histogram,
    pub(crate) last_notification_unix: AtomicU64,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            requests: LabeledCounter::default(),
            timeslots: LabeledCounter::default(),
            rejected_by_reason: LabeledCounter::default(),
            ack_latency: Histogram::new(ACK_BOUNDS),
            last_notification_unix: AtomicU64::new(0),
        }
    }
}

impl IngestMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        self.requests.render(
            out,
            "leap_edge_webhook_requests_total",
            "result",
            "Webhook requests by result.",
        );
        self.timeslots.render(
            out,
            "leap_edge_timeslots_total",
            "outcome",
            "Timeslots received by outcome.",
        );
        self.rejected_by_reason.render(
            out,
            "leap_edge_timeslots_rejected_total",
            "reason",
            "Timeslots rejected, by reason.",
        );
        self.ack_latency.render(
            out,
            "leap_edge_ack_latency_seconds",
            "Time from request start to the 2XX, storage commit included.",
        );
        gauge(
            out,
            "leap_edge_last_notification_timestamp_seconds",
            "Unix time of the last accepted notification (0 = none since start).",
            self.last_notification_unix.load(Ordering::Relaxed) as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3"), "{s}");
    }
}
