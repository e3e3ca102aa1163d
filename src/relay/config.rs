//! The relay's own configuration file (SPEC §2.12): strict like the gateway's, sharing its
//! `[server]`, `[auth]` and `[storage]` tables, plus one `[[gateways]]` per site.
//! `leap-edge relay check` parses and checks it and exits 78 when it is bad.

use crate::config::{
    AuthConfig, ConfigError, LimitsConfig, ServerConfig, StorageConfig, is_placeholder,
};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Keys shorter than this are refused, for Leap's key and for every gateway's key alike: a
/// relay key opens a whole fleet.
pub(crate) const MIN_KEY_CHARS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub(crate) server: ServerConfig,
    /// The key Leap sends to the relay.
    pub(crate) auth: AuthConfig,
    #[serde(default = "default_storage")]
    pub(crate) storage: StorageConfig,
    /// The same notification bounds as the gateway's (over them: 413 naming the bound).
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    #[serde(default)]
    pub(crate) relay: RelaySettings,
    #[serde(default)]
    pub(crate) gateways: Vec<GatewayConfig>,
    /// The broker for `transport = "mqtt"` gateways (SPEC §2.12 fleets).
    pub(crate) mqtt: Option<crate::mqtt::MqttConfig>,
    #[serde(skip)]
    pub(crate) source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelaySettings {
    /// `/metrics` and `/healthz` are served here (loopback), never on the public listener.
    #[serde(default = "default_metrics_listen")]
    pub(crate) metrics_listen: SocketAddr,
    /// `/healthz` fails when a gateway's oldest undelivered notification is older than this
    /// (Leap itself stops retrying after 50 attempts, so a stuck queue must be seen early).
    #[serde(default = "default_max_age_secs")]
    pub(crate) max_undelivered_age_secs: u64,
    /// Each delivery attempt gives up after this long (connect + answer).
    #[serde(default = "default_delivery_timeout_secs")]
    pub(crate) delivery_timeout_secs: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            metrics_listen: default_metrics_listen(),
            max_undelivered_age_secs: default_max_age_secs(),
            delivery_timeout_secs: default_delivery_timeout_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayConfig {
    /// A short name for logs, metrics and `relay status` (letters, digits, `-`, `_`).
    pub(crate) name: String,
    /// `http` (default): the relay posts to `url`. `mqtt`: the relay publishes to the
    /// gateway's topic on the `[mqtt]` broker and the gateway dials out to it.
    #[serde(default)]
    pub(crate) transport: Transport,
    /// The gateway's webhook as the relay reaches it: `http://127.0.0.1:PORT/leap/dispatch`
    /// (its reverse-tunnel port), `unix:/run/…/site.sock` (a socket `ssh -R` binds; then
    /// `path` is the webhook path), or `https://…` with `ca`. Not used with MQTT.
    #[serde(default)]
    pub(crate) url: String,
    /// The webhook path for a `unix:` url (an http(s) url carries its own).
    #[serde(default = "crate::config::default_path")]
    pub(crate) path: String,
    /// The value the gateway accepts in its auth header. Not used with MQTT (the broker
    /// authenticates the gateway).
    #[serde(default)]
    pub(crate) key: Secret,
    /// The header the gateway expects the key in.
    #[serde(default = "crate::config::default_auth_header")]
    pub(crate) header: String,
    /// Leap meter ids this gateway serves.
    pub(crate) meters: Vec<String>,
    /// For `https` urls: the gateway's certificate (or its CA), PEM. Only it is trusted.
    pub(crate) ca: Option<PathBuf>,
    /// For `https` urls: the name in the gateway's certificate (default: the url's host).
    pub(crate) tls_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    #[default]
    Http,
    Mqtt,
}

pub(crate) fn default_storage() -> StorageConfig {
    StorageConfig {
        path: PathBuf::from("/var/lib/leap-edge-relay/relay.db"),
        ..StorageConfig::default()
    }
}
pub(crate) fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}
pub(crate) fn default_max_age_secs() -> u64 {
    300
}
pub(crate) fn default_delivery_timeout_secs() -> u64 {
    10
}

impl RelayConfig {
    pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = toml::from_str::<RelayConfig>(&text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| crate::config::line_col(&text, s.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.storage.path);
        if let Some(tls) = cfg.server.tls.as_mut() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(m) = cfg.mqtt.as_mut() {
            m.resolve_paths(base);
        }
        for g in &mut cfg.gateways {
            if let Some(ca) = g.ca.as_mut() {
                fix(ca);
            }
        }
        cfg.source = Some(path.to_path_buf());
        cfg.check()
            .map_err(|problems| ConfigError::invalid(path, problems))?;
        Ok(cfg)
    }

    /// Semantic checks; every problem names its key and says what to do.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        self.check_server(&mut p);
        p.extend(self.limits.problems());
        if self.auth.keys.is_empty() {
            p.push("auth.keys is empty: add the key Leap sends in auth.header".into());
        }
        if !self.server.listen.ip().is_loopback()
            && self.auth.keys.iter().any(|k| is_placeholder(k.expose()))
        {
            p.push(
                "auth.keys: a key is an example's placeholder (it says change-me), printed in every copy of leap-edge: generate one with `openssl rand -hex 24`".into(),
            );
        }
        if self.auth.keys.iter().any(short) {
            p.push(format!(
                "auth.keys: every key must be at least {MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 24`)"
            ));
        }
        if !self.relay.metrics_listen.ip().is_loopback() {
            p.push(format!(
                "relay.metrics_listen = \"{}\" must be a loopback address: metrics are not public",
                self.relay.metrics_listen
            ));
        }
        if self.relay.max_undelivered_age_secs == 0 || self.relay.delivery_timeout_secs == 0 {
            p.push(
                "relay.max_undelivered_age_secs and relay.delivery_timeout_secs must be ≥ 1".into(),
            );
        }
        if let Some(m) = &self.mqtt {
            p.extend(m.problems("mqtt"));
        }
        self.check_gateways(&mut p);
        self.check_mqtt_size(&mut p);
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// An MQTT gateway tells the broker it takes packets up to `MAX_PACKET_BYTES`; a broker
    /// drops a larger one on delivery after answering the relay's publish with success, so
    /// the part would count as delivered and never arrive.
    fn check_mqtt_size(&self, p: &mut Vec<String>) {
        let max = crate::mqtt::MAX_PACKET_BYTES as usize - MQTT_HEADROOM;
        if self.server.max_body_bytes > max
            && self.gateways.iter().any(|g| g.transport == Transport::Mqtt)
        {
            p.push(format!(
                "server.max_body_bytes = {} is more than an MQTT gateway takes ({max} bytes: its maximum packet size less the topic and headers); a part that large would be dropped by the broker after the relay counted it delivered: set at most {max}",
                self.server.max_body_bytes
            ));
        }
    }

    /// The public listener: HTTPS unless loopback, the webhook path, the size and time
    /// limits, the TLS key.
    fn check_server(&self, p: &mut Vec<String>) {
        let s = &self.server;
        if s.tls.is_none() && !s.listen.ip().is_loopback() {
            p.push(format!(
                "server.listen = \"{}\" is not a loopback address and [server.tls] is absent: \
                 Leap must reach the relay over HTTPS; add [server.tls] cert/key",
                s.listen
            ));
        }
        if !s.path.starts_with('/') || matches!(s.path.as_str(), "/healthz" | "/metrics") {
            p.push(format!(
                "server.path = \"{}\" must start with '/' and not be /healthz or /metrics",
                s.path
            ));
        }
        if s.max_body_bytes < 1024 || s.max_connections == 0 || s.read_timeout_secs == 0 {
            p.push(
                "server: max_body_bytes ≥ 1024, max_connections ≥ 1, read_timeout_secs ≥ 1".into(),
            );
        }
        if s.connection_max_secs < s.read_timeout_secs {
            p.push("server.connection_max_secs must be at least server.read_timeout_secs".into());
        }
        if s.metrics_listen != crate::config::default_metrics_listen() {
            p.push(
                "server.metrics_listen is the gateway's setting; the relay's loopback listener \
                 for /metrics and /healthz is relay.metrics_listen"
                    .into(),
            );
        }
        if let Some(problem) = s
            .tls
            .as_ref()
            .and_then(|t| crate::server::tls::key_problem(&t.key))
        {
            let key = &s.tls.as_ref().expect("checked above").key;
            p.push(format!("server.tls.key = \"{}\": {problem}", key.display()));
        }
    }

    fn check_gateways(&self, p: &mut Vec<String>) {
        if self.gateways.is_empty() {
            p.push("no [[gateways]]: add one per site (name, url, key, meters)".into());
        }
        let mut names = HashMap::new();
        let mut meters: HashMap<String, &str> = HashMap::new();
        let mut urls: HashMap<String, String> = HashMap::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let at = format!("gateways[{i}]");
            let valid_name = !g.name.is_empty()
                && g.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                p.push(format!(
                    "{at}.name = \"{}\": use letters, digits, '-' or '_'",
                    g.name
                ));
            }
            if names.insert(g.name.clone(), i).is_some() {
                p.push(format!("{at}.name = \"{}\" appears twice", g.name));
            }
            if g.transport == Transport::Mqtt {
                self.check_mqtt_gateway(g, &at, p);
            } else {
                check_http_gateway(g, &at, &mut urls, p);
            }
            if g.meters.is_empty() {
                p.push(format!(
                    "{at}.meters is empty: list the Leap meter ids of that site"
                ));
            }
            for m in &g.meters {
                let id = m.trim().to_ascii_lowercase();
                if id.is_empty() {
                    p.push(format!("{at}.meters has an empty id"));
                } else if let Some(other) = meters.insert(id, &g.name) {
                    p.push(if other == g.name {
                        format!("{at}.meters lists meter \"{m}\" twice: keep one")
                    } else {
                        format!(
                            "{at}.meters: meter \"{m}\" is also served by gateway \"{other}\"; a meter belongs to one site"
                        )
                    });
                }
            }
        }
    }
}

/// An HTTP gateway's url (and that no other gateway has it) and key.
fn check_http_gateway(
    g: &GatewayConfig,
    at: &str,
    urls: &mut HashMap<String, String>,
    p: &mut Vec<String>,
) {
    match super::client::Target::parse(g) {
        Err(e) => p.push(format!("{at}.url = \"{}\": {e}", g.url)),
        Ok(t) => {
            if let Some(other) = urls.insert(t.destination(), g.name.clone()) {
                p.push(format!(
                    "{at}.url = \"{}\" is also gateway \"{other}\"'s: each site's gateway has \
                     its own address (a copied entry?)",
                    g.url
                ));
            }
        }
    }
    if is_placeholder(g.key.expose()) {
        p.push(format!(
            "{at}.key is an example's placeholder (it says change-me): generate one with `openssl rand -hex 24` and put it in that gateway's [auth] keys too"
        ));
    }
    if short(&g.key) {
        p.push(format!(
            "{at}.key must be at least {MIN_KEY_CHARS} characters (the key that gateway accepts)"
        ));
    }
    // What no HTTP request can carry: every delivery would fail before it is sent, retried
    // every minute for ever, never a dead letter an operator is shown.
    if hyper::header::HeaderName::from_bytes(g.header.as_bytes()).is_err() {
        p.push(format!(
            "{at}.header = \"{}\" is not an HTTP header name (letters, digits and - only, e.g. x-api-key)",
            g.header.escape_debug()
        ));
    }
    if hyper::header::HeaderValue::from_str(g.key.expose()).is_err() {
        p.push(format!(
            "{at}.key holds a character an HTTP header cannot carry (a control character or non-ASCII): generate one with `openssl rand -hex 24`"
        ));
    }
}

impl RelayConfig {
    fn check_mqtt_gateway(&self, g: &GatewayConfig, at: &str, p: &mut Vec<String>) {
        if !g.url.is_empty() {
            p.push(format!(
                "{at}: transport = \"mqtt\" takes no url (the gateway dials the broker); remove url or the transport"
            ));
        }
        if self.mqtt.is_none() {
            p.push(format!(
                "{at}: transport = \"mqtt\" needs an [mqtt] table with the broker's url"
            ));
        }
    }
}

/// Room in an MQTT packet for its fixed header, topic and properties beside the body.
const MQTT_HEADROOM: usize = 4096;

fn short(k: &Secret) -> bool {
    k.expose().trim().chars().count() < MIN_KEY_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn parse(gateways: &str) -> Result<(), Vec<String>> {
        let text =
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n{gateways}");
        toml::from_str::<RelayConfig>(&text).unwrap().check()
    }

    /// A body limit above what an MQTT gateway takes is refused only when a gateway is on
    /// MQTT: its parts would be dropped by the broker after a successful PUBACK.
    #[test]
    fn a_body_limit_over_the_mqtt_packet_size_is_refused_with_mqtt_gateways() {
        let text = |body: usize, transport: &str| {
            let gw = if transport == "mqtt" {
                "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"relay\"\n\
                 [[gateways]]\nname = \"a\"\ntransport = \"mqtt\"\nmeters = [\"m1\"]\n"
                    .to_string()
            } else {
                format!(
                    "[[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{KEY}\"\nmeters = [\"m1\"]\n"
                )
            };
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {body}\n[auth]\nkeys = [\"{KEY}\"]\n{gw}"
            )
        };
        let check = |t: String| toml::from_str::<RelayConfig>(&t).unwrap().check();
        let err = check(text(16 << 20, "mqtt")).unwrap_err();
        assert!(
            err.iter().any(|e| e
                .contains("server.max_body_bytes = 16777216 is more than an MQTT gateway takes")),
            "{err:?}"
        );
        assert_eq!(check(text(1 << 20, "mqtt")), Ok(()));
        assert_eq!(check(text(16 << 20, "http")), Ok(()));
    }

    /// The relay's replay window adds the start-ahead limit to the clock at its start: a
    /// value meant as "no limit" panicked it into a restart loop.
    #[test]
    fn an_enormous_start_ahead_limit_is_refused() {
        let err = parse("[limits]\nmax_start_ahead_days = 4294967295\n").unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.contains("limits.max_start_ahead_days")),
            "{err:?}"
        );
    }

    #[test]
    fn a_meter_in_two_gateways_and_a_short_key_are_refused() {
        let err = parse(&format!(
            "[[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{KEY}\"\nmeters = [\"M1\"]\n\
             [[gateways]]\nname = \"b\"\nurl = \"http://127.0.0.1:2/x\"\nkey = \"short\"\nmeters = [\"m1\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.contains("also served by gateway \"a\"")),
            "{err:?}"
        );
        assert!(err.iter().any(|e| e.contains("gateways[1].key")), "{err:?}");
    }

    #[test]
    fn plain_http_only_to_loopback_and_https_needs_a_ca() {
        let err = parse(&format!(
            "[[gateways]]\nname = \"a\"\nurl = \"http://10.0.0.5:8443/x\"\nkey = \"{KEY}\"\nmeters = [\"M1\"]\n\
             [[gateways]]\nname = \"b\"\nurl = \"https://127.0.0.1:8443/x\"\nkey = \"{KEY}\"\nmeters = [\"M2\"]\n"
        ))
        .unwrap_err();
        assert!(err.iter().any(|e| e.contains("gateways[0].url")), "{err:?}");
        assert!(
            err.iter()
                .any(|e| e.contains("gateways[1].url") && e.contains("ca")),
            "{err:?}"
        );
        assert!(parse(&format!(
            "[[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:8443/x\"\nkey = \"{KEY}\"\nmeters = [\"M1\"]\n"
        ))
        .is_ok());
    }

    /// A copied gateway entry still pointing at the first site is refused.
    #[test]
    fn a_shared_gateway_address_is_refused() {
        let err = parse(&format!(
            "[[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{KEY}\"\nmeters = [\"M1\"]\n\
             [[gateways]]\nname = \"b\"\nurl = \"http://127.0.0.1:2/y\"\nkey = \"{KEY}\"\nmeters = [\"M2\"]\n\
             [[gateways]]\nname = \"c\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{KEY}\"\nmeters = [\"M3\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.starts_with("gateways[2].url") && e.contains("gateway \"a\"'s")),
            "{err:?}"
        );
        assert!(
            !err.iter().any(|e| e.starts_with("gateways[1].url")),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n[[gateways]]\nnme = \"a\"\n"
        );
        let e = toml::from_str::<RelayConfig>(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `nme`"), "{e}");
    }
}
