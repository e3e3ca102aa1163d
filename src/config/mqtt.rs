//! `[mqtt]` (relay) and `[uplink.mqtt]` (gateway): how to reach the broker, and the checks
//! of that table alone. Connecting is `mqtt`'s business.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One day: a gateway offline for less than this gets everything published meanwhile.
pub(crate) const MIN_SESSION_EXPIRY_SECS: u32 = 86_400;

/// `[mqtt]` (relay) and `[uplink.mqtt]` (gateway): how to reach the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtts://broker.example.net:8883`, or `mqtt://127.0.0.1:1883` (plain only on loopback).
    pub(crate) url: String,
    /// The client id: the gateway's name on a gateway (the broker's ACL keys on it).
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    /// The broker's certificate or its CA (PEM); only it is trusted.
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for brokers that authenticate by certificate.
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
    /// Topics are `<prefix>/<gateway>/dispatch` and `<prefix>/<gateway>/status`.
    #[serde(default = "default_prefix")]
    pub(crate) topic_prefix: String,
    #[serde(default = "default_keep_alive_secs")]
    pub(crate) keep_alive_secs: u64,
    /// Gateway: how long the broker keeps the session (and queues messages) while the
    /// gateway is offline. At least one day.
    #[serde(default = "default_session_expiry_secs")]
    pub(crate) session_expiry_secs: u32,
    /// Relay: how long Leap's answer waits for the broker's PUBACKs before it relies on the
    /// outbox alone (the part is already committed there).
    #[serde(default = "default_ack_wait_ms")]
    pub(crate) ack_wait_ms: u64,
}

fn default_prefix() -> String {
    "leap-edge".into()
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_session_expiry_secs() -> u32 {
    7 * 86_400
}
/// Leap's answer must leave the relay well inside Leap's own 10 s timeout.
const MAX_ACK_WAIT_MS: u64 = 8_000;

fn default_ack_wait_ms() -> u64 {
    5_000
}

pub(crate) struct BrokerUrl {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The error for a URL with credentials in it, said without echoing the URL.
const USER_INFO: &str =
    "holds credentials ('user:password@'): give them as username and password instead";

pub(crate) fn parse_url(url: &str) -> Result<BrokerUrl, String> {
    let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r, 8883)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r, 1883)
    } else {
        return Err("must start with mqtts:// (or mqtt:// to a loopback broker)".into());
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('@') {
        // Credentials in the URL would be printed wherever the URL is (logs, status).
        return Err(USER_INFO.into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port {p:?}"))?),
        None => (authority, default_port),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err("no host".into());
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(
            "plain mqtt:// is allowed only to a loopback broker; use mqtts:// with ca".into(),
        );
    }
    Ok(BrokerUrl { tls, host, port })
}

impl MqttConfig {
    /// Problems with this table, each naming its key under `table` (`mqtt`, `uplink.mqtt`).
    pub(crate) fn problems(&self, table: &str) -> Vec<String> {
        let mut p = Vec::new();
        match parse_url(&self.url) {
            Ok(u) if u.tls && self.ca.is_none() => p.push(format!(
                "{table}.ca is missing: mqtts needs the broker's certificate or CA (PEM)"
            )),
            Ok(_) => {}
            // Never the URL itself when it holds a password.
            Err(e) if e == USER_INFO => p.push(format!("{table}.url {e}")),
            Err(e) => p.push(format!("{table}.url = \"{}\": {e}", self.url)),
        }
        if !valid_name(&self.client_id) {
            p.push(format!(
                "{table}.client_id = \"{}\": use letters, digits, '-' or '_'",
                self.client_id
            ));
        }
        if !valid_prefix(&self.topic_prefix) {
            p.push(format!(
                "{table}.topic_prefix = \"{}\": no '+', '#' or empty levels",
                self.topic_prefix
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push(format!(
                "{table}.client_cert and {table}.client_key go together"
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            p.push(format!("{table}.password needs {table}.username"));
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            p.push(format!("{table}.keep_alive_secs must be 5…3600"));
        }
        if self.ack_wait_ms > MAX_ACK_WAIT_MS {
            // SPEC §1: Leap gives up after about 10 s and retries the whole notification.
            p.push(format!(
                "{table}.ack_wait_ms = {} is longer than Leap waits for an answer (10 s): use at most {MAX_ACK_WAIT_MS}",
                self.ack_wait_ms
            ));
        }
        p
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.client_cert, &mut self.client_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_prefix(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#']) && s.split('/').all(|l| !l.is_empty())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> MqttConfig {
        toml::from_str(&format!("url = \"{url}\"\nclient_id = \"site-1\"\n")).unwrap()
    }

    #[test]
    fn plain_mqtt_only_on_loopback_and_mqtts_needs_a_ca() {
        assert!(cfg("mqtt://127.0.0.1:1883").problems("mqtt").is_empty());
        let p = cfg("mqtt://10.1.2.3:1883").problems("mqtt");
        assert!(
            p[0].contains("mqtt.url") && p[0].contains("loopback"),
            "{p:?}"
        );
        let p = cfg("mqtts://broker.example:8883").problems("uplink.mqtt");
        assert!(p[0].contains("uplink.mqtt.ca"), "{p:?}");
        let p = cfg("http://x").problems("mqtt");
        assert!(p[0].contains("mqtts://"), "{p:?}");
    }
}
