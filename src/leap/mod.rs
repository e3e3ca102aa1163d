//! Talking back to Leap (SPEC §2.14, LEAP-API.md): a client for the Dispatch API v2
//! (webhook registration, integration-test notifications, dispatch search), the polling
//! backstop that runs every search result through the same ingest and store path as a push,
//! and the housekeeping schedule (`[schedule]`, cron expressions parsed by croner).

pub(crate) mod backstop;
pub(crate) mod client;
mod config;
mod http;
pub(crate) mod poll;
pub(crate) mod types;

pub(crate) use crate::config::LeapConfig;
pub use client::LeapClient;
pub(crate) use config::{MAX_WINDOW_DAYS, MIN_POLL_GAP_SECS, api_key_warning, poll_time_limit};
pub use config::{check_config, next_fire};

/// What a call to Leap can end in, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LeapError {
    #[error("no [leap] api_key in the configuration: add the partner API key Leap issued")]
    NoApiKey,
    #[error("leap.base_url = {0}")]
    BaseUrl(String),
    #[error(
        "{call}: Leap could not be reached: {source} (check DNS, the uplink, and leap.base_url)"
    )]
    Transport {
        call: String,
        source: http::TransportError,
    },
    #[error("{call}: Leap answered {status} {code}{}: {message}{}",
        if error_code.is_empty() { String::new() } else { format!(" ({error_code})") },
        hint(*status, code))]
    Api {
        call: String,
        status: u16,
        code: String,
        error_code: String,
        message: String,
    },
    #[error("{0}")]
    BadAnswer(String),
}

impl LeapError {
    /// The request may have reached Leap before the exchange failed (a timeout, a
    /// connection cut after sending): a call that creates something may have done so.
    pub(crate) fn maybe_delivered(&self) -> bool {
        matches!(self, LeapError::Transport { source, .. } if !client::unsent(source))
    }
}

fn hint(status: u16, code: &str) -> &'static str {
    match status {
        // Leap's own 404s carry its error envelope; a bare one comes from elsewhere.
        404 if code.is_empty() => {
            " — not Leap's answer (no Leap error body): check leap.base_url (https://api.leap.energy or https://api.staging.leap.energy)"
        }
        401 => " — check [leap] api_key (expired or for the other environment? see leap.base_url)",
        403 => " — this API key has no access to that resource; ask Leap to enable it",
        429 => " — Leap's rate limit; try again in a minute",
        s if s >= 500 => " — a problem on Leap's side; try again later",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_say_what_to_do() {
        let e = LeapError::Api {
            call: "GET /v2/dispatch/meter/webhook".into(),
            status: 401,
            code: "UNAUTHORIZED".into(),
            error_code: "DISPATCH_UNAUTHORIZED".into(),
            message: "invalid token".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("401 UNAUTHORIZED (DISPATCH_UNAUTHORIZED): invalid token"),
            "{s}"
        );
        assert!(s.contains("api_key"), "{s}");
        // A 404 without Leap's error body is not Leap's: the base URL is named.
        let e = LeapError::Api {
            call: "GET /v2/dispatch/meter/webhook".into(),
            status: 404,
            code: String::new(),
            error_code: String::new(),
            message: "<html>Not Found</html>".into(),
        };
        assert!(e.to_string().contains("check leap.base_url"), "{e}");
    }
}
