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

/// A label drawn from a fixed set (issue 16.2): the series are the variants' own words,
/// never derived from a message, so rewording a message cannot move a count.
pub(crate) trait LabelSet: Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
}

/// One counter per variant of `L`, every variant exported (zeros too, so a rate is defined
/// from the first scrape), lock-free on the request path.
pub(crate) struct EnumCounter<L: LabelSet> {
    counts: Vec<AtomicU64>,
    labels: std::marker::PhantomData<L>,
}

impl<L: LabelSet> Default for EnumCounter<L> {
    fn default() -> Self {
        EnumCounter {
            counts: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            labels: std::marker::PhantomData,
        }
    }
}

impl<L: LabelSet> EnumCounter<L> {
    /// A variant left out of `ALL` is a programming error: caught in tests, never a panic
    /// on a request path in production (it is then simply not counted).
    fn slot(&self, l: L) -> Option<&AtomicU64> {
        let i = L::ALL.iter().position(|x| *x == l);
        debug_assert!(i.is_some(), "LabelSet::ALL must list every variant");
        i.map(|i| &self.counts[i])
    }

    pub(crate) fn inc(&self, l: L, by: u64) {
        if let Some(c) = self.slot(l) {
            c.fetch_add(by, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self, l: L) -> u64 {
        self.slot(l).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, c) in L::ALL.iter().zip(&self.counts) {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", l.label());
        }
    }
}

/// How a webhook request ended (the relay's intake answers the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestResult {
    Accepted,
    Unauthorized,
    BadRequest,
    UnsupportedMediaType,
    TooLarge,
    Timeout,
    OverLimit,
    StorageUnavailable,
    AmbiguousFraming,
}

impl LabelSet for RequestResult {
    const ALL: &'static [Self] = &[
        RequestResult::Accepted,
        RequestResult::Unauthorized,
        RequestResult::BadRequest,
        RequestResult::UnsupportedMediaType,
        RequestResult::TooLarge,
        RequestResult::Timeout,
        RequestResult::OverLimit,
        RequestResult::StorageUnavailable,
        RequestResult::AmbiguousFraming,
    ];

    fn label(self) -> &'static str {
        match self {
            RequestResult::Accepted => "accepted",
            RequestResult::Unauthorized => "unauthorized",
            RequestResult::BadRequest => "bad_request",
            RequestResult::UnsupportedMediaType => "unsupported_media_type",
            RequestResult::TooLarge => "too_large",
            RequestResult::Timeout => "timeout",
            RequestResult::OverLimit => "over_limit",
            RequestResult::StorageUnavailable => "storage_unavailable",
            RequestResult::AmbiguousFraming => "ambiguous_framing",
        }
    }
}

/// What became of a received timeslot (SPEC §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeslotOutcome {
    New,
    Updated,
    Duplicate,
    Rejected,
    Conflict,
}

impl LabelSet for TimeslotOutcome {
    const ALL: &'static [Self] = &[
        TimeslotOutcome::New,
        TimeslotOutcome::Updated,
        TimeslotOutcome::Duplicate,
        TimeslotOutcome::Rejected,
        TimeslotOutcome::Conflict,
    ];

    fn label(self) -> &'static str {
        match self {
            TimeslotOutcome::New => "new",
            TimeslotOutcome::Updated => "updated",
            TimeslotOutcome::Duplicate => "duplicate",
            TimeslotOutcome::Rejected => "rejected",
            TimeslotOutcome::Conflict => "conflict",
        }
    }
}

/// Counters keyed by an open set of label values (gateway names), created on first use.
#[derive(Default)]
pub(crate) struct LabeledCounter(Mutex<std::collections::BTreeMap<String, u64>>);

impl LabeledCounter {
    pub(crate) fn inc(&self, label: &str, by: u64) {
        let mut m = self.0.lock().expect("metrics lock");
        *m.entry(label.to_string()).or_default() += by;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16.2: a counter's series are its variants' fixed labels, all exported (zeros
    /// too), and each label names exactly one variant.
    #[test]
    fn enum_counter_exports_every_fixed_label() {
        let c = EnumCounter::<RequestResult>::default();
        c.inc(RequestResult::TooLarge, 2);
        let mut out = String::new();
        c.render(&mut out, "x_total", "result", "help");
        assert!(out.contains("x_total{result=\"too_large\"} 2\n"), "{out}");
        assert!(out.contains("x_total{result=\"accepted\"} 0\n"), "{out}");
        assert_eq!(c.get(RequestResult::TooLarge), 2);
        let labels: std::collections::BTreeSet<_> =
            RequestResult::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RequestResult::ALL.len());
        let outcomes: std::collections::BTreeSet<_> =
            TimeslotOutcome::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(outcomes.len(), TimeslotOutcome::ALL.len());
    }

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
