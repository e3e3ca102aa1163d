//! MQTT, the relay's second transport (SPEC §2.12 fleets): the relay publishes each
//! gateway's part of a notification to `<prefix>/<gateway>/dispatch` with QoS 1, and the
//! gateway, dialling out to the broker with a persistent session, stores it and only then
//! acknowledges it. The broker (Mosquitto, EMQX, HiveMQ, VerneMQ) is the durable queue
//! between them; we keep no queue of our own beyond the relay's outbox.
//!
//! Client: `rumqttc` (Bytebeam's, the most used async MQTT client in Rust, MQTT 5 with
//! session expiry, manual acks and last will; TLS through rustls with our ring provider).

pub(crate) mod broker_state;
pub(crate) mod link;
pub(crate) mod uplink;

use crate::config::mqtt::parse_url;
use chrono::{DateTime, Utc};
use rumqttc::v5::MqttOptions;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest MQTT packet either side accepts. rumqttc's default (10 KiB) is smaller than
/// a group dispatch listing a few hundred meters; MQTT 5 brokers silently drop a message
/// larger than the subscriber's limit, so this is well above the webhook's body limit.
pub const MAX_PACKET_BYTES: u32 = 8 << 20;

pub(crate) use crate::config::MqttConfig;

/// What a gateway publishes, retained, on `<prefix>/<gateway>/status`; its last will is the
/// same with `online: false`. The relay reads it for `relay status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StatusMessage {
    pub(crate) gateway: String,
    pub(crate) online: bool,
    /// When the gateway wrote this (absent in the last will: the broker sends it later).
    pub(crate) at: Option<DateTime<Utc>>,
    /// The last notification committed to the gateway's store.
    pub(crate) last_commit_at: Option<DateTime<Utc>>,
    pub(crate) next_boundary: Option<DateTime<Utc>>,
    /// Per local meter: the command in force (JSON text of the plan's command), if any.
    #[serde(default)]
    pub(crate) meters: BTreeMap<String, MeterState>,
    /// Messages acknowledged without being stored since the gateway started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refused: Option<crate::admin::state::RefusedMessages>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MeterState {
    pub(crate) command: Option<String>,
    pub(crate) until: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
}

pub(crate) fn dispatch_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{gateway}/dispatch")
}

pub(crate) fn status_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{gateway}/status")
}

impl MqttConfig {
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
        if roots.is_empty() {
            return Err(format!(
                "ca {}: no PEM certificate in it (the broker's CA certificate goes there)",
                ca.display()
            ));
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

/// Reconnect delay after `n` failed connection attempts: 1, 2, 4 … capped at 30 s, each
/// stretched by up to half by the client's id. A broker restart drops a whole fleet at one
/// instant; without the spread every gateway would retry its TLS handshake at the same
/// moments, and those that time out together retry together again.
pub(crate) fn reconnect_delay(n: u32, client_id: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let base = Duration::from_secs((1u64 << n.min(5)).min(30));
    // DefaultHasher::new() has fixed keys: the same id keeps the same place in the spread.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    let spread = (h.finish() % 1000) as f64 / 2000.0;
    base.mul_f64(1.0 + spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mqtt::MIN_SESSION_EXPIRY_SECS;

    fn cfg(url: &str) -> MqttConfig {
        toml::from_str(&format!("url = \"{url}\"\nclient_id = \"site-1\"\n")).unwrap()
    }

    #[test]
    fn reconnect_delays_grow_to_30_s_and_differ_between_clients() {
        for id in ["site-1", "site-2", "relay"] {
            let d = reconnect_delay(1, id);
            assert!(
                d >= Duration::from_secs(2) && d < Duration::from_secs(3),
                "{d:?}"
            );
            let d = reconnect_delay(9, id);
            assert!(
                d >= Duration::from_secs(30) && d < Duration::from_secs(45),
                "{d:?}"
            );
            assert_eq!(d, reconnect_delay(9, id), "the same id, the same delay");
        }
        let spread: std::collections::BTreeSet<_> = (0..50)
            .map(|i| reconnect_delay(5, &format!("site-{i}")).as_millis())
            .collect();
        assert!(spread.len() > 40, "{spread:?}");
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
