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
impl ScheduleConfig {
    /// Leap's rate guidance is per account, and a partner's whole fleet shares one: on the
    /// same defaults every gateway would poll at second 0 of every fifth minute and upload at
    /// 02:15:00, and meet 429s together exactly when the backstop is needed (after an
    /// outage). A default left as it is fires at a minute and second of its own, fixed by
    /// the site's meter ids; an expression the operator wrote is kept.
    pub(crate) fn spread(&mut self, meter_ids: &[String]) {
        if meter_ids.is_empty() {
            return;
        }
        let h = site_hash(meter_ids);
        let (second, minute) = (h % 60, (h / 60) % 5);
        if self.poll == default_poll_cron() {
            self.poll = format!("{second} {minute}-59/5 * * * *");
        }
        if self.upload == default_upload_cron() {
            self.upload = format!("{second} {} 2 * * *", 15 + (h / 300) % 30);
        }
    }
}

/// A number fixed by the site's meter ids, the same on every start: what spreads a fleet's
/// calls to Leap over the minute.
fn site_hash(meter_ids: &[String]) -> u64 {
    let mut ids: Vec<String> = meter_ids.iter().map(|m| m.to_ascii_lowercase()).collect();
    ids.sort();
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    ids.join(",")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// This site's second of the minute (0–59), as its scheduled poll uses: for polls that
/// every gateway of a fleet starts at the same moment (a relay or broker restart).
pub(crate) fn site_second(meter_ids: &[String]) -> u64 {
    if meter_ids.is_empty() {
        return 0;
    }
    site_hash(meter_ids) % 60
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet-wide polls (after a relay or broker restart) spread over the minute by
    /// site, the same second at every start, and the same second the scheduled poll uses.
    #[test]
    fn each_site_has_its_own_fixed_second() {
        let site = |n: usize| vec![format!("meter-{n:04}")];
        let seconds: std::collections::HashSet<u64> =
            (0..100).map(|n| site_second(&site(n))).collect();
        assert!(seconds.len() > 30, "100 sites on {} seconds", seconds.len());
        assert!(seconds.iter().all(|s| *s < 60));
        assert_eq!(site_second(&site(7)), site_second(&site(7)));
        let mut s = ScheduleConfig::default();
        s.spread(&site(7));
        assert!(
            s.poll.starts_with(&format!("{} ", site_second(&site(7)))),
            "{}",
            s.poll
        );
        assert_eq!(site_second(&[]), 0);
    }
}
