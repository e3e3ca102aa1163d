//! Configuration: strict TOML (every unknown key is an error naming file, line and the
//! nearest valid key), then a semantic `check()` that catches what types cannot
//! (plain HTTP on a public address, a meter pointing at a missing device, ...).
//! Imports only leaf modules; checks that need another module's rules are in `preflight`.
//! `leap-edge config check` runs both and exits 78 (EX_CONFIG) on failure.

mod check;
pub mod intervals;
pub mod leap;
mod lines;
pub mod mqtt;
mod schema;
mod sim;
mod suggest;

pub(crate) use check::is_placeholder;
pub use intervals::IntervalsConfig;
pub use leap::{LeapConfig, ScheduleConfig};
pub use mqtt::MqttConfig;
pub use schema::*;
pub use sim::{NormalMode, PvCoupling};

use std::path::{Path, PathBuf};

/// What to do about a configuration that cannot be read: a missing file is the wrong path;
/// a refused one, on a gateway, the technician outside the service's group.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "it is readable by root and the leap-edge group only: run with sudo, or join the group with `sudo usermod -aG leap-edge $USER` and log in again"
        }
        _ => "give the right file with --config PATH",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{path}: cannot read the configuration: {source} ({})",
        read_hint(source)
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Each problem on its own line, as `path:line: problem` where the file writes the key
    /// (built by [`ConfigError::invalid`]).
    #[error("{}", problems.join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// The semantic problems of the file at `path`, each located at its key's line.
    pub(crate) fn invalid(path: &Path, problems: Vec<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: lines::locate(path, problems),
        }
    }
}

/// The exit code for a bad configuration (sysexits EX_CONFIG), as ntpd-rs uses.
pub const EXIT_CONFIG: u8 = 78;

impl Config {
    /// Read, parse and check a configuration file. Relative paths inside it are resolved
    /// against the file's own folder, so the daemon behaves the same from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Config::read(path)?;
        cfg.check()
            .map_err(|problems| ConfigError::invalid(path, problems))?;
        Ok(cfg)
    }

    /// What `release` needs to hand back the batteries of the daemon that wrote it, as
    /// that daemon loaded it (paths absolute, secrets masked): the file on disk may have
    /// been edited or broken since, and `release` runs after a crash too (SPEC §2.10).
    pub fn running_snapshot(&self) -> Result<String, String> {
        let body = toml::to_string(self).map_err(|e| e.to_string())?;
        Ok(format!(
            "# The configuration this leap-edge daemon started with (secrets masked), for\n\
             # `leap-edge release` after it stops; written at start, removed with /run.\n{body}"
        ))
    }

    /// [`Config::load`] for `leap-edge release` (the unit's `ExecStopPost`): only a file
    /// that cannot be read or parsed is an error. Every other problem is returned beside
    /// the configuration, because releasing the batteries needs only `[devices]`, and a
    /// half-finished key rotation must not leave a battery under remote control. `status`
    /// and `override` use it too: they need only the socket, the meters and the database.
    /// A key this version does not know (an upgrade that refused the file, a typo) is
    /// left out with a warning rather than refused: the unit's `ExecStopPost` must still
    /// hand the batteries back after any stop.
    pub fn load_for_release(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = Config::read_text(path)?;
        let (cfg, mut problems) = Config::from_text_skipping_unknown(&text, path)?;
        problems.extend(cfg.check().err().unwrap_or_default());
        Ok((cfg, problems))
    }

    /// [`Config::from_text`], with what names an unknown key commented out and named (at
    /// most 20; see [`unknown_span`]; a key whose value spans lines is not skipped: its
    /// error stands).
    fn from_text_skipping_unknown(
        text: &str,
        path: &Path,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut skipped = Vec::new();
        let first = match Config::from_text(text, path) {
            Ok(cfg) => return Ok((cfg, skipped)),
            Err(e) => e,
        };
        let mut err = first;
        while skipped.len() < 20 {
            let span = match &err {
                ConfigError::Parse { line, message, .. }
                    if *line > 0 && message.contains("unknown field") =>
                {
                    unknown_span(&lines, *line - 1)
                }
                _ => None,
            };
            let Some((span, what)) = span else { break };
            skipped.push(format!("{err} ({what} is ignored here)"));
            for l in &mut lines[span] {
                *l = format!("# {l}");
            }
            match Config::from_text(&lines.join("\n"), path) {
                Ok(cfg) => return Ok((cfg, skipped)),
                Err(e) => err = e,
            }
        }
        // Left out and still not read (a value over several lines): the key's own error
        // says what to fix, not the line the leaving out broke.
        let unknown =
            matches!(&err, ConfigError::Parse { message, .. } if message.contains("unknown field"));
        if unknown {
            Err(err)
        } else {
            Err(Config::from_text(text, path).err().unwrap_or(err))
        }
    }

    fn read_text(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Read and parse the file, with its relative paths resolved against its own folder; no
    /// semantic check yet.
    fn read(path: &Path) -> Result<Config, ConfigError> {
        Config::from_text(&Config::read_text(path)?, path)
    }

    /// [`Config::read`] of text already read from `path`.
    fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Config::parse_str(text, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        let ids: Vec<String> = cfg.meters.iter().map(|m| m.id.clone()).collect();
        cfg.schedule.spread(&ids);
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parse only (no semantic check, no path resolution); `path` names the source in errors.
    pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: redact_secret(text, e.span(), suggest::improve(e.message())),
            }
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.storage.path);
        fix(&mut self.admin.socket);
        fix(&mut self.devices_dir);
        if let Some(m) = self.uplink.mqtt.as_mut() {
            m.resolve_paths(base);
        }
        if let Some(tls) = self.server.tls.as_mut() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
    }
}

/// Issue 10.6: a type error inside `[auth]` (e.g. `keys = "…"` instead of a list) must
/// not echo the key into a terminal or the journal: every quoted value in the message is
/// replaced. Other tables keep their values, which help to find the mistake.
fn redact_secret(text: &str, span: Option<std::ops::Range<usize>>, message: String) -> String {
    let Some(span) = span else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let in_auth = before
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .is_some_and(|l| l.trim().trim_matches(['[', ']']).trim() == "auth");
    let inline_auth = before
        .rsplit('\n')
        .next()
        .is_some_and(|l| l.trim_start().starts_with("auth"));
    if !(in_auth || inline_auth) {
        return message;
    }
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"(value hidden)");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// The lines to leave out for an unknown key on line `at` (0-based), and what they are: a
/// table header with its whole table (its keys must not join the table above), or a
/// `key = value` line (one that holds an inline table takes all of it: a whole device, which
/// `release` then names as not released). None for anything else.
fn unknown_span(lines: &[String], at: usize) -> Option<(std::ops::Range<usize>, &'static str)> {
    let t = lines[at].trim_start();
    if t.starts_with('[') {
        let end = (at + 1..lines.len())
            .find(|i| lines[*i].trim_start().starts_with('['))
            .unwrap_or(lines.len());
        return Some((at..end, "that table"));
    }
    let key_len = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(0);
    let key_line = key_len > 0 && t[key_len..].trim_start().starts_with('=');
    match (key_line, t.contains('{')) {
        (true, false) => Some((at..at + 1, "that line")),
        (true, true) => Some((at..at + 1, "that line, and all it holds,")),
        (false, _) => None,
    }
}

/// 1-based line and column of a byte offset, for `file:line:col` errors (config and profiles).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Config {
    /// The configured meter for a Leap meter id (ids compare case-insensitively: uuids).
    pub(crate) fn meter(&self, leap_id: &str) -> Option<&MeterConfig> {
        self.meters
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(leap_id))
    }

    /// SPEC §2.7: the local meters a timeslot applies to.
    pub(crate) fn local_meters<'a>(&'a self, ts: &crate::model::Timeslot) -> Vec<&'a MeterConfig> {
        ts.meter_ids
            .iter()
            .filter_map(|id| self.meter(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_key_names_line_and_suggestion() {
        let text = "[server]\nlistn = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"k\"]\n";
        let err = Config::parse_str(text, Path::new("site.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("site.toml:2:"), "{msg}");
        assert!(msg.contains("unknown field `listn`"), "{msg}");
        assert!(msg.contains("did you mean `listen`"), "{msg}");
    }

    #[test]
    fn type_error_in_auth_never_echoes_the_key() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = \"sup3r-s3cret-value\"\n";
        let msg = Config::parse_str(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("c.toml:4:"), "{msg}");
        assert!(!msg.contains("sup3r"), "{msg}");
        assert!(msg.contains("value hidden"), "{msg}");
        // Outside [auth], values stay visible.
        let text = "[server]\nlisten = 5\n[auth]\nkeys = []\n";
        let msg = Config::parse_str(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("5"), "{msg}");
    }

    /// An unknown key's line is left out; an unknown table with all its lines (its keys
    /// must not join the table above: `unit_id` of a `[simm]` would land in a device); an
    /// inline table whole (the device is then missing, which `release` reports).
    #[test]
    fn unknown_keys_and_tables_are_left_out_whole() {
        let base = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
        let skip = |extra: &str| {
            Config::from_text_skipping_unknown(&format!("{base}{extra}"), Path::new("c.toml"))
        };
        let (_, warned) =
            skip("[devices.b]\nprofile = \"sunspec\"\nhost = \"h\"\nreversion_sec = 60\n").unwrap();
        assert!(warned[0].contains("reversion_sec"), "{warned:?}");
        let (c, warned) = skip(
            "[devices.b]\nprofile = \"sunspec\"\nhost = \"h\"\n[simm]\nunit_id = 3\n[devices.c]\nprofile = \"sunspec\"\nhost = \"i\"\n",
        )
        .unwrap();
        assert!(warned[0].contains("that table"), "{warned:?}");
        assert_ne!(
            c.devices["b"].unit_id, 3,
            "a key moved into the table above"
        );
        assert!(c.devices.contains_key("c"));
        let (c, _) =
            skip("[devices]\nb = { profile = \"sunspec\", host = \"h\", reversion_sec = 60 }\n")
                .unwrap();
        assert!(!c.devices.contains_key("b"));
    }

    /// A start-ahead limit meant as "no limit" overflowed the clock and panicked every push:
    /// refused by the check instead.
    #[test]
    fn an_enormous_start_ahead_limit_is_refused() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[limits]\nmax_start_ahead_days = 4294967295\n";
        let p = Config::parse_str(text, Path::new("c.toml"))
            .unwrap()
            .check()
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("limits.max_start_ahead_days = 4294967295"),
            "{p}"
        );
    }

    /// A meter id or region that would split the interval data's CSV rows is refused.
    #[test]
    fn csv_breaking_meter_id_and_region_are_refused() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[intervals]\nregion = \"CAISO, NP15\"\n[[meters]]\nid = \"aa, bb\"\ndevice = \"x\"\n";
        let p = Config::parse_str(text, Path::new("c.toml"))
            .unwrap()
            .check()
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("meters[0].id = \"aa, bb\" contains a comma"),
            "{p}"
        );
        assert!(
            p.contains("intervals.region = \"CAISO, NP15\" contains a comma"),
            "{p}"
        );
    }

    /// A query in server.path (every push would be a 404) and a broker URL holding a
    /// password (printed wherever the URL is) are refused; the password is not echoed.
    #[test]
    fn a_query_in_the_path_and_credentials_in_a_broker_url_are_refused() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\npath = \"/leap/dispatch?key=abc\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[uplink.mqtt]\nurl = \"mqtts://site-a:s3cret-pw@broker.example:8883\"\nclient_id = \"site-a\"\nca = \"ca.pem\"\n";
        let p = Config::parse_str(text, Path::new("c.toml"))
            .unwrap()
            .check()
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("server.path = \"/leap/dispatch\" holds a query"),
            "{p}"
        );
        assert!(!p.contains("key=abc"), "{p}");
        assert!(p.contains("uplink.mqtt.url holds credentials"), "{p}");
        assert!(!p.contains("s3cret"), "the password is never shown: {p}");
    }

    /// Two device tables naming the same battery, each driven by its own meter, are
    /// refused (two loops would overwrite each other's setpoint).
    #[test]
    fn two_tables_for_one_device_are_refused() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[devices.a]\nprofile = \"sunspec\"\nhost = \"10.0.0.5\"\n[devices.b]\nprofile = \"sunspec\"\nhost = \"10.0.0.5\"\n[devices.c]\nprofile = \"sunspec\"\nhost = \"10.0.0.5\"\nunit_id = 2\n[[meters]]\nid = \"m1\"\ndevice = \"a\"\n[[meters]]\nid = \"m2\"\ndevice = \"b\"\n[[meters]]\nid = \"m3\"\ndevice = \"c\"\n";
        let p = Config::parse_str(text, Path::new("c.toml"))
            .unwrap()
            .check()
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("devices.b and devices.a are the same device (10.0.0.5:502 unit 1)"),
            "{p}"
        );
        assert!(!p.contains("devices.c and"), "{p}");
    }

    /// The snapshot `release` reads after a stop loads back with the same devices.
    #[test]
    fn the_running_snapshot_loads_back_for_release() {
        let text = "devices_dir = \"/usr/share/leap-edge/devices\"\n[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[storage]\npath = \"/var/lib/leap-edge/leap-edge.db\"\n[devices.bess]\nprofile = \"sunspec\"\nhost = \"10.0.0.5\"\nport = 1502\nunit_id = 3\n[[meters]]\nid = \"m1\"\ndevice = \"bess\"\n";
        let c = Config::parse_str(text, Path::new("c.toml")).unwrap();
        let snap = c.running_snapshot().unwrap();
        assert!(!snap.contains("0123456789abcdef"), "secrets masked: {snap}");
        // What the systemd check in CI looks for.
        assert!(snap.contains("\n[server]\n"), "{snap}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running-config.toml");
        std::fs::write(&path, snap).unwrap();
        let (back, _) = Config::load_for_release(&path).unwrap();
        let d = &back.devices["bess"];
        assert_eq!((d.host.as_str(), d.port, d.unit_id), ("10.0.0.5", 1502, 3));
        assert_eq!(back.devices_dir, c.devices_dir);
        assert_eq!(back.storage.path, c.storage.path);
    }

    /// The repository's development key works on loopback; on a listener Leap can reach it
    /// is refused, naming the key by position only.
    #[test]
    fn an_example_key_is_refused_off_loopback() {
        let text = |listen: &str| {
            format!(
                "[server]\nlisten = \"{listen}\"\n[auth]\nkeys = [\"dev-key-change-me-0123456789abcdef\"]\n"
            )
        };
        let problems = |listen: &str| {
            Config::parse_str(&text(listen), Path::new("c.toml"))
                .unwrap()
                .check()
                .err()
                .unwrap_or_default()
        };
        assert!(problems("127.0.0.1:8443").is_empty());
        let p = problems("0.0.0.0:8443").join("\n");
        assert!(
            p.contains("auth.keys[0] is an example's placeholder"),
            "{p}"
        );
        assert!(!p.contains("dev-key"), "the value is never shown: {p}");
        // On loopback with TLS: the tunnel's end, which Leap reaches.
        let tls = format!(
            "{}[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            text("127.0.0.1:8443")
        );
        let p = Config::parse_str(&tls, Path::new("c.toml"))
            .unwrap()
            .check()
            .err()
            .unwrap_or_default()
            .join("\n");
        assert!(
            p.contains("auth.keys[0] is an example's placeholder"),
            "{p}"
        );
    }

    /// `reload` names what it cannot apply; the uplink and interval settings are read at
    /// start (it used to say "nothing changed" for them).
    #[test]
    fn uplink_and_intervals_changes_need_a_restart() {
        let base = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
        let old = Config::parse_str(base, Path::new("c.toml")).unwrap();
        let mqtt = "[uplink.mqtt]\nurl = \"mqtts://broker.example:8883\"\nclient_id = \"gw-1\"\n";
        let with = |extra: &str| {
            Config::parse_str(&format!("{base}{extra}"), Path::new("c.toml")).unwrap()
        };
        assert_eq!(old.restart_needed(&with(mqtt)), vec!["uplink"]);
        let one = with(&format!("{mqtt}password = \"one\"\n"));
        let two = with(&format!("{mqtt}password = \"two\"\n"));
        assert_eq!(
            one.restart_needed(&two),
            vec!["uplink"],
            "a masked secret still counts"
        );
        let mut other = old.clone();
        other.intervals.region = "somewhere-else".into();
        assert_eq!(old.restart_needed(&other), vec!["intervals"]);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}

/// The configuration in force, replaceable by `leap-edge reload` for the parts that can
/// change without a restart (see [`Config::restart_needed`]).
#[derive(Debug)]
pub struct LiveConfig(std::sync::RwLock<std::sync::Arc<Config>>);

pub(crate) type SharedConfig = std::sync::Arc<LiveConfig>;

impl LiveConfig {
    pub(crate) fn new(c: std::sync::Arc<Config>) -> LiveConfig {
        LiveConfig(std::sync::RwLock::new(c))
    }

    pub(crate) fn get(&self) -> std::sync::Arc<Config> {
        self.0.read().expect("config lock").clone()
    }

    pub(crate) fn set(&self, c: std::sync::Arc<Config>) {
        *self.0.write().expect("config lock") = c;
    }
}

impl Config {
    /// Sections that differ between `self` (running) and `new` and that only a restart can
    /// apply: listeners, storage, sockets, meters, devices and the control loop's limits.
    pub(crate) fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let same = |a: &dyn erased::Ser, b: &dyn erased::Ser| a.json() == b.json();
        let mut out = Vec::new();
        if !same(&self.server, &new.server) {
            out.push("server");
        }
        if self.storage.path != new.storage.path {
            out.push("storage.path");
        }
        if !same(&self.site, &new.site) {
            out.push("site");
        }
        if !same(&self.meters, &new.meters) {
            out.push("meters");
        }
        if !same(&self.devices, &new.devices) || self.devices_dir != new.devices_dir {
            out.push("devices");
        }
        if !same(&self.admin, &new.admin) {
            out.push("admin");
        }
        if !same(&self.sim, &new.sim) {
            out.push("sim");
        }
        if !same(&self.leap, &new.leap) || self.leap.api_key != new.leap.api_key {
            out.push("leap");
        }
        if !same(&self.schedule, &new.schedule) {
            out.push("schedule");
        }
        // The uplink's connection and the interval recorder are set up at start. A secret
        // serialises masked, so the password is compared itself.
        let password = |c: &Config| c.uplink.mqtt.as_ref().and_then(|m| m.password.clone());
        if !same(&self.uplink, &new.uplink) || password(self) != password(new) {
            out.push("uplink");
        }
        if !same(&self.intervals, &new.intervals) {
            out.push("intervals");
        }
        out
    }
}

mod erased {
    pub(crate) trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
