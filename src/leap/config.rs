//! The semantic checks `config check` runs on `[leap]` (how to reach Leap's API) and
//! `[schedule]` (housekeeping cron expressions); their shape is in `config::leap`.

use chrono::{DateTime, Utc};

pub(crate) const PRODUCTION: &str = "https://api.leap.energy";
pub(crate) const STAGING: &str = "https://api.staging.leap.energy";
/// Leap's limit on one search window (LEAP-API.md "Polling").
pub(crate) const MAX_WINDOW_DAYS: u32 = 31;
/// Leap: polling the search endpoints once per minute is within its rate limits.
pub(crate) const MIN_POLL_GAP_SECS: i64 = 60;

/// How long one poll may take at most: every call may use each attempt's full timeout plus
/// the longest wait between attempts (a Retry-After Leap asks for), and a poll makes a few
/// calls (pages, meters and groups). The daemon bounds a requested poll by this; the CLI
/// waits a little longer for its answer.
pub(crate) fn poll_time_limit(l: &crate::config::leap::LeapConfig) -> std::time::Duration {
    let attempts = u64::from(l.retries) + 1;
    let wait = super::client::MAX_RETRY_AFTER.as_secs();
    std::time::Duration::from_secs(attempts * (l.timeout_secs + wait) * 2 + 30)
}

/// Parse a `[schedule]` cron expression (six fields: seconds required).
pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The next time `expr` fires after `now` (None if it never does or does not parse).
pub fn next_fire(expr: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Cron fires on whole seconds; carrying `now`'s fraction would show e.g. 03:17:00.819.
    let now = chrono::Timelike::with_nanosecond(&now, 0).unwrap_or(now);
    parse_cron(expr)
        .ok()?
        .find_next_occurrence(&now, false)
        .ok()
}

/// The smallest gap between the next few fire times, in seconds.
fn min_gap_secs(cron: &croner::Cron, from: DateTime<Utc>) -> Option<i64> {
    let times: Vec<DateTime<Utc>> = cron.iter_after(from).take(8).collect();
    times.windows(2).map(|w| (w[1] - w[0]).num_seconds()).min()
}

/// A resolved base URL: `production`/`staging` by name, or a checked URL.
pub(crate) fn resolve_base_url(s: &str) -> Result<hyper::Uri, String> {
    let text = match s.trim() {
        "production" => PRODUCTION,
        "staging" => STAGING,
        other => other,
    };
    let uri: hyper::Uri = text
        .parse()
        .map_err(|e| format!("\"{s}\" is not a URL ({e}); use production, staging or https://…"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("\"{s}\" has no host; use production, staging or https://…"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(format!(
            "\"{s}\": plain http is allowed only to a loopback address (a local reverse proxy to Leap); use https"
        )),
        _ => Err(format!(
            "\"{s}\" must start with https:// (or http:// to a loopback address)"
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The key goes into the Authorization header (trimmed): a character a header cannot carry
/// (a control character pasted inside it) fails every call to Leap, as "Leap could not be
/// reached". A warning, not a problem: webhook pushes do not need the key, so the daemon
/// must still start.
pub(crate) fn api_key_warning(l: &crate::config::leap::LeapConfig) -> Option<String> {
    let k = l.api_key.as_ref()?;
    hyper::header::HeaderValue::from_str(&format!("Bearer {}", k.expose().trim()))
        .is_err()
        .then(|| "leap.api_key holds a character an HTTP header cannot carry (a control character pasted with it): every call to Leap fails until the key is copied again".into())
}

/// `config check` for `[leap]` and `[schedule]`: each problem names its key.
pub fn check_config(cfg: &crate::config::Config, p: &mut Vec<String>) {
    let l = &cfg.leap;
    if let Err(e) = resolve_base_url(&l.base_url) {
        p.push(format!("leap.base_url = {e}"));
    }
    if l.api_key
        .as_ref()
        .is_some_and(|k| k.expose().trim().is_empty())
    {
        p.push(
            "leap.api_key is empty: give the partner API key from Leap, or remove the key".into(),
        );
    }
    if !(1..=300).contains(&l.timeout_secs) {
        p.push("leap.timeout_secs must be between 1 and 300".into());
    }
    if l.retries > 10 {
        p.push("leap.retries must be at most 10".into());
    }
    if !(10..=60_000).contains(&l.retry_base_ms) {
        p.push("leap.retry_base_ms must be between 10 and 60000".into());
    }
    let days = l.poll_days_back + l.poll_days_ahead;
    if days == 0 || days > MAX_WINDOW_DAYS {
        p.push(format!(
            "leap.poll_days_back + leap.poll_days_ahead = {days}: the search window must be 1 to {MAX_WINDOW_DAYS} days (Leap's limit)"
        ));
    }
    let now = Utc::now();
    for (key, expr) in cfg.schedule.jobs() {
        match parse_cron(expr) {
            Err(e) => p.push(format!(
                "schedule.{key} = \"{expr}\" is not a cron expression ({e}); use six fields \
                 `sec min hour day month weekday`, e.g. \"0 */5 * * * *\""
            )),
            Ok(c) if key == "poll" => {
                if min_gap_secs(&c, now).is_some_and(|g| g < MIN_POLL_GAP_SECS) {
                    p.push(format!(
                        "schedule.poll = \"{expr}\" fires more often than once a minute (Leap's rate limit); use e.g. \"0 */5 * * * *\""
                    ));
                }
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::leap::default_poll_cron;

    /// A key pasted with a line break at its end is trimmed; one with a control character
    /// inside is named (a warning), not "Leap could not be reached" at every call.
    #[test]
    fn an_api_key_a_header_cannot_carry_is_named() {
        let text = |key: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[leap]\napi_key = \"{key}\"\n"
            )
        };
        let warning = |key: &str| {
            let c = crate::config::Config::parse_str(&text(key), std::path::Path::new("c.toml"))
                .unwrap();
            api_key_warning(&c.leap)
        };
        assert!(warning("sk_live_abc\\u0007123").is_some());
        assert_eq!(warning("sk_live_abc123\\n"), None);
        assert_eq!(warning("sk_live_abc123"), None);
    }

    #[test]
    fn base_url_names_and_loopback_rule() {
        assert_eq!(
            resolve_base_url("production").unwrap().host(),
            Some("api.leap.energy")
        );
        assert_eq!(
            resolve_base_url("staging").unwrap().host(),
            Some("api.staging.leap.energy")
        );
        assert!(resolve_base_url("http://127.0.0.1:9999").is_ok());
        assert!(resolve_base_url("http://[::1]:9999/leap").is_ok());
        assert!(resolve_base_url("http://localhost:3128").is_ok());
        let e = resolve_base_url("http://api.leap.energy").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(resolve_base_url("ftp://x").is_err());
    }

    #[test]
    fn cron_expressions_and_poll_rate() {
        assert!(parse_cron("0 */5 * * * *").is_ok());
        assert!(parse_cron("every minute").is_err());
        let c = parse_cron("*/10 * * * * *").unwrap();
        assert_eq!(min_gap_secs(&c, Utc::now()), Some(10));
        let c = parse_cron(&default_poll_cron()).unwrap();
        assert_eq!(min_gap_secs(&c, Utc::now()), Some(300));
        let next = next_fire("0 17 3 * * *", Utc::now()).unwrap();
        assert_eq!(next.format("%H:%M:%S%.3f").to_string(), "03:17:00.000");
    }

    /// A fleet on the defaults does not poll or upload in lockstep; what an operator wrote
    /// is kept; every spread expression still polls every 5 minutes.
    #[test]
    fn default_schedules_are_spread_by_site() {
        use crate::config::leap::{ScheduleConfig, default_upload_cron};
        let spread = |ids: &[&str]| {
            let mut s = ScheduleConfig::default();
            s.spread(&ids.iter().map(|i| i.to_string()).collect::<Vec<_>>());
            (s.poll, s.upload)
        };
        let sites: Vec<(String, String)> = (0..20)
            .map(|i| spread(&[&format!("dd21c76c-0000-4000-8000-{i:012}")]))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = sites.iter().map(|s| &s.0).collect();
        assert!(distinct.len() >= 15, "{sites:?}");
        for (poll, upload) in &sites {
            let c = parse_cron(poll).unwrap();
            assert_eq!(min_gap_secs(&c, Utc::now()), Some(300), "{poll}");
            assert!(next_fire(upload, Utc::now()).is_some(), "{upload}");
        }
        assert_eq!(spread(&["A", "b"]), spread(&["B", "a"]), "order and case");
        let mut own = ScheduleConfig {
            poll: "30 */10 * * * *".into(),
            ..ScheduleConfig::default()
        };
        own.spread(&["m".into()]);
        assert_eq!(own.poll, "30 */10 * * * *");
        let mut none = ScheduleConfig::default();
        none.spread(&[]);
        assert_eq!(
            (none.poll, none.upload),
            (default_poll_cron(), default_upload_cron())
        );
    }
}
