//! `leap-edge config check`: parse, semantic check, then load what the config points at.

use super::exit;
use std::path::Path;

pub(super) fn run(path: &Path) -> u8 {
    let config = match crate::preflight::load_for_start(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leap-edge: {e}");
            return exit::CONFIG;
        }
    };
    // Run as root, every file reads; the daemon runs as leap-edge.
    let mut problems = super::service_access::problems(&config, path);
    if let Some(tls) = &config.server.tls
        && let Err(e) = crate::server::tls::ReloadableTls::load(&tls.cert, &tls.key)
    {
        problems.push(e.to_string());
    }
    // Every shipped profile, and the one each device uses, must load cleanly.
    if let Err(errs) = crate::device::profile::check_dir(&config.devices_dir) {
        problems.extend(errs.iter().map(ToString::to_string));
    }
    for (name, d) in &config.devices {
        if let Err(e) = crate::device::open(name, d, &config.devices_dir) {
            problems.push(e.to_string());
        }
    }
    // A downgrade: the daemon would refuse this database at start (and the package would
    // have restarted it into that refusal, leaving the site without a daemon).
    if let Some(e) = crate::store::newer_than_this_build(&config.storage.path) {
        problems.push(format!("{}: {e}", config.storage.path.display()));
    }
    // Allowed, but a technician must know (issue 9: devices without reversion).
    for w in crate::preflight::warnings(&config) {
        eprintln!("leap-edge: {}: warning: {w}", path.display());
    }
    if problems.is_empty() {
        crate::outln!(
            "{}: OK ({} meter(s), {} device(s), listening on {}{})",
            path.display(),
            config.meters.len(),
            config.devices.len(),
            config.server.listen,
            if config.server.tls.is_some() {
                " with TLS"
            } else {
                ", plain HTTP on loopback"
            }
        );
        exit::OK
    } else {
        for p in problems {
            eprintln!("leap-edge: {}: {p}", path.display());
        }
        exit::CONFIG
    }
}
