//! Semantic checks that types cannot express. Each problem is one sentence that names the
//! key and says what to do; all problems are reported at once.

use super::Config;
use std::collections::HashSet;

/// The shortest accepted API key (issue 10.6): 32 characters of `openssl rand -hex` are
/// 128 bits, beyond guessing through a webhook.
pub(crate) const MIN_KEY_CHARS: usize = 32;

/// A key copied from an example file (`change-me`, `changeme`, any case): public, since
/// every copy of leap-edge carries it.
pub(crate) fn is_placeholder(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("change-me") || k.contains("changeme") || k.contains("change_me")
}

/// What in a value written into a CSV column would break the row (Leap's interval data
/// has no quoting), named for the error; `None` when the value is safe.
fn csv_breaking(v: &str) -> Option<&'static str> {
    if v.contains(',') {
        Some("a comma")
    } else if v.contains('"') {
        Some("a double quote")
    } else if v.contains(['\n', '\r']) {
        Some("a line break")
    } else if v != v.trim() {
        Some("spaces at its start or end")
    } else {
        None
    }
}

impl Config {
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        self.check_server(&mut p);
        self.check_limits(&mut p);
        self.check_auth(&mut p);
        self.check_site(&mut p);
        self.check_meters(&mut p);
        self.check_devices(&mut p);
        if let Some(c) = csv_breaking(&self.intervals.region) {
            p.push(format!(
                "intervals.region = {:?} contains {c}, which would split every row of the \
                 interval data sent to Leap: give one region name such as \"CAISO\"",
                self.intervals.region
            ));
        }
        if let Some(m) = &self.uplink.mqtt {
            p.extend(m.problems("uplink.mqtt"));
            if m.session_expiry_secs < super::mqtt::MIN_SESSION_EXPIRY_SECS {
                p.push(format!(
                    "uplink.mqtt.session_expiry_secs must be at least {} (one day), so \
                     dispatches published while the gateway is offline are kept",
                    super::mqtt::MIN_SESSION_EXPIRY_SECS
                ));
            }
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    fn check_server(&self, p: &mut Vec<String>) {
        let s = &self.server;
        if s.tls.is_none() && !s.listen.ip().is_loopback() {
            p.push(format!(
                "server.listen = \"{}\" is not a loopback address and [server.tls] is absent: \
                 plain HTTP is allowed only on loopback (behind a tunnel that terminates TLS); \
                 add [server.tls] cert/key or listen on 127.0.0.1",
                s.listen
            ));
        }
        if !s.path.starts_with('/') || s.path.contains(char::is_whitespace) {
            p.push(format!(
                "server.path = \"{}\" must start with '/' and contain no spaces",
                s.path
            ));
        }
        if s.path.contains(['?', '#']) {
            // A request's path never holds its query: every push would be a 404.
            p.push(format!(
                "server.path = \"{}\" holds a query ('?') or fragment ('#'): give the path \
                 only; the key goes in the [auth] header, not the URL",
                s.path.split(['?', '#']).next().unwrap_or_default()
            ));
        }
        if matches!(s.path.as_str(), "/healthz" | "/metrics") {
            p.push(format!(
                "server.path = \"{}\" is reserved; choose another path",
                s.path
            ));
        }
        if s.max_body_bytes < 1024 {
            p.push("server.max_body_bytes must be at least 1024".into());
        }
        if s.max_connections == 0 {
            p.push("server.max_connections must be at least 1".into());
        }
        if s.read_timeout_secs == 0 {
            p.push("server.read_timeout_secs must be at least 1".into());
        }
        if s.connection_max_secs < s.read_timeout_secs {
            p.push("server.connection_max_secs must be at least server.read_timeout_secs".into());
        }
        if !s.metrics_listen.ip().is_loopback() {
            p.push(format!(
                "server.metrics_listen = \"{}\" is not a loopback address: /metrics and /healthz \
                 show the site's load and devices to anyone who can reach them; keep them on \
                 127.0.0.1 and scrape through the gateway's own Prometheus agent or an SSH tunnel",
                s.metrics_listen
            ));
        }
        if s.metrics_listen.port() != 0 && s.metrics_listen == s.listen {
            p.push("server.metrics_listen must differ from server.listen".into());
        }
        self.check_tls(p);
    }

    fn check_limits(&self, p: &mut Vec<String>) {
        p.extend(self.limits.problems());
    }

    fn check_auth(&self, p: &mut Vec<String>) {
        let h = &self.auth.header;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.push(format!(
                "auth.header = \"{h}\" is not a valid HTTP header name"
            ));
        }
        if self.auth.keys.is_empty() {
            p.push(
                "auth.keys is empty: add at least one key (the value Leap sends in auth.header)"
                    .into(),
            );
        }
        self.check_keys(p);
    }

    /// Issue 10.10: the TLS files exist, and the key is neither world-readable nor encrypted.
    /// (Whether the key is safe to use is `preflight`'s: the server knows.)
    fn check_tls(&self, p: &mut Vec<String>) {
        let Some(tls) = &self.server.tls else {
            return;
        };
        for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            if let Err(e) = std::fs::metadata(path) {
                p.push(format!("server.tls.{key} = \"{}\": {e}", path.display()));
            }
        }
    }

    /// Issue 10.6: long random keys, no stray whitespace. Messages name the key by its
    /// position only: a key's value never reaches a terminal or the journal.
    fn check_keys(&self, p: &mut Vec<String>) {
        for (i, k) in self.auth.keys.iter().enumerate() {
            let v = k.expose();
            // A listener with TLS is the one Leap reaches (through the tunnel it listens
            // on loopback too); plain HTTP on loopback is the development setup.
            let public = !self.server.listen.ip().is_loopback() || self.server.tls.is_some();
            if is_placeholder(v) && public {
                p.push(format!(
                    "auth.keys[{i}] is an example's placeholder (it says change-me), printed in \
                     every copy of leap-edge: generate one with `openssl rand -hex 32` (allowed \
                     only on plain HTTP on loopback, for development)"
                ));
            }
            if v.trim() != v {
                p.push(format!(
                    "auth.keys[{i}] has spaces or line breaks at its start or end; Leap sends the \
                     key without them, so it could never match: remove them"
                ));
            }
            if v.chars().count() < MIN_KEY_CHARS {
                p.push(format!(
                    "auth.keys[{i}] is shorter than {MIN_KEY_CHARS} characters; generate a key \
                     with `openssl rand -hex 32` (64 characters), put it here and in Leap's \
                     webhook headers"
                ));
            }
        }
    }

    fn check_site(&self, p: &mut Vec<String>) {
        let s = &self.site;
        if !(s.export_limit_kw >= 0.0 && s.export_limit_kw.is_finite()) {
            p.push("site.export_limit_kw must be a number ≥ 0 (0 = never export)".into());
        }
        if !(s.import_margin_kw >= 0.0 && s.import_margin_kw.is_finite()) {
            p.push("site.import_margin_kw must be a number ≥ 0".into());
        }
        if !(0.0..100.0).contains(&s.reserve_soc_pct) {
            p.push("site.reserve_soc_pct must be between 0 and 100".into());
        }
        if !(s.fallback_site_load_kw >= 0.0 && s.fallback_site_load_kw.is_finite()) {
            p.push("site.fallback_site_load_kw must be a number ≥ 0".into());
        }
        if let Some(v) = s.service_kw.filter(|v| !(*v > 0.0 && v.is_finite())) {
            p.push(format!(
                "site.service_kw = {v} must be > 0 (the site's grid connection in kW)"
            ));
        }
        if !(100..=60_000).contains(&s.control_period_ms) {
            p.push("site.control_period_ms must be between 100 and 60000".into());
        }
        if self.storage.retention_days == 0 {
            p.push("storage.retention_days must be at least 1 (SPEC §2.5 keeps every notification raw for it; default 400)".into());
        }
    }

    fn check_meters(&self, p: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for (i, m) in self.meters.iter().enumerate() {
            if m.id.trim().is_empty() {
                p.push(format!("meters[{i}].id is empty: give Leap's meter id"));
            }
            if let Some(c) = csv_breaking(&m.id) {
                p.push(format!(
                    "meters[{i}].id = {:?} contains {c}: Leap's meter ids are UUIDs (and the \
                     id is a column of the interval data sent to Leap); copy it again from Leap",
                    m.id
                ));
            }
            if !seen.insert(m.id.to_ascii_lowercase()) {
                p.push(format!("meters[{i}].id = \"{}\" appears twice", m.id));
            }
            if !self.devices.contains_key(&m.device) {
                let known: Vec<&str> = self.devices.keys().map(String::as_str).collect();
                p.push(format!(
                    "meters[{i}].device = \"{}\" names no [devices.{}] table (known: {})",
                    m.device,
                    m.device,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ));
            }
            if !(m.weight > 0.0 && m.weight.is_finite()) {
                p.push(format!("meters[{i}].weight must be > 0"));
            }
        }
    }

    fn check_devices(&self, p: &mut Vec<String>) {
        // One battery commanded by two loops (a copied table): each overwrites the other's
        // setpoint and reversion. Only devices a meter uses are driven.
        let mut at: std::collections::HashMap<(String, u16, u8), &str> =
            std::collections::HashMap::new();
        for name in self.meters.iter().map(|m| m.device.as_str()) {
            let Some(d) = self.devices.get(name) else {
                continue;
            };
            let key = (d.host.trim().to_ascii_lowercase(), d.port, d.unit_id);
            match at.insert(key, name) {
                Some(other) if other != name => p.push(format!(
                    "devices.{name} and devices.{other} are the same device ({}:{} unit {}): \
                     two control loops would command one battery; give each meter its own \
                     device, or fix the copied host, port or unit_id",
                    d.host, d.port, d.unit_id
                )),
                _ => {}
            }
        }
        for (name, d) in &self.devices {
            if d.host.trim().is_empty() {
                p.push(format!("devices.{name}.host is empty"));
            }
            if d.port == 0 {
                p.push(format!("devices.{name}.port must not be 0"));
            }
            if !(50..=60_000).contains(&d.timeout_ms) {
                p.push(format!(
                    "devices.{name}.timeout_ms must be between 50 and 60000"
                ));
            }
            if d.reversion_secs < 4 {
                p.push(format!(
                    "devices.{name}.reversion_secs must be at least 4 (it is refreshed at half its period)"
                ));
            }
            for (key, v) in [
                ("max_discharge_kw", d.max_discharge_kw),
                ("max_charge_kw", d.max_charge_kw),
                ("capacity_kwh", d.capacity_kwh),
            ] {
                if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                    p.push(format!("devices.{name}.{key} = {v} must be > 0"));
                }
            }
            let profile = self.devices_dir.join(format!("{}.toml", d.profile));
            if !profile.is_file() {
                p.push(format!(
                    "devices.{name}.profile = \"{}\": no file {} (profiles live in devices_dir)",
                    d.profile,
                    profile.display()
                ));
            }
        }
    }
}

impl super::LimitsConfig {
    /// `[limits]` problems, for the gateway's file and the relay's.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, v) in [
            ("max_meter_ids", self.max_meter_ids),
            ("max_timeslots", self.max_timeslots),
            ("max_timeslot_hours", self.max_timeslot_hours as usize),
            ("max_start_ahead_days", self.max_start_ahead_days as usize),
        ] {
            if v == 0 {
                p.push(format!("limits.{key} must be at least 1"));
            }
        }
        // Added to the clock at every push and at the relay's start: a value meant as "no
        // limit" (4294967295) overflowed it and panicked. A century is the bound (tests and
        // replays of old samples use decades); Leap dispatches days ahead.
        if self.max_start_ahead_days > 36_600 {
            p.push(format!(
                "limits.max_start_ahead_days = {} is more than 36600 (a century); Leap dispatches days ahead",
                self.max_start_ahead_days
            ));
        }
        if self.max_timeslot_hours > 876_600 {
            p.push(format!(
                "limits.max_timeslot_hours = {} is more than 876600 (a century)",
                self.max_timeslot_hours
            ));
        }
        p
    }
}
