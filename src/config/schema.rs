//! The configuration's shape. Every table denies unknown keys; every default is a named
//! function so `config.toml` comments and code agree on one value.

pub use super::sim::SimConfig;
use crate::model::Strategy;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub site: SiteConfig,
    #[serde(default)]
    pub(crate) policy: PolicyConfig,
    #[serde(default)]
    pub(crate) strategy: StrategyConfig,
    #[serde(default)]
    pub meters: Vec<MeterConfig>,
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceConfig>,
    /// Folder holding device profiles (`devices/*.toml`).
    #[serde(default = "default_devices_dir")]
    pub devices_dir: PathBuf,
    #[serde(default)]
    pub(crate) sim: SimConfig,
    #[serde(default)]
    pub(crate) admin: AdminConfig,
    /// Other ways notifications reach this gateway than its webhook (SPEC §2.12 fleets).
    #[serde(default)]
    pub(crate) uplink: UplinkConfig,
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    /// Leap's APIs (registration, test notifications, polling backstop).
    #[serde(default)]
    pub leap: super::leap::LeapConfig,
    /// Housekeeping cron expressions (never dispatch boundaries).
    #[serde(default)]
    pub(crate) schedule: super::leap::ScheduleConfig,
    /// Interval data for Leap (issue 14).
    #[serde(default)]
    pub(crate) intervals: super::intervals::IntervalsConfig,
    /// The file this was loaded from (for `leap-edge reload`); not a key.
    #[serde(skip)]
    pub(crate) source: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UplinkConfig {
    /// Receive the relay's dispatches from an MQTT broker (dialling out: no inbound port).
    pub(crate) mqtt: Option<super::mqtt::MqttConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub(crate) listen: SocketAddr,
    #[serde(default = "default_path")]
    pub(crate) path: String,
    pub(crate) tls: Option<TlsConfig>,
    /// SPEC §3: bodies above this get 413.
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// A client that has not sent its headers (or its body) within this many seconds is
    /// dropped, so a slow client cannot hold a connection slot.
    #[serde(default = "default_read_timeout_secs")]
    pub(crate) read_timeout_secs: u64,
    /// The longest a connection may live, however busy (issue 10.1). A connection that has
    /// not shown a valid key lives at most `read_timeout_secs`; a reply the client does not
    /// read within `read_timeout_secs` drops the connection.
    #[serde(default = "default_connection_max_secs")]
    pub(crate) connection_max_secs: u64,
    /// `/metrics` and `/healthz` are served here (plain HTTP, loopback only), never on the
    /// webhook listener: through the tunnel that listener is the public internet, and these
    /// pages show the site's load, state of charge and devices (issue 10.2).
    #[serde(default = "default_metrics_listen")]
    pub(crate) metrics_listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The header Leap is configured to send (Leap sends names in lower case).
    #[serde(default = "default_auth_header")]
    pub(crate) header: String,
    /// Accepted values; several during a key rotation.
    pub(crate) keys: Vec<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    /// SPEC §2.5: raw notifications are kept this long.
    #[serde(default = "default_retention_days")]
    pub(crate) retention_days: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_db_path(),
            retention_days: default_retention_days(),
        }
    }
}

/// Issue 10.5: what one notification may ask the gateway to store. Leap's own notifications
/// stay far below these; a key holder cannot make the gateway store more than it sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Meter ids in one notification, each counted once per timeslot of its dispatch entry
    /// (that is how they are held while parsing); over it: 413.
    #[serde(default = "default_max_meter_ids")]
    pub(crate) max_meter_ids: usize,
    /// Timeslots in one notification (valid and invalid together); over it: 413.
    #[serde(default = "default_max_timeslots")]
    pub(crate) max_timeslots: usize,
    /// A timeslot longer than this is rejected with its reason (Leap's programs run hours).
    #[serde(default = "default_max_timeslot_hours")]
    pub(crate) max_timeslot_hours: u32,
    /// A timeslot starting further ahead than this is rejected with its reason.
    #[serde(default = "default_max_start_ahead_days")]
    pub(crate) max_start_ahead_days: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_meter_ids: default_max_meter_ids(),
            max_timeslots: default_max_timeslots(),
            max_timeslot_hours: default_max_timeslot_hours(),
            max_start_ahead_days: default_max_start_ahead_days(),
        }
    }
}

/// SPEC §2.9 site limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Interconnection permit: the most the site may export (kW). 0 = never export.
    #[serde(default)]
    pub(crate) export_limit_kw: f64,
    /// Under no-export caps, grid import is kept at or above this (kW).
    #[serde(default = "default_import_margin_kw")]
    pub(crate) import_margin_kw: f64,
    /// State of charge (%) the battery is never discharged below.
    #[serde(default = "default_reserve_soc_pct")]
    pub(crate) reserve_soc_pct: f64,
    /// Site load (kW) assumed when the site meter cannot be read and export is forbidden.
    /// Keep it at or below the site's lowest plausible load.
    #[serde(default)]
    pub(crate) fallback_site_load_kw: f64,
    /// Closed-loop control period.
    #[serde(default = "default_control_period_ms")]
    pub control_period_ms: u64,
    /// The site's service size (kW): a site-meter reading beyond it in either direction is
    /// a broken or stuck meter, and the battery is handed back to normal (SPEC §2.13).
    #[serde(default)]
    pub(crate) service_kw: Option<f64>,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            export_limit_kw: 0.0,
            import_margin_kw: default_import_margin_kw(),
            reserve_soc_pct: default_reserve_soc_pct(),
            fallback_site_load_kw: 0.0,
            control_period_ms: default_control_period_ms(),
            service_kw: None,
        }
    }
}

/// SPEC §2.6: what test and communication notifications do to the battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TestPolicy {
    Execute,
    #[default]
    DryRun,
    Ignore,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub(crate) integration_test: TestPolicy,
    #[serde(default)]
    pub(crate) communication_test: TestPolicy,
}

/// SPEC §2.9 per-program strategy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    #[serde(default)]
    pub(crate) default: Strategy,
    /// Program identifier (e.g. "ELRP") → strategy.
    #[serde(default)]
    pub(crate) programs: BTreeMap<String, Strategy>,
}

impl StrategyConfig {
    /// The most conservative strategy any of the timeslot's programs asks for wins:
    /// `maximize` only when every listed program is configured for it.
    pub(crate) fn for_programs(&self, programs: &[String]) -> Strategy {
        if programs.is_empty() {
            return self.default;
        }
        let all_max = programs
            .iter()
            .all(|p| self.programs.get(p).copied().unwrap_or(self.default) == Strategy::Maximize);
        if all_max {
            Strategy::Maximize
        } else {
            Strategy::Award
        }
    }
}

/// SPEC §2.7: a Leap meter served by a local battery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Leap's meter id (uuid).
    pub id: String,
    /// Name of a `[devices.NAME]` table.
    pub device: String,
    /// Share of a group timeslot's `energy_kw` relative to the other local meters of the
    /// group. Default: equal shares.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// A label for technicians.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// A profile name: a file `devices/NAME.toml`.
    pub profile: String,
    pub host: String,
    #[serde(default = "default_modbus_port")]
    pub port: u16,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// First register of the SunSpec map; absent = discover (0, 40000, 50000).
    #[serde(default)]
    pub base_address: Option<u16>,
    /// Each Modbus call (connect, read, write) is abandoned after this long.
    #[serde(default = "default_modbus_timeout_ms")]
    pub timeout_ms: u64,
    /// Device-side reversion timeout (SPEC §2.10); the command is refreshed at half of it.
    #[serde(default = "default_reversion_secs")]
    pub reversion_secs: u32,
    /// Nameplate limits (kW, kWh) when the device does not report them.
    #[serde(default)]
    pub max_discharge_kw: Option<f64>,
    #[serde(default)]
    pub max_charge_kw: Option<f64>,
    #[serde(default)]
    pub capacity_kwh: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// The CLI's control socket (mode 0660).
    #[serde(default = "default_admin_socket")]
    pub(crate) socket: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: default_admin_socket(),
        }
    }
}

pub(crate) fn default_path() -> String {
    "/leap/dispatch".into()
}
pub(crate) fn default_max_body_bytes() -> usize {
    1024 * 1024
}
pub(crate) fn default_max_connections() -> usize {
    64
}
pub(crate) fn default_read_timeout_secs() -> u64 {
    10
}
pub(crate) fn default_connection_max_secs() -> u64 {
    300
}
pub(crate) fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
/// A real group notification lists every meter with each of its timeslots: a 1,000-meter
/// group's day-ahead award in quarter hours is 96,000. What this bounds is memory while
/// parsing (each parsed timeslot holds its entry's ids, ~64 bytes each: ~13 MB here), not
/// the database (migration 6 stores a list once).
pub(crate) fn default_max_meter_ids() -> usize {
    200_000
}
/// About what a 1 MiB body holds of meter timeslots: SPEC §2.2 refuses a notification
/// for its size, so a count bound below that would refuse a fleet-wide event (one URL per
/// account, §2.12) that the size bound lets in.
pub(crate) fn default_max_timeslots() -> usize {
    2_000
}
pub(crate) fn default_max_timeslot_hours() -> u32 {
    24
}
pub(crate) fn default_max_start_ahead_days() -> u32 {
    31
}
pub(crate) fn default_auth_header() -> String {
    "x-api-key".into()
}
pub(crate) fn default_db_path() -> PathBuf {
    "/var/lib/leap-edge/leap-edge.db".into()
}
pub(crate) fn default_retention_days() -> u32 {
    400
}
pub(crate) fn default_import_margin_kw() -> f64 {
    0.5
}
pub(crate) fn default_reserve_soc_pct() -> f64 {
    10.0
}
pub(crate) fn default_control_period_ms() -> u64 {
    1000
}
pub(crate) fn default_weight() -> f64 {
    1.0
}
pub(crate) fn default_devices_dir() -> PathBuf {
    "/usr/share/leap-edge/devices".into()
}
pub(crate) fn default_modbus_port() -> u16 {
    502
}
pub(crate) fn default_unit_id() -> u8 {
    1
}
pub(crate) fn default_modbus_timeout_ms() -> u64 {
    1000
}
pub(crate) fn default_reversion_secs() -> u32 {
    60
}
pub(crate) fn default_sunspec_base() -> u16 {
    40000
}
pub(crate) fn default_admin_socket() -> PathBuf {
    "/run/leap-edge/admin.sock".into()
}
