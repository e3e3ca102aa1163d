//! `config check` run as root (the README's `sudo leap-edge config check`) reads every file
//! whatever its mode; the daemon runs as `leap-edge` (systemd/leap-edge.service `User=`)
//! and may not. So, as root, on the service's own configuration file and with that user
//! present, each file the daemon reads is checked against that user's uid and groups by
//! its mode bits, along the whole path, and the fix is named. Read from /etc/passwd and
//! /etc/group: no lookup library for a check.

use crate::config::Config;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The account systemd/leap-edge.service runs the daemon as.
const SERVICE_USER: &str = "leap-edge";

struct Account {
    uid: u32,
    gids: Vec<u32>,
}

/// The service account's uid, primary group and the groups that list it.
fn account(passwd: &str, group: &str, name: &str) -> Option<Account> {
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)?;
    let uid = entry[2].parse().ok()?;
    let mut gids = vec![entry[3].parse().ok()?];
    for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if f.len() > 3 && f[3].split(',').any(|m| m == name) {
            gids.extend(f[2].parse::<u32>().ok());
        }
    }
    Some(Account { uid, gids })
}

/// Whether `who` has `bit` (4 read, 1 search) on a file with this owner, group and mode.
fn allowed(who: &Account, m: &std::fs::Metadata, bit: u32) -> bool {
    let mode = m.mode();
    if m.uid() == who.uid {
        mode & (bit << 6) != 0
    } else if who.gids.contains(&m.gid()) {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

/// What keeps `who` from reading `path`, if anything: a folder on the way it cannot enter,
/// or the file itself.
fn blocked(who: &Account, path: &Path) -> Option<String> {
    let full = std::fs::canonicalize(path).ok()?;
    for dir in full.ancestors().skip(1) {
        let m = std::fs::metadata(dir).ok()?;
        if !allowed(who, &m, 1) {
            return Some(describe(dir, &m, "cannot enter the folder"));
        }
    }
    let m = std::fs::metadata(&full).ok()?;
    // A folder of profiles is entered, a file read.
    let bit = if m.is_dir() { 1 } else { 4 };
    (!allowed(who, &m, bit)).then(|| describe(&full, &m, "cannot read"))
}

fn describe(path: &Path, m: &std::fs::Metadata, what: &str) -> String {
    format!(
        "the service user {SERVICE_USER} {what} {} (uid {}, gid {}, mode {:04o}): `chgrp {SERVICE_USER} {0}` and `chmod g+{} {0}`",
        path.display(),
        m.uid(),
        m.gid(),
        m.mode() & 0o7777,
        if m.is_dir() { "x" } else { "r" }
    )
}

/// The files the daemon opens at start, from this configuration.
fn read_by_the_daemon(config: &Config, source: &Path) -> Vec<PathBuf> {
    let mut files = vec![source.to_path_buf(), config.devices_dir.clone()];
    if let Some(tls) = &config.server.tls {
        files.extend([tls.cert.clone(), tls.key.clone()]);
    }
    if let Some(m) = &config.uplink.mqtt {
        files.extend(
            m.ca.iter()
                .chain(&m.client_cert)
                .chain(&m.client_key)
                .cloned(),
        );
    }
    for d in config.devices.values() {
        files.push(config.devices_dir.join(format!("{}.toml", d.profile)));
    }
    files
}

/// Problems for the service user; empty unless run as root, on the file the service reads
/// (`/etc/leap-edge/config.toml`), on a system that has that user.
pub(super) fn problems(config: &Config, source: &Path) -> Vec<String> {
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a).is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
    };
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        && same(source, Path::new(super::DEFAULT_CONFIG));
    let (Ok(passwd), Ok(group)) = (
        std::fs::read_to_string("/etc/passwd"),
        std::fs::read_to_string("/etc/group"),
    ) else {
        return Vec::new();
    };
    let Some(who) = account(&passwd, &group, SERVICE_USER).filter(|_| root) else {
        return Vec::new();
    };
    read_by_the_daemon(config, source)
        .iter()
        .filter_map(|p| blocked(&who, p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_and_its_groups_come_from_passwd_and_group() {
        let passwd = "root:x:0:0::/root:/bin/bash\nleap-edge:x:998:997::/var/lib/leap-edge:/usr/sbin/nologin\n";
        let group = "root:x:0:\nleap-edge:x:997:\nssl-cert:x:110:postgres,leap-edge\nother:x:5:leap-edgex\n";
        let a = account(passwd, group, "leap-edge").unwrap();
        assert_eq!((a.uid, a.gids), (998, vec![997, 110]));
        assert!(account(passwd, group, "nobody").is_none());
    }
}
