//! MQTT, the relay's second transport (SPEC §2.12 fleets): the relay publishes each
//! gateway's part of a notification to `<prefix>/<gateway>/dispatch` with QoS 1, and the
//! gateway, dialling out to the broker with a persistent session, stores it and only then
//! acknowledges it. The broker (Mosquitto, EMQX, HiveMQ, VerneMQ) is the durable queue
//! between them; we keep no queue of our own beyond the relay's outbox.
//!
//! Client: `rumqttc` (Bytebeam's, the most used async MQTT client in Rust, MQTT 5 with
//! session expiry, manual acks and last will; TLS through rustls with our ring provider).

pub(crate) mod link;
pub(crate) mod uplink;

use crate::secret::Secret;
use chrono::{DateTime, Utc};
use rumqttc::v5::MqttOptions;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The largest MQTT packet either side accepts. rumqttc's default (10 KiB) is smaller than
/// a group dispatch listing a few hundred meters; MQTT 5 brokers silently drop a message
/// larger than the subscriber's limit, so this is well above the webhook's body limit.
pub const MAX_PACKET_BYTES: u32 = 8 << 20;

/// One day: a gateway offline for less than this gets everything published meanwhile.
pub const MIN_SESSION_EXPIRY_SECS: u32 = 86_400;

/// `[mqtt]` (relay) and `[uplink.mqtt]` (gateway): how to reach the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtts://broker.example.net:8883`, or `mqtt://127.0.0.1:1883` (plain only on loopback).
    pub url: String,
    /// The client id: the gateway's name on a gateway (the broker's ACL keys on it).
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The broker's certificate or its CA (PEM); only it is trusted.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for brokers that authenticate by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topics are `<prefix>/<gateway>/dispatch` and `<prefix>/<gateway>/status`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Gateway: how long the broker keeps the session (and queues messages) while the
    /// gateway is offline. At least one day.
    #[serde(default = "default_session_expiry_secs")]
    pub session_expiry_secs: u32,
    /// Relay: how long Leap's answer waits for the broker's PUBACKs before it relies on the
    /// outbox alone (the part is already committed there).
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
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
fn default_ack_wait_ms() -> u64 {
    5_000
}

/// What a gateway publishes, retained, on `<prefix>/<gateway>/status`; its last will is the
/// same with `online: false`. The relay reads it for `relay status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub gateway: String,
    pub online: bool,
    /// When the gateway wrote this (absent in the last will: the broker sends it later).
    pub at: Option<DateTime<Utc>>,
    /// The last notification committed to the gateway's store.
    pub last_commit_at: Option<DateTime<Utc>>,
    pub next_boundary: Option<DateTime<Utc>>,
    /// Per local meter: the command in force (JSON text of the plan's command), if any.
    #[serde(default)]
    pub meters: BTreeMap<String, MeterState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterState {
    pub command: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub(crate) fn dispatch_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{gateway}/dispatch")
}

pub(crate) fn status_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{gateway}/status")
}

struct BrokerUrl {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Result<BrokerUrl, String> {
    let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r, 8883)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r, 1883)
    } else {
        return Err("must start with mqtts:// (or mqtt:// to a loopback broker)".into());
    };
    let authority = rest.trim_end_matches('/');
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
    pub fn problems(&self, table: &str) -> Vec<String> {
        let mut p = Vec::new();
        match parse_url(&self.url) {
            Ok(u) if u.tls && self.ca.is_none() => p.push(format!(
                "{table}.ca is missing: mqtts needs the broker's certificate or CA (PEM)"
            )),
            Ok(_) => {}
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

    /// Client options for this broker: TLS (ring) when `mqtts`, credentials, keep-alive.
    pub(crate) fn options(&self) -> Result<MqttOptions, String> {
        let u = parse_url(&self.url)?;
        let mut o = MqttOptions::new(self.client_id.clone(), u.host, u.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_secs));
        o.set_connection_timeout(10);
        o.set_max_packet_size(Some(MAX_PACKET_BYTES));
        if let Some(user) = &self.username {
            let pass = self.password.as_ref().map(|s| s.expose()).unwrap_or("");
            o.set_credentials(user.clone(), pass.to_string());
        }
        if u.tls {
            let cfg = self.tls_config()?;
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
            ));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let ca = self.ca.as_ref().ok_or("mqtts needs ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("ca {}: {e}", ca.display()))?
        {
            let c = c.map_err(|e| format!("ca {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("ca {}: {e}", ca.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("client_cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("client_key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("client certificate: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
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

/// Reconnect delay after `n` failed connection attempts: 1, 2, 4 … capped at 30 s.
pub(crate) fn reconnect_delay(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
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

    #[test]
    fn defaults_keep_a_session_a_week_and_topics_under_leap_edge() {
        let c = cfg("mqtt://localhost");
        assert!(c.session_expiry_secs >= MIN_SESSION_EXPIRY_SECS);
        assert_eq!(
            dispatch_topic(&c.topic_prefix, "site-1"),
            "leap-edge/site-1/dispatch"
        );
        let mut bad = c.clone();
        bad.topic_prefix = "a/+/b".into();
        bad.client_id = "a/b".into();
        assert_eq!(bad.problems("mqtt").len(), 2);
    }
}
