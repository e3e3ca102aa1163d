//! What each meter's loop is doing, for `leap-edge status`, `/metrics` and `/healthz`:
//! the command it follows, its last decision and reading, errors and write times, and how
//! long the site spent beyond what the cap allows. Loops update it; readers take a cheap
//! snapshot (a clone under a short lock).

use super::law::Decision;
use crate::device::Telemetry;
use crate::model::{Cap, Command, ExecMode, Kind, Target};
use crate::seam::StatusSource;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Failed steps in a row before a meter counts as unhealthy (one retry is normal).
const UNHEALTHY_AFTER: u64 = 3;
/// Control events kept for the audit log until the daemon takes them.
const MAX_PENDING_EVENTS: usize = 64;

/// Something the loop decided on its own that belongs in the audit log (SPEC §2.13):
/// `blind` (readings untrusted, battery handed back), `resumed`, `export-unavoidable`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ControlEvent {
    pub(crate) at: DateTime<Utc>,
    pub(crate) meter_id: String,
    pub(crate) event_id: String,
    pub(crate) what: &'static str,
    pub(crate) detail: String,
}

/// The command a loop follows, in short.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandSummary {
    pub(crate) kind: Kind,
    /// Leap's event id (`meter_event_id` or `market_group_event_id`).
    pub(crate) event_id: String,
    pub(crate) mode: ExecMode,
    pub(crate) target: Target,
    pub(crate) performance_compensation_cap: Cap,
    pub(crate) limit_kw: Option<f64>,
    pub(crate) export_allowed_kw: f64,
    pub(crate) until: DateTime<Utc>,
}

impl From<&Command> for CommandSummary {
    fn from(c: &Command) -> Self {
        CommandSummary {
            kind: c.kind,
            event_id: c.event_id.clone(),
            mode: c.mode,
            target: c.target,
            performance_compensation_cap: c.cap,
            limit_kw: c.limit_kw,
            export_allowed_kw: c.export_allowed_kw,
            until: c.until,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeterStatus {
    pub(crate) meter_id: String,
    pub device: String,
    /// None = normal operation asked for.
    pub command: Option<CommandSummary>,
    pub last_decision: Option<Decision>,
    pub(crate) last_decision_at: Option<DateTime<Utc>>,
    pub(crate) last_telemetry: Option<Telemetry>,
    pub(crate) last_telemetry_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
    /// Failed steps in a row (0 when the last one succeeded).
    pub consecutive_errors: u64,
    /// Failed steps (Modbus errors) since start.
    pub errors_total: u64,
    pub last_write_at: Option<DateTime<Utc>>,
    pub(crate) last_written_kw: Option<f64>,
    pub(crate) writes: u64,
    pub(crate) last_release_at: Option<DateTime<Utc>>,
    /// True once the device acknowledged the release (normal operation).
    pub(crate) released: bool,
    /// Seconds the site exported beyond what the command allowed, while following one.
    pub(crate) export_violation_secs: f64,
    /// Seconds grid import was below the margin under a no-export command.
    pub below_margin_secs: f64,
    /// |last setpoint − battery power measured one period later| (kW).
    pub(crate) control_error_kw: Option<f64>,
    /// SPEC §2.13: why the readings cannot be trusted and the battery was handed back to
    /// normal operation while a command is in force; None while they can.
    pub blind: Option<String>,
    pub(crate) blind_since: Option<DateTime<Utc>>,
    /// Times the loop went blind since start.
    pub(crate) blind_total: u64,
    /// The device's profile sets no reversion timeout: after a crash the battery keeps its
    /// last setpoint until `leap-edge release` runs (issue 9).
    pub(crate) no_reversion: bool,
    /// Audit-worthy events not yet taken by the daemon.
    #[serde(skip)]
    pub(crate) pending_events: Vec<ControlEvent>,
}

impl MeterStatus {
    pub(crate) fn new(meter_id: &str, device: &str) -> MeterStatus {
        MeterStatus {
            meter_id: meter_id.to_string(),
            device: device.to_string(),
            command: None,
            last_decision: None,
            last_decision_at: None,
            last_telemetry: None,
            last_telemetry_at: None,
            last_error: None,
            last_error_at: None,
            consecutive_errors: 0,
            errors_total: 0,
            last_write_at: None,
            last_written_kw: None,
            writes: 0,
            last_release_at: None,
            released: false,
            export_violation_secs: 0.0,
            below_margin_secs: 0.0,
            control_error_kw: None,
            blind: None,
            blind_since: None,
            blind_total: 0,
            no_reversion: false,
            pending_events: Vec::new(),
        }
    }

    pub(crate) fn push_event(&mut self, e: ControlEvent) {
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            self.pending_events.remove(0);
        }
        self.pending_events.push(e);
    }

    /// SPEC §2.13: the battery cannot prevent export (the site's generation).
    pub fn export_unavoidable(&self) -> bool {
        self.command.is_some()
            && self
                .last_decision
                .is_some_and(|d| d.flags.export_unavoidable)
    }
}

/// Shared, cloneable view of every meter loop's status.
#[derive(Debug, Clone, Default)]
pub struct ControlStatus {
    meters: Vec<Arc<Mutex<MeterStatus>>>,
}

impl ControlStatus {
    pub(crate) fn add(&mut self, meter_id: &str, device: &str) -> Arc<Mutex<MeterStatus>> {
        let s = Arc::new(Mutex::new(MeterStatus::new(meter_id, device)));
        self.meters.push(s.clone());
        s
    }

    /// A copy of every meter's status, in configuration order.
    pub fn snapshot(&self) -> Vec<MeterStatus> {
        self.meters
            .iter()
            .map(|m| m.lock().expect("meter status lock").clone())
            .collect()
    }

    /// Take the control events waiting for the audit log, oldest first.
    pub(crate) fn take_events(&self) -> Vec<ControlEvent> {
        let mut out: Vec<ControlEvent> = self
            .meters
            .iter()
            .flat_map(|m| std::mem::take(&mut m.lock().expect("meter status lock").pending_events))
            .collect();
        out.sort_by_key(|e| e.at);
        out
    }

    /// Events [`Self::take_events`] took that could not be written: back in front of the
    /// ones queued since, for the next try (still bounded: the oldest go first).
    pub(crate) fn put_back(&self, events: Vec<ControlEvent>) {
        for m in &self.meters {
            let mut st = m.lock().expect("meter status lock");
            let mine: Vec<ControlEvent> = events
                .iter()
                .filter(|e| e.meter_id == st.meter_id)
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let newer = std::mem::take(&mut st.pending_events);
            for e in mine.into_iter().chain(newer) {
                st.push_event(e);
            }
        }
    }

    pub fn meter(&self, meter_id: &str) -> Option<MeterStatus> {
        self.snapshot().into_iter().find(|m| m.meter_id == meter_id)
    }
}

/// One Prometheus metric family with a sample per meter (`None`: no sample for that meter).
struct MetricFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&MeterStatus) -> Option<f64>,
}

/// The per-meter control metrics, in the order they are exposed.
const METRIC_FAMILIES: &[MetricFamily] = &[
    MetricFamily {
        name: "leap_edge_control_setpoint_kw",
        kind: "gauge",
        help: "Battery setpoint while following a command (discharge positive; 0 in normal operation).",
        value: |m| match (&m.command, m.last_decision) {
            (Some(_), Some(d)) => Some(d.setpoint_kw),
            _ => Some(0.0),
        },
    },
    MetricFamily {
        name: "leap_edge_control_following",
        kind: "gauge",
        help: "1 while the meter follows a dispatch command.",
        value: |m| Some(if m.command.is_some() { 1.0 } else { 0.0 }),
    },
    MetricFamily {
        name: "leap_edge_control_writes_total",
        kind: "counter",
        help: "Setpoint writes acknowledged by the device.",
        value: |m| Some(m.writes as f64),
    },
    MetricFamily {
        name: "leap_edge_control_consecutive_errors",
        kind: "gauge",
        help: "Failed control steps in a row.",
        value: |m| Some(m.consecutive_errors as f64),
    },
    MetricFamily {
        name: "leap_edge_control_export_violation_seconds_total",
        kind: "counter",
        help: "Seconds the site exported beyond what the command allowed.",
        value: |m| Some(m.export_violation_secs),
    },
    MetricFamily {
        name: "leap_edge_control_below_margin_seconds_total",
        kind: "counter",
        help: "Seconds grid import was below the margin under a no-export command.",
        value: |m| Some(m.below_margin_secs),
    },
    MetricFamily {
        name: "leap_edge_control_blind",
        kind: "gauge",
        help: "1 while a command is in force but the site readings cannot be trusted (battery handed back).",
        value: |m| Some(if m.blind.is_some() { 1.0 } else { 0.0 }),
    },
    MetricFamily {
        name: "leap_edge_control_blind_total",
        kind: "counter",
        help: "Times the loop handed the battery back: failed, stale, out-of-range or frozen readings, or a battery not holding its setpoint while the site exports.",
        value: |m| Some(m.blind_total as f64),
    },
    MetricFamily {
        name: "leap_edge_control_export_unavoidable",
        kind: "gauge",
        help: "1 while the site's generation exceeds what the battery can absorb under the export bound.",
        value: |m| Some(if m.export_unavoidable() { 1.0 } else { 0.0 }),
    },
    MetricFamily {
        name: "leap_edge_modbus_errors_total",
        kind: "counter",
        help: "Failed device steps (timeouts, I/O errors, exceptions, read-back mismatches).",
        value: |m| Some(m.errors_total as f64),
    },
    MetricFamily {
        name: "leap_edge_soc_percent",
        kind: "gauge",
        help: "Battery state of charge from the last reading.",
        value: |m| m.last_telemetry.and_then(|t| t.soc_pct),
    },
    MetricFamily {
        name: "leap_edge_battery_kw",
        kind: "gauge",
        help: "Battery power from the last reading (discharge positive).",
        value: |m| m.last_telemetry.and_then(|t| t.battery_kw),
    },
    MetricFamily {
        name: "leap_edge_grid_kw",
        kind: "gauge",
        help: "Site grid power from the last reading (import positive).",
        value: |m| m.last_telemetry.and_then(|t| t.grid_kw),
    },
    MetricFamily {
        name: "leap_edge_control_error_kw",
        kind: "gauge",
        help: "|setpoint - measured battery power|.",
        value: |m| m.control_error_kw,
    },
];

impl StatusSource for ControlStatus {
    fn render_metrics(&self, out: &mut String) {
        let all = self.snapshot();
        for f in METRIC_FAMILIES {
            let (name, kind, help) = (f.name, f.kind, f.help);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in &all {
                if let Some(x) = (f.value)(m) {
                    let _ = writeln!(
                        out,
                        "{name}{{meter_id=\"{}\",device=\"{}\"}} {x}",
                        crate::metrics::escape(&m.meter_id),
                        crate::metrics::escape(&m.device)
                    );
                }
            }
        }
    }

    fn health_problems(&self) -> Vec<String> {
        let all = self.snapshot();
        let blind = all.iter().filter(|m| m.command.is_some()).filter_map(|m| {
            m.blind.as_ref().map(|why| {
                format!(
                    "meter {} (device {}): command not followed, battery handed back to normal: {why}",
                    m.meter_id, m.device
                )
            })
        });
        let blind: Vec<String> = blind.collect();
        // A blind meter is reported once, with its reason (below).
        all.into_iter()
            // Issue 5: healthy only when every device is reachable, dispatching or not.
            .filter(|m| m.consecutive_errors >= UNHEALTHY_AFTER && m.blind.is_none())
            .map(|m| {
                let what = if m.command.is_some() {
                    "command not held"
                } else if !m.released {
                    "not released"
                } else {
                    "device unreachable"
                };
                format!(
                    "meter {} (device {}): {what}: {}",
                    m.meter_id,
                    m.device,
                    m.last_error.as_deref().unwrap_or("unknown error")
                )
            })
            .chain(blind)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(meter: &str, n: i64) -> ControlEvent {
        ControlEvent {
            at: DateTime::from_timestamp(1_800_000_000 + n, 0).unwrap(),
            meter_id: meter.into(),
            event_id: format!("ev-{n}"),
            what: "blind",
            detail: String::new(),
        }
    }

    /// Events that could not be written come back for the next try, each to its meter,
    /// with the ones queued since; the bound still holds.
    #[test]
    fn events_not_written_are_put_back() {
        let mut all = ControlStatus::default();
        let (a, b) = (all.add("m-a", "d"), all.add("m-b", "d"));
        a.lock().unwrap().push_event(event("m-a", 1));
        b.lock().unwrap().push_event(event("m-b", 2));
        let taken = all.take_events();
        assert!(all.take_events().is_empty());
        a.lock().unwrap().push_event(event("m-a", 3));
        all.put_back(taken);
        let again: Vec<String> = all.take_events().into_iter().map(|e| e.event_id).collect();
        assert_eq!(again, ["ev-1", "ev-2", "ev-3"]);
        let many: Vec<ControlEvent> = (0..100).map(|n| event("m-a", n)).collect();
        all.put_back(many);
        assert_eq!(all.take_events().len(), MAX_PENDING_EVENTS);
    }
}
