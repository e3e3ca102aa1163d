//! The checks of a configuration that need other modules' rules: Leap's URL and cron
//! rules, the control loop's needs, the TLS key's safety, what the device profiles hold.
//! `config` checks only what it can see by itself; this module sits above the modules
//! whose rules it applies. Every command goes through [`load`]; `config check`,
//! `leap-edge run` and the daemon's `reload` through [`load_for_start`], which also reads
//! the files the daemon reads at start.

use crate::config::{Config, ConfigError};
use std::path::Path;

/// Read, parse and check a configuration file: [`Config::load`], then [`problems`].
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    let problems = problems(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::invalid(path, problems))
    }
}

/// The problems only other modules can see; each names its key and says what to do.
pub(crate) fn problems(config: &Config) -> Vec<String> {
    let mut p = Vec::new();
    crate::leap::check_config(config, &mut p);
    // One battery per meter, refreshable before it reverts (the control loop's needs).
    p.extend(crate::control::check_meters(config));
    if let Some(tls) = &config.server.tls
        && let Some(problem) = crate::server::tls::key_problem(&tls.key)
    {
        // Issue 10.10: neither world-readable nor encrypted.
        p.push(format!(
            "server.tls.key = \"{}\": {problem}",
            tls.key.display()
        ));
    }
    for (name, d) in &config.devices {
        let path = config.devices_dir.join(format!("{}.toml", d.profile));
        profile_points(name, &d.profile, &path, &mut p);
    }
    p
}

/// [`load`] for `run` and `config check`: also reads the files the daemon reads at start
/// (the broker's CA and client certificate and key: a missing or empty one is the file's
/// problem, not one for a restart loop to find). Other commands do not read them: a
/// technician who may not read the client key must still be able to run `history`.
pub(crate) fn load_for_start(path: &Path) -> Result<Config, ConfigError> {
    let config = load(path)?;
    match config.uplink.mqtt.as_ref().map(|m| m.options()) {
        Some(Err(e)) => Err(ConfigError::invalid(
            path,
            vec![format!("uplink.mqtt: {e}")],
        )),
        _ => Ok(config),
    }
}

/// SPEC §2.13: every decision needs the state of charge, the site meter and the battery's
/// power (the site's load is grid + battery; an export permit needs the meter too); a
/// profile without one would leave the loop blind for every event.
fn profile_points(name: &str, profile: &str, path: &Path, p: &mut Vec<String>) {
    let Ok(prof) = crate::device::profile::load(path) else {
        return; // a missing file is config's; a bad one is reported where the device is opened
    };
    for (point, specs) in [
        ("soc", &prof.read.soc),
        ("grid_power", &prof.read.grid_power),
        ("battery_power", &prof.read.battery_power),
    ] {
        if specs.is_empty() {
            p.push(format!(
                "devices.{name}.profile = \"{profile}\" has no [read] {point} point, which \
                 every dispatch needs (without it the battery is handed back): add it to {} or \
                 use a profile that has it",
                path.display()
            ));
        }
    }
}

/// Above this a device's own reversion is slow enough to name (`config check` warns).
const MAX_QUIET_REVERSION_SECS: u32 = 600;

/// Things that are allowed but a technician must know (printed by `config check` and
/// logged at start): devices that cannot hand the battery back by themselves.
pub(crate) fn warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if config.site.fallback_site_load_kw != 0.0 {
        w.push(
            "site.fallback_site_load_kw is no longer used: without a site-meter or battery \
             power reading the battery is handed back (SPEC §2.13); remove the key"
                .into(),
        );
    }
    if config.meters.is_empty() {
        w.push(
            "no [[meters]]: every dispatch is stored and none is executed; add one [[meters]] \
             per Leap meter id this site serves"
                .into(),
        );
    }
    // SPEC §2.5: a timeslot may start max_start_ahead_days after its notification; its
    // raw notification and revisions are its audit until it has run.
    let live = u64::from(config.limits.max_start_ahead_days) + 2;
    if u64::from(config.storage.retention_days) < live {
        w.push(format!(
            "storage.retention_days = {} is shorter than a stored timeslot can wait to run \
             (limits.max_start_ahead_days = {} plus its day): its notification may be pruned \
             before it ran; set at least {live} (default 400)",
            config.storage.retention_days, config.limits.max_start_ahead_days
        ));
    }
    w.extend(uplink_identity(config));
    w.extend(crate::leap::api_key_warning(&config.leap));
    if config.site.service_kw.is_none() && !config.meters.is_empty() {
        w.push(
            "site.service_kw is not set: a stuck or misscaled site-meter reading is then caught \
             only by the battery's rating, so a wrong grid figure can steer the battery; set it \
             to the site's grid connection in kW"
                .into(),
        );
    }
    w.extend(device_warnings(config));
    w
}

/// Per device: how long a fault can leave the battery on a setpoint.
fn device_warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    for (name, d) in &config.devices {
        if d.reversion_secs > MAX_QUIET_REVERSION_SECS {
            w.push(format!(
                "devices.{name}.reversion_secs = {}: a daemon killed mid-dispatch leaves the \
                 battery on its last setpoint that long (SunSpec 124 holds at most 65535 s); \
                 a minute or two is usual",
                d.reversion_secs
            ));
        }
        // A reading that took over two periods is stale (control/sanity.rs), but one that
        // never answers is only given up after the request's own timeout.
        let periods = 2 * config.site.control_period_ms;
        if d.timeout_ms > periods {
            w.push(format!(
                "devices.{name}.timeout_ms = {} is more than two control periods ({periods} ms, \
                 site.control_period_ms): a meter or battery that stops answering mid-dispatch \
                 is handed back only after {} ms, holding its setpoint meanwhile; lower it (a \
                 device on the LAN answers in tens of ms) or raise site.control_period_ms",
                d.timeout_ms, d.timeout_ms
            ));
        }
        let path = config.devices_dir.join(format!("{}.toml", d.profile));
        let Ok(prof) = crate::device::profile::load(&path) else {
            continue;
        };
        if !prof.reverts_by_itself() {
            w.push(format!(
                "devices.{name}: profile \"{}\" has no device-side reversion: if the daemon \
                 dies mid-dispatch the battery keeps its last setpoint until `leap-edge release` \
                 runs (the systemd unit's ExecStopPost does this after any stop)",
                d.profile
            ));
        }
    }
    w
}

/// The packaged Mosquitto ACL grants a gateway the topics of its username; the gateway
/// subscribes under its client id: the two must agree.
fn uplink_identity(config: &Config) -> Option<String> {
    let m = config.uplink.mqtt.as_ref()?;
    let user = m.username.as_deref().filter(|u| *u != m.client_id)?;
    Some(format!(
        "uplink.mqtt.username \"{user}\" is not client_id \"{}\": the packaged Mosquitto \
         ACL grants each gateway the topics of its username (and the broker uses the \
         username as client id), while the gateway subscribes to {}/{}/dispatch; make \
         them the gateway's [[gateways]] name, or the broker refuses the subscription",
        m.client_id, m.topic_prefix, m.client_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(devices_dir: &Path, profile: &str, site: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n{site}\n\
             [[meters]]\nid = \"m1\"\ndevice = \"bess\"\n[devices.bess]\nprofile = \"{profile}\"\nhost = \"127.0.0.1\"\n"
        );
        let mut c = Config::parse_str(&text, Path::new("test.toml")).unwrap();
        c.devices_dir = devices_dir.to_path_buf();
        c
    }

    fn all(c: &Config) -> Vec<String> {
        let mut p = c.check().err().unwrap_or_default();
        p.extend(problems(c));
        p
    }

    /// The broker's CA file missing, or without a certificate: named by `config check`.
    /// Before, the check passed and the start failed with exit 1, restarted every 5 s.
    #[test]
    fn an_unusable_broker_ca_is_a_problem() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        for (ca, says) in [
            (dir.path().join("absent.pem"), "absent.pem"),
            (empty, "no PEM certificate"),
        ] {
            let site = format!(
                "[uplink.mqtt]\nurl = \"mqtts://broker.example:8883\"\nclient_id = \"gw-1\"\nca = {:?}\n",
                ca.display().to_string()
            );
            let c = config(&shipped, "sunspec", &site);
            assert!(
                problems(&c).is_empty(),
                "only `run` and `config check` read them"
            );
            let p = c.uplink.mqtt.as_ref().unwrap().options().unwrap_err();
            assert!(p.starts_with("ca") && p.contains(says), "{p}");
        }
    }

    /// A site without its grid connection's size, and a device that would hold a dead
    /// daemon's setpoint for an hour, are named; neither stops the start.
    #[test]
    fn a_missing_service_kw_and_a_slow_reversion_are_warned_of() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let mut c = config(&shipped, "sunspec", "");
        c.devices.get_mut("bess").unwrap().reversion_secs = 3600;
        c.devices.get_mut("bess").unwrap().timeout_ms = 5000;
        let w = warnings(&c).join("\n");
        assert!(w.contains("site.service_kw is not set"), "{w}");
        assert!(
            w.contains("devices.bess.timeout_ms = 5000 is more than two control periods (2000 ms"),
            "{w}"
        );
        assert!(w.contains("devices.bess.reversion_secs = 3600"), "{w}");
        let c = config(&shipped, "sunspec", "[site]\nservice_kw = 200");
        let w = warnings(&c).join("\n");
        assert!(
            !w.contains("service_kw") && !w.contains("reversion_secs") && !w.contains("timeout_ms"),
            "{w}"
        );
        // A retention shorter than a timeslot may wait to run would prune its audit first.
        let c = config(&shipped, "sunspec", "[storage]\nretention_days = 7");
        let w = warnings(&c).join("\n");
        assert!(
            w.contains("storage.retention_days = 7") && w.contains("at least 33"),
            "{w}"
        );
        let mqtt = "[uplink.mqtt]\nurl = \"mqtts://b.example:8883\"\nclient_id = \"site-1\"\nusername = \"site1\"";
        let w = warnings(&config(&shipped, "sunspec", mqtt)).join("\n");
        assert!(
            w.contains("uplink.mqtt.username \"site1\" is not client_id"),
            "{w}"
        );
        let c = config(&shipped, "sunspec", "[storage]\nretention_days = 0");
        let p = c.check().unwrap_err().join("\n");
        assert!(
            p.contains("storage.retention_days must be at least 1"),
            "{p}"
        );
    }

    #[test]
    fn a_fallback_site_load_is_warned_of_once() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let c = config(&shipped, "sunspec", "[site]\nfallback_site_load_kw = 3");
        let w: Vec<String> = warnings(&c)
            .into_iter()
            .filter(|w| w.contains("fallback_site_load_kw"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!w[0].contains("  "), "{w:?}");
    }

    #[test]
    fn a_gateway_without_meters_is_warned_of() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let mut c = config(&shipped, "sunspec", "");
        assert!(!warnings(&c).iter().any(|w| w.contains("no [[meters]]")));
        c.meters.clear();
        assert!(warnings(&c).iter().any(|w| w.contains("no [[meters]]")));
    }

    #[test]
    fn a_profile_without_a_site_meter_is_refused() {
        // (A profile without SoC is refused for every site by the profile check.)
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let generic = std::fs::read_to_string(shipped.join("generic.toml")).unwrap();
        let no_meter: String = generic
            .lines()
            .filter(|l| !l.starts_with("grid_power ="))
            .map(|l| {
                if l.starts_with("template") {
                    "template = false"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nometer.toml"), no_meter).unwrap();
        let found = all(&config(dir.path(), "nometer", ""));
        assert!(
            found
                .iter()
                .any(|p| p.contains("no [read] grid_power point")),
            "{found:?}"
        );
        // Nor on a site that may export: a permit cannot be kept without the meter.
        let c = config(dir.path(), "nometer", "[site]\nexport_limit_kw = 5");
        assert!(
            all(&c)
                .iter()
                .any(|p| p.contains("no [read] grid_power point")),
            "{:?}",
            all(&c)
        );
        // The shipped SunSpec profile has both points.
        assert!(all(&config(&shipped, "sunspec", "")).is_empty());
    }

    #[test]
    fn load_refuses_what_only_other_modules_see() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let text = format!(
            "devices_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n\
             [leap]\nbase_url = \"http://api.leap.energy\"\n",
            shipped.display()
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        // config alone accepts it; the Leap rule (plain http only to loopback) does not.
        assert!(Config::load(&path).is_ok());
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("leap.base_url") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn a_device_without_reversion_is_flagged() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let w = warnings(&config(&shipped, "victron-gx-ess", ""));
        assert!(
            w.iter().any(|w| w.contains("no device-side reversion")),
            "{w:?}"
        );
        let site = "[site]\nservice_kw = 200";
        assert!(warnings(&config(&shipped, "sunspec", site)).is_empty());
    }
}
