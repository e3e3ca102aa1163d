//! What the admin socket carries back to the CLI: one set of types that the daemon
//! serialises and the CLI deserialises, so the two sides cannot drift. `leap-edge status
//! --json` (and the `--json` of `override` and `reload`) print these types as they are;
//! field names are stable and use Leap's names where Leap has one
//! (`meter_id`, `performance_compensation_cap`, `meter_event_id`/`market_group_event_id`).

use super::protocol::OverrideAction;
use crate::model::{Cap, ExecMode, Kind, Target};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A successful answer, by request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub(crate) enum Reply {
    Status(Box<StatusReport>),
    Override(OverrideReply),
    Cleared(ClearReply),
    Reload(ReloadReply),
    /// `leap-edge leap poll` run by the daemon (issue 13).
    LeapPoll(Box<crate::leap::poll::PollReport>),
}

/// Whether the daemon answered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DaemonState {
    Running,
    NotRunning,
}

/// `leap-edge status`: the daemon and every configured meter. With the daemon down the CLI
/// fills the same type from the configuration and the database (`daemon: not-running`, no
/// live fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub daemon: DaemonState,
    pub(crate) version: Option<String>,
    pub pid: Option<u32>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) uptime_secs: Option<i64>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) clock_synchronised: Option<bool>,
    pub(crate) last_notification: Option<LastNotification>,
    /// The webhook listener (`server.listen`).
    pub listen: Option<String>,
    pub(crate) next_boundary: Option<DateTime<Utc>>,
    pub(crate) plan_error: Option<String>,
    /// Meter ids of running or upcoming timeslots that no `[[meters]]` entry maps: stored,
    /// not dispatched (SPEC §2.7).
    #[serde(default)]
    pub(crate) unmapped_meters: Vec<String>,
    /// The reverse tunnel unit's state, filled in by the CLI (systemd, not the daemon).
    pub tunnel: Option<String>,
    /// How the daemon was last started (from its lock file), when it is down.
    pub last_run: Option<LastRun>,
    pub meters: Vec<MeterReport>,
    /// Leap's polling backstop and the `[schedule]` jobs (issue 13); absent when down.
    #[serde(default)]
    pub(crate) leap: Option<LeapStatus>,
    /// The MQTT uplink's broker connection (`[uplink.mqtt]`); absent without one or when down.
    #[serde(default)]
    pub(crate) uplink: Option<BrokerConnection>,
    /// Why the last notification could not be stored (answered 503), or why the database
    /// could not be read for this report; absent when storage works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) storage_error: Option<String>,
}

/// A connection to an MQTT broker (`[uplink.mqtt]`), as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct BrokerConnection {
    /// `[uplink.mqtt] url` or `[mqtt] url` (credentials are separate keys, never here).
    pub(crate) url: String,
    pub(crate) connected: bool,
    /// When `connected` last changed; the start, until the first connection.
    pub(crate) since: DateTime<Utc>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
    pub(crate) connections: u64,
    /// Messages acknowledged without being stored (see [`RefusedMessages`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refused: Option<RefusedMessages>,
    /// The last connection on which the broker had no session for this client: whatever it
    /// held for us (parts the relay counted delivered) is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session_lost_at: Option<DateTime<Utc>>,
}

/// SPEC §2.5/§2.12 over MQTT: messages the gateway acknowledged without storing them (not a
/// Leap notification, or over its `[limits]` / `max_body_bytes`). Redelivery cannot fix
/// them, so they are acknowledged; the relay counted each as delivered, so the gateway
/// says so in its retained status, and both `status` commands show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RefusedMessages {
    /// Since the gateway started.
    pub(crate) total: u64,
    pub(crate) last_at: DateTime<Utc>,
    pub(crate) last_error: String,
}

/// The polling backstop and the next fire time of each `[schedule]` job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct LeapStatus {
    pub(crate) backstop: crate::leap::backstop::BackstopStatus,
    pub(crate) schedule: Vec<ScheduleJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ScheduleJob {
    /// The `[schedule]` key: `poll`, `prune`, `integrity`.
    pub(crate) job: String,
    pub(crate) cron: String,
    pub(crate) next_fire: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct LastNotification {
    pub(crate) id: i64,
    pub(crate) received_at: String,
    pub(crate) peer: Option<String>,
}

/// Written into the daemon's lock file at start; read back by `status` when it is down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    pub(crate) pid: u32,
    pub(crate) started_at: DateTime<Utc>,
    /// The systemd unit that started it, or None when it was run by hand.
    pub systemd_unit: Option<String>,
    pub config: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeterReport {
    /// Leap's meter id.
    pub meter_id: String,
    pub name: Option<String>,
    pub device: String,
    /// The dispatch the plan gives this meter now (None: normal operation).
    pub command: Option<CommandReport>,
    #[serde(rename = "override")]
    pub manual_override: Option<OverrideReport>,
    /// What the battery does, from the control loop (None with the daemon down).
    pub device_state: Option<DeviceReport>,
    /// Dispatch's last error for this meter.
    pub last_error: Option<String>,
    /// Daemon down: a timeslot the database says is active now for this meter.
    pub active_timeslot: Option<ActiveTimeslot>,
    /// Daemon down: the meter's last audit entry.
    pub last_audit: Option<AuditSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandReport {
    pub(crate) kind: Kind,
    /// Leap's `meter_event_id` or `market_group_event_id`.
    pub(crate) event_id: String,
    pub(crate) mode: ExecMode,
    pub(crate) target: Target,
    pub(crate) performance_compensation_cap: Cap,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OverrideReport {
    pub(crate) action: OverrideAction,
    pub(crate) until: DateTime<Utc>,
}

/// The control loop's view of one battery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceReport {
    pub(crate) soc_pct: Option<f64>,
    /// Measured battery power, discharge positive.
    pub(crate) battery_kw: Option<f64>,
    /// Measured grid power, import positive.
    pub(crate) grid_kw: Option<f64>,
    /// What the command asked of the battery (None: the maximum).
    pub(crate) requested_kw: Option<f64>,
    /// The setpoint the loop wrote.
    pub(crate) setpoint_kw: Option<f64>,
    /// What held the setpoint below the request.
    pub limited_by: Option<Limit>,
    pub(crate) max_discharge_kw: Option<f64>,
    pub(crate) max_charge_kw: Option<f64>,
    /// True once the device acknowledged normal operation.
    pub(crate) released: bool,
    pub(crate) consecutive_errors: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) last_telemetry_at: Option<DateTime<Utc>>,
    /// SPEC §2.13: why the readings cannot be trusted; the battery is handed back to normal
    /// operation until they can (None while they can).
    #[serde(default)]
    pub(crate) blind: Option<String>,
    /// The site exports although the battery charges all it can (its own generation, not
    /// the dispatch).
    #[serde(default)]
    pub(crate) export_unavoidable: bool,
    /// The device cannot revert by itself: after a crash only `leap-edge release` (the
    /// unit's ExecStopPost) hands it back.
    #[serde(default)]
    pub(crate) no_reversion: bool,
}

/// The constraint that bound the battery's setpoint (SPEC §2.9).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// No export: the battery cannot discharge more than the site uses (less the margin).
    ExportMargin,
    /// The nomination (`limit_kw`).
    Nomination,
    /// The battery's rated power.
    BatteryRating,
    /// Stored energy spread over the time left.
    StoredEnergy,
    /// At the reserve state of charge.
    ReserveSoc,
    /// State of charge unknown: discharge withheld.
    SocUnknown,
    /// The battery is full (manual charge).
    Full,
}

impl Limit {
    /// Words for a technician.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Limit::ExportMargin => "no-export margin",
            Limit::Nomination => "nomination cap",
            Limit::BatteryRating => "battery rating",
            Limit::StoredEnergy => "stored energy to the end",
            Limit::ReserveSoc => "reserve SoC reached",
            Limit::SocUnknown => "SoC unknown",
            Limit::Full => "battery full",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActiveTimeslot {
    pub(crate) kind: Kind,
    pub event_id: String,
    pub(crate) start_time: DateTime<Utc>,
    pub(crate) end_time: DateTime<Utc>,
    pub(crate) energy_kw: Option<f64>,
    pub(crate) test: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditSummary {
    pub(crate) at: String,
    pub(crate) action: String,
    pub(crate) event_id: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) outcome: String,
    pub(crate) detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OverrideReply {
    pub(crate) meters: Vec<String>,
    pub(crate) until: DateTime<Utc>,
    /// Things the technician should know (e.g. above the battery's rating).
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ClearReply {
    pub(crate) cleared: usize,
    /// Things the technician should know (the saved copy could not be deleted).
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReloadReply {
    /// Sections whose new values are now in force (only those that changed).
    pub(crate) applied: Vec<String>,
    /// Changed keys that need a restart; not applied.
    pub(crate) restart_needed_for: Vec<String>,
    /// SHA-256 fingerprint of the TLS certificate now in service, when TLS is on (it is
    /// re-read from its files on every reload, for certificate renewals).
    #[serde(default)]
    pub(crate) tls_fingerprint: Option<String>,
    /// What `config check` would warn about in the configuration now in force (a lowered
    /// retention shorter than a timeslot can wait to run, ...).
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}
