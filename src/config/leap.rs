//! `[leap]` (how to reach Leap's API) and `[schedule]` (housekeeping cron expressions). The
//! checks that need Leap's rules (URLs, cron rates) are `leap::check_config`, run by
//! `preflight`.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeapConfig {
    /// The partner API key (or JWT) sent as `Authorization: Bearer …`. Absent: no calls to
    /// Leap, no polling backstop.
    #[serde(default)]
    pub(crate) api_key: Option<Secret>,
    /// `production` (default), `staging`, or a URL (https; plain http only on loopback, for a
    /// local reverse proxy to Leap, or a test double).
    #[serde(default = "default_base_url")]
    pub(crate) base_url: String,
    /// Each attempt (connect, TLS, request, answer) is abandoned after this long.
    #[serde(default = "default_timeout_secs")]
    pub(crate) timeout_secs: u64,
    /// Further attempts after a connection error, a timeout, a 5XX or a 429.
    #[serde(default = "default_retries")]
    pub(crate) retries: u32,
    /// First back-off between attempts; doubled each time (capped at 60 s).
    #[serde(default = "default_retry_base_ms")]
    pub(crate) retry_base_ms: u64,
    /// The polling backstop's window: this many days back …
    #[serde(default = "default_poll_days_back")]
    pub(crate) poll_days_back: u32,
    /// … and this many days ahead (together at most 31, Leap's limit).
    #[serde(default = "default_poll_days_ahead")]
    pub(crate) poll_days_ahead: u32,
    /// Market groups to search besides those learned from stored group dispatches.
    #[serde(default)]
    pub(crate) market_group_ids: Vec<String>,
}

impl Default for LeapConfig {
    fn default() -> Self {
        LeapConfig {
            api_key: None,
            base_url: default_base_url(),
            timeout_secs: default_timeout_secs(),
            retries: default_retries(),
            retry_base_ms: default_retry_base_ms(),
            poll_days_back: default_poll_days_back(),
            poll_days_ahead: default_poll_days_ahead(),
            market_group_ids: Vec::new(),
        }
    }
}

/// Cron expressions with seconds (`sec min hour day month weekday`), UTC. Housekeeping only:
/// the scheduler may fire up to ~1 s early, so timeslot boundaries stay on the dispatch
/// loop's own timer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The polling backstop (at most once a minute).
    #[serde(default = "default_poll_cron")]
    pub(crate) poll: String,
    /// Retention pruning of raw notifications (SPEC §2.5).
    #[serde(default = "default_prune_cron")]
    pub(crate) prune: String,
    /// SQLite `quick_check`.
    #[serde(default = "default_integrity_cron")]
    pub(crate) integrity: String,
    /// Issue 14: the daily interval-data upload to Leap (Leap recommends daily).
    #[serde(default = "default_upload_cron")]
    pub(crate) upload: String,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            poll: default_poll_cron(),
            prune: default_prune_cron(),
            integrity: default_integrity_cron(),
            upload: default_upload_cron(),
        }
    }
}

impl ScheduleConfig {
    /// (key, expression) for every job, in display order.
    pub(crate) fn jobs(&self) -> [(&'static str, &str); 4] {
        [
            ("poll", &self.poll),
            ("prune", &self.prune),
            ("integrity", &self.integrity),
            ("upload", &self.upload),
        ]
    }
}

pub(crate) fn default_base_url() -> String {
    "production".into()
}
pub(crate) fn default_timeout_secs() -> u64 {
    20
}
pub(crate) fn default_retries() -> u32 {
    4
}
pub(crate) fn default_retry_base_ms() -> u64 {
    1000
}
pub(crate) fn default_poll_days_back() -> u32 {
    1
}
pub(crate) fn default_poll_days_ahead() -> u32 {
    7
}
pub(crate) fn default_poll_cron() -> String {
    "0 */5 * * * *".into()
}
pub(crate) fn default_prune_cron() -> String {
    "0 17 3 * * *".into()
}
pub(crate) fn default_upload_cron() -> String {
    "0 15 2 * * *".into()
}

pub(crate) fn default_integrity_cron() -> String {
    "0 47 3 * * *".into()
}
